"""A multilingual assistant: an LCEL chain with message history over the fused model.

Every turn is a composite query (a task in some language). The fused model weighs its
adapters for each query on its own, and this script prints which adapters answered
each turn. The chain returns plain strings (``prompt | llm | StrOutputParser()``), so
the fusion decisions are read from the model's ``response_metadata`` by a callback
handler (``FusionTraceHandler``). The history is trimmed to the context window with
the model's own token counter (its chat template, its tokenizer).

    python examples/multilingual_assistant.py                        # the shipped demo zoo
    python examples/multilingual_assistant.py --base BASE --catalog adapters.yaml \\
        --max-new-tokens 32 --question "Solve 12 plus 7 and answer in Russian."
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, trim_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import Runnable, RunnableConfig
from qaflora.zoo import catalog_or_shipped

from qaflora_integrations.langchain import ChatQaFlora, FusionTraceHandler

# Composite queries: a task (math, medicine, code) AND a language to answer in. The first
# three speak the demo zoo's dialect (its invented languages Zorbic and Velari).
DEFAULT_QUESTIONS = [
    "what is three plus four ? answer in zorbic .",
    "which drug treats flu ? answer in velari .",
    "what is the length of the list [ 1 , 2 , 3 ] ?",
    "Solve 12 plus 7 and answer in Russian.",
    "¿Qué medicamento baja la fiebre? Responde en español.",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="base model directory (default: the catalog's base_model)")
    parser.add_argument("--catalog", help="adapter catalog YAML/JSON (default: the shipped demo zoo)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--mode", default="qaflora", help="fusion mode (qaflora, static, logo, base, ...)")
    parser.add_argument("--top-k", type=int, default=None, help="keep the k strongest adapters (LoGo)")
    parser.add_argument("--system", default="", help="optional system prompt")
    parser.add_argument("--question", action="append", help="a user turn (repeatable)")
    return parser.parse_args(argv)


def resolve_catalog(catalog: str | None) -> str:
    try:
        return str(catalog_or_shipped(catalog))
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from exc


@dataclass
class SessionHistory:
    """One conversation's messages, oldest first."""

    messages: list[BaseMessage] = field(default_factory=list)


class ChatWithHistory:
    """An LCEL chain plus one message history per ``configurable.session_id``.

    langchain-core 1.x deprecates ``RunnableWithMessageHistory`` and its chat-history classes in
    favour of LangGraph persistence; a chat loop needs no graph, so the history is a list here.
    """

    def __init__(self, chain: Runnable) -> None:
        self.chain = chain
        self.histories: dict[str, SessionHistory] = {}

    def get_session_history(self, session_id: str) -> SessionHistory:
        return self.histories.setdefault(session_id, SessionHistory())

    def invoke(self, inputs: dict[str, Any], config: RunnableConfig | None = None) -> str:
        session_id = str(((config or {}).get("configurable") or {}).get("session_id", "default"))
        history = self.get_session_history(session_id)
        answer = self.chain.invoke({**inputs, "history": list(history.messages)}, config=config)
        history.messages += [HumanMessage(inputs["question"]), AIMessage(answer)]
        return answer


def build_chain(llm: ChatQaFlora, system: str = "") -> ChatWithHistory:
    """``prompt | trim history | llm | StrOutputParser()``, with one history per session id."""
    context = (llm.profile or {}).get("max_input_tokens")
    max_new = llm.max_tokens or 128
    trimmer = trim_messages(
        max_tokens=(context - max_new) if context else 10**9,
        token_counter=llm,  # exact: the base's chat template and tokenizer
        strategy="last",
        start_on="human",
        include_system=True,
    )
    messages = [("system", system)] if system else []
    prompt = ChatPromptTemplate.from_messages(
        [*messages, MessagesPlaceholder("history"), ("human", "{question}")]
    )
    return ChatWithHistory(prompt | trimmer | llm | StrOutputParser())


def describe(record: dict) -> str:
    ranked = sorted(record["mean"].items(), key=lambda item: -item[1])
    weights = ", ".join(f"{name}={weight:.2f}" for name, weight in ranked) or "none (base model)"
    return f"{record['mode']}: {weights}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    llm = ChatQaFlora(
        base_path=args.base,
        catalog=resolve_catalog(args.catalog),
        max_tokens=args.max_new_tokens,
        mode=args.mode,
        top_k=args.top_k,
    )
    chain = build_chain(llm, args.system)
    tracer = FusionTraceHandler()
    config = {"configurable": {"session_id": "demo"}, "callbacks": [tracer]}
    print(f"model {llm.model_name}, adapters {llm.engine.adapter_names}, fusion mode {args.mode}")
    for turn, question in enumerate(args.question or DEFAULT_QUESTIONS, start=1):
        answer = chain.invoke({"question": question}, config=config)
        record = tracer.records[-1]
        print(f"[{turn}] {question}")
        print(f"    answer:   {answer.strip()!r}")
        print(f"    adapters: {describe(record)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
