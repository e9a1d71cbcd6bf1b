"""Where along an answer each adapter would move the model: the weighing pass at every position.

The engine weighs a query once, at the last prompt token, and decodes the whole answer with
those weights. That misses an adapter whose effect starts later: a tool call begins with
``<tool_call>`` whether or not the tools adapter runs, so its drift shows only at the argument
tokens. This prints, for each request, the base's greedy answer token by token and, after each
token, every adapter's relevance (the default policy's drift) and what the default would keep
if it weighed there.

    QAFLORA_ZOO_WORLD=uses python benchmarks/weighing_positions.py --catalog ZOO/catalog.yaml \\
        --tools "multiply three by one ."
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from qaflora import AdapterCatalog, FusionEngine
from qaflora.planning import PlanItem, plan_batch
from qaflora.prompting import EncodedPrompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("requests", nargs="+")
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument(
        "--tools", action="store_true", help="list the zoo's tools in the prompt (uses world)"
    )
    parser.add_argument("--tokens", type=int, default=16, help="length of the base's answer to follow")
    args = parser.parse_args()
    tools = None
    if args.tools:
        from qaflora.zoo.skills import TOOL_SPECS

        tools = list(TOOL_SPECS.values())
    catalog = AdapterCatalog.from_file(args.catalog)
    with FusionEngine.from_pretrained(catalog.base_model, catalog, progress=False) as engine:
        names = engine.adapter_names
        fusion, _ = engine.resolve_options(None, None)
        for request in args.requests:
            messages = [{"role": "user", "content": request}]
            prompt = engine.encode(messages, tools=tools)
            answer = engine.generate(messages, tools=tools, mode="base", max_new_tokens=args.tokens)
            ids = engine.tokenizer(answer.text, add_special_tokens=False)["input_ids"] if answer.text else []
            items = [
                PlanItem(EncodedPrompt(text=prompt.text, ids=prompt.ids + ids[:h]), fusion)
                for h in range(len(ids) + 1)
            ]
            with torch.inference_mode():
                plans = plan_batch(engine.loaded, items, None)
            after = ["(prompt)", *engine.tokenizer.convert_ids_to_tokens(ids)]
            print(f"\n{request!r} -> base: {answer.text!r}\n")
            print("| after | " + " | ".join(names) + " | default keeps |")
            print("|---" * (len(names) + 2) + "|")
            for token, plan in zip(after, plans, strict=True):
                if plan.error is not None:
                    raise plan.error
                relevance = plan.weights.relevance or {}
                kept = ", ".join(f"{n} {w:.1f}" for n, w in plan.weights.mean().items() if w > 0) or "base"
                cells = " | ".join(f"{relevance.get(n, 0.0):.2f}" for n in names)
                print(f"| `{token}` | {cells} | {kept} |")


if __name__ == "__main__":
    main()
