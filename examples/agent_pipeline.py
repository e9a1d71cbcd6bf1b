"""A two-step pipeline where each step calls the same fused model with its own fusion options.

* The router asks LoGo for the single strongest adapter (``mode="logo", top_k=1``): cheap
  (one adapter, no per-layer weighing) and its choice is a routing decision in itself.
* The worker answers with the default fusion over the whole catalog: the adapters that move
  the answer (at most two, at their trained strength, composition-checked), so a composite
  request (a task AND a language) draws on both skills.

Both steps share one engine (one copy of the weights); the options are per call, through
``llm.bind(...)``. The pipeline runs as plain LCEL, or as a LangGraph graph with
``--runner langgraph`` (LangGraph is the optional ``agents`` extra).

    python examples/agent_pipeline.py                                  # the shipped demo zoo
    python examples/agent_pipeline.py --base BASE --catalog adapters.yaml --runner langgraph
"""

from __future__ import annotations

import argparse
from typing import Any, TypedDict

from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from qaflora.zoo import catalog_or_shipped

from qaflora_integrations.langchain import ChatQaFlora

DEFAULT_REQUESTS = [
    "what is two plus five ? answer in zorbic .",
    "which organ does asthma affect ? answer in velari .",
    "what is the largest item of the list [ 4 , 9 , 2 ] ?",
]

ROUTER_PROMPT = ChatPromptTemplate.from_messages(
    [("human", "Which skill does this request need (math, medical, code, language)? {request}")]
)
WORKER_PROMPT = ChatPromptTemplate.from_messages([("human", "{request}")])


class PipelineState(TypedDict, total=False):
    request: str
    route: dict[str, Any]
    answer: dict[str, Any]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="base model directory (default: the catalog's base_model)")
    parser.add_argument("--catalog", help="adapter catalog YAML/JSON (default: the shipped demo zoo)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--runner", choices=("lcel", "langgraph"), default="lcel")
    parser.add_argument("--request", action="append", help="a request to run (repeatable)")
    return parser.parse_args(argv)


def resolve_catalog(catalog: str | None) -> str:
    try:
        return str(catalog_or_shipped(catalog))
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from exc


def read_route(message: AIMessage) -> dict[str, Any]:
    """LoGo's pick is the route; the router's words are kept as its label."""
    meta = message.response_metadata
    adapters = meta.get("adapters", [])
    return {
        "adapter": adapters[0] if adapters else None,
        "label": message.text.strip(),
        "mode": meta["fusion"]["mode"],
    }


def read_answer(message: AIMessage) -> dict[str, Any]:
    fusion = message.response_metadata["fusion"]
    return {"text": message.text.strip(), "mode": fusion["mode"], "weights": fusion["mean"]}


def build_steps(llm: ChatQaFlora) -> tuple[Runnable, Runnable]:
    router = ROUTER_PROMPT | llm.bind(mode="logo", top_k=1, max_tokens=4) | RunnableLambda(read_route)
    worker = WORKER_PROMPT | llm.bind(mode="qaflora") | RunnableLambda(read_answer)
    return router, worker


def build_lcel(llm: ChatQaFlora) -> Runnable:
    router, worker = build_steps(llm)
    return RunnablePassthrough.assign(route=router) | RunnablePassthrough.assign(answer=worker)


def build_langgraph(llm: ChatQaFlora) -> Runnable:
    try:
        from langgraph.graph import END, START, StateGraph
    except ImportError as exc:  # optional dependency
        raise SystemExit("--runner langgraph needs LangGraph: pip install 'qaflora[agents]'") from exc
    router, worker = build_steps(llm)
    graph = StateGraph(PipelineState)
    graph.add_node("route", lambda state: {"route": router.invoke({"request": state["request"]})})
    graph.add_node("work", lambda state: {"answer": worker.invoke({"request": state["request"]})})
    graph.add_edge(START, "route")
    graph.add_edge("route", "work")
    graph.add_edge("work", END)
    return graph.compile()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    llm = ChatQaFlora(
        base_path=args.base, catalog=resolve_catalog(args.catalog), max_tokens=args.max_new_tokens
    )
    pipeline = build_langgraph(llm) if args.runner == "langgraph" else build_lcel(llm)
    requests = args.request or DEFAULT_REQUESTS
    # independent requests: run them concurrently; the engine batches the forwards
    results = pipeline.batch([{"request": r} for r in requests])
    print(f"model {llm.model_name}, adapters {llm.engine.adapter_names}, runner {args.runner}")
    for state in results:
        route, answer = state["route"], state["answer"]
        weights = ", ".join(f"{n}={w:.2f}" for n, w in sorted(answer["weights"].items(), key=lambda x: -x[1]))
        print(f"- {state['request']}")
        print(f"    router ({route['mode']}, top_k=1): {route['adapter']}  label={route['label']!r}")
        print(f"    worker ({answer['mode']}): {weights}")
        print(f"    answer: {answer['text']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
