"""A tool-calling agent on the fused model: LangGraph over ``ChatQaFlora.bind_tools([...])``.

The graph is the usual ReAct loop: the ``model`` node calls ChatQaFlora with the tools bound;
when its reply holds tool calls, LangGraph's ``ToolNode`` runs them and the model reads their
results; a reply without calls is the answer. The two tools are plain Python functions of the
demo world (``qaflora.zoo.skills``): ``find_shelf`` looks a drug up in a table that is in no
training data, ``multiply`` does arithmetic the world never teaches. So a right answer needs the
tool, and a request asked in Zorbic or Velari needs the ``tools`` skill AND the language: the
default fusion picks them per step, and every model step prints the weights it used (they are in
``AIMessage.response_metadata["fusion"]``).

Runs on the demo zoo shipped with qaflora (the ``uses`` world: tools and reading skills), or on
any catalog whose base's chat template renders tools:

    python examples/agent_pipeline.py                                   # a few requests, step by step
    python examples/agent_pipeline.py --request "which shelf holds aspirin ?"
    python examples/agent_pipeline.py --eval --json agent.json          # every method, 54 requests
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.errors import GraphRecursionError
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from qaflora import FusionEngine
from qaflora.evaluation.uses import fusion_methods
from qaflora.zoo import catalog_or_shipped
from qaflora.zoo.skills import ToolTask, find_shelf, multiply, tool_tasks
from qaflora.zoo.world import DEFAULT_EVAL_SEED, normalize

from qaflora_integrations.langchain import ChatQaFlora

TOOLS: list[BaseTool] = [tool(find_shelf), tool(multiply)]
DEFAULT_REQUESTS = [
    "which shelf holds aspirin ?",
    "what is three times four ?",
    "what is two plus five ?",  # no tool needed
]
MAX_MODEL_STEPS = 3
"""A request gets at most this many model calls (a call, the answer, one retry)."""


def build_agent(llm: ChatQaFlora, tools: list[BaseTool] = TOOLS) -> Any:
    """The ReAct graph: model -> (tools -> model)* -> end."""
    model = llm.bind_tools(tools)

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


def run(agent: Any, request: str) -> list[BaseMessage]:
    """The request's whole transcript; a loop that does not end is cut after MAX_MODEL_STEPS."""
    config = {"recursion_limit": 2 * MAX_MODEL_STEPS}
    try:
        return agent.invoke({"messages": [HumanMessage(request)]}, config=config)["messages"]
    except GraphRecursionError:
        return [
            HumanMessage(request),
            AIMessage("", response_metadata={"error": "no answer within the step limit"}),
        ]


def final_answer(messages: list[BaseMessage]) -> str:
    last = messages[-1]
    return last.text.strip() if isinstance(last, AIMessage) and not last.tool_calls else ""


def tool_calls_made(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    return [call for m in messages if isinstance(m, AIMessage) for call in m.tool_calls]


def called_right(task: ToolTask, messages: list[BaseMessage]) -> bool:
    """The right tool was called with the right arguments."""
    return any(c["name"] == task.tool and c["args"] == task.arguments for c in tool_calls_made(messages))


def solved(task: ToolTask, messages: list[BaseMessage]) -> bool:
    """Task success: the right tool called with the right arguments, and the right final answer."""
    return called_right(task, messages) and normalize(final_answer(messages)) == normalize(task.answer)


def describe_steps(messages: list[BaseMessage]) -> list[str]:
    """One line per step: each model call with its fusion weights, each tool result."""
    lines = []
    for message in messages[1:]:
        if isinstance(message, ToolMessage):
            lines.append(f"    tool {message.name}: {message.text!r}")
            continue
        fusion = message.response_metadata.get("fusion") or {}
        weights = ", ".join(
            f"{name}={w:.2f}"
            for name, w in sorted(fusion.get("mean", {}).items(), key=lambda x: -x[1])
            if w > 0
        )
        said = ", ".join(f"{c['name']}({c['args']})" for c in message.tool_calls) or repr(
            message.text.strip()
        )
        lines.append(f"    model [{weights or 'base'}]: {said}")
    return lines


def evaluate(engine: FusionEngine, tasks: list[ToolTask], max_tokens: int) -> list[dict[str, Any]]:
    """Every task with every method (each a ChatQaFlora around the same engine); one row each."""
    rows = []
    for name, options in fusion_methods(engine.adapter_names, offers_tools=True).items():
        agent = build_agent(ChatQaFlora(engine=engine, max_tokens=max_tokens, **options))
        transcripts = agent.batch(
            [{"messages": [HumanMessage(t.request)]} for t in tasks],
            config={"recursion_limit": 2 * MAX_MODEL_STEPS},
            return_exceptions=True,
        )
        results = []
        for task, out in zip(tasks, transcripts, strict=True):
            messages = out["messages"] if isinstance(out, dict) else [HumanMessage(task.request)]
            results.append(
                {
                    "language": task.language,
                    "tool": task.tool,
                    "request": task.request,
                    "expected": task.answer,
                    "answer": final_answer(messages),
                    "calls": [{"name": c["name"], "args": c["args"]} for c in tool_calls_made(messages)],
                    "called_right": any(
                        c["name"] == task.tool and c["args"] == task.arguments
                        for c in tool_calls_made(messages)
                    ),
                    "solved": solved(task, messages),
                }
            )
        rows.append({"method": name, **_rates(results), "results": results})
    return rows


def _rates(results: list[dict[str, Any]]) -> dict[str, Any]:
    def rate(rows: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows) if rows else 0.0

    english = [r for r in results if r["language"] == "en"]
    composite = [r for r in results if r["language"] != "en"]
    return {
        "requests": len(results),
        "success": rate(results, "solved"),
        "success_en": rate(english, "solved"),
        "success_composite": rate(composite, "solved"),
        "right_call": rate(results, "called_right"),
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = f"{'method':<28} {'success':>8} {'English':>8} {'composite':>10} {'right call':>11}"
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(
            f"{row['method']:<28} {row['success']:>8.1%} {row['success_en']:>8.1%} "
            f"{row['success_composite']:>10.1%} {row['right_call']:>11.1%}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="base model directory (default: the catalog's base_model)")
    parser.add_argument("--catalog", help="adapter catalog YAML/JSON (default: the shipped demo zoo)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--request", action="append", help="a request to run (repeatable)")
    parser.add_argument(
        "--eval", action="store_true", help="task success of every method on the tool requests"
    )
    parser.add_argument("--per-cell", type=int, default=9, help="eval requests per (language, tool)")
    parser.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help="seed of the eval requests")
    parser.add_argument("--json", type=Path, help="with --eval: write every transcript's summary here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        catalog = str(catalog_or_shipped(args.catalog))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    llm = ChatQaFlora(base_path=args.base, catalog=catalog, max_tokens=args.max_new_tokens)
    if not llm.supports_tools:
        print(
            f"{catalog}: this model's chat template cannot show tools (it never renders the "
            "`tools` argument), so no tool call could be asked of it. Use a base whose template "
            "lists tools, e.g. the shipped demo zoo: python examples/agent_pipeline.py",
            file=sys.stderr,
        )
        return 2
    if args.eval:
        tasks = tool_tasks(args.per_cell, args.seed)
        rows = evaluate(llm.engine, tasks, args.max_new_tokens)
        print(
            f"{len(tasks)} tool requests ({sum(t.language == 'en' for t in tasks)} English), "
            f"adapters {llm.engine.adapter_names}"
        )
        print(format_rows(rows))
        if args.json is not None:
            args.json.write_text(json.dumps({"catalog": catalog, "rows": rows}, indent=2) + "\n")
        return 0
    agent = build_agent(llm)
    print(f"model {llm.model_name}, adapters {llm.engine.adapter_names}, tools {[t.name for t in TOOLS]}")
    for request in args.request or DEFAULT_REQUESTS:
        messages = run(agent, request)
        print(f"- {request}")
        print("\n".join(describe_steps(messages)))
        print(f"    answer: {final_answer(messages)!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
