"""Would re-weighing at every decoded token fix the agent's tool calls? A measurement, not a feature.

The engine weighs a query once, at its last prompt token, and decodes the whole answer with those
weights. In the uses world that misses the tools adapter: base and adapter both start a call
with ``<tool_call>``, and the adapter's drift shows only at the arguments
(``benchmarks/weighing_positions.py``). This runs the agent's two steps (the call; the answer
after the real tool's result) on the agent example's 54 requests with three decoders, greedy:

* ``default``: the engine as shipped (``engine.generate``);
* ``re-weighed per token``: before every token, the default policy's full decision (relevance,
  composition check) is taken again on the prompt plus the tokens so far, and that token is
  decoded with those weights (no KV cache: slow, for measuring only);
* ``tools alone``: the tools adapter at 1.0, for reference.

Success = the right call with the right arguments AND the right final answer (as the example).

    QAFLORA_ZOO_WORLD=uses python benchmarks/agent_reweigh.py --catalog ZOO/catalog.yaml --json F
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from qaflora import AdapterCatalog, FusionEngine
from qaflora.decoding import eos_token_ids
from qaflora.planning import PlanItem, plan_batch
from qaflora.policy import fused_next_logprobs
from qaflora.prompting import EncodedPrompt
from qaflora.toolcalls import parse_tool_calls
from qaflora.zoo.skills import TOOL_FUNCTIONS, TOOL_SPECS, tool_tasks
from qaflora.zoo.world import normalize
from tqdm.auto import tqdm

TOOLS = list(TOOL_SPECS.values())
MAX_NEW_TOKENS = 40


@torch.inference_mode()
def reweighed(engine: FusionEngine, messages: list[dict]) -> tuple[str, list[str]]:
    """Greedy answer, every token under the weights the default policy picks at that position."""
    prompt = engine.encode(messages, tools=TOOLS)
    fusion, _ = engine.resolve_options(None, None)
    stop = eos_token_ids(engine.loaded)
    ids, new, kept = list(prompt.ids), [], []
    for _ in range(MAX_NEW_TOKENS):
        plan = plan_batch(engine.loaded, [PlanItem(EncodedPrompt(text=prompt.text, ids=ids), fusion)])[0]
        if plan.error is not None:
            raise plan.error
        if plan.adapters:
            matrix = plan.weights.matrix.float().unsqueeze(0)
            logprobs = fused_next_logprobs(engine.loaded, [ids], plan.adapters, matrix)[0]
        else:
            logprobs = fused_next_logprobs(engine.loaded, [ids], [0], torch.zeros(1, 1, engine.num_layers))[0]
        token = int(logprobs.argmax())
        if token in stop:
            break
        ids.append(token)
        new.append(token)
        kept.append("+".join(n for n, w in plan.weights.mean().items() if w > 0) or "base")
    return engine.tokenizer.decode(new, skip_special_tokens=True).strip(), kept


def answer(engine: FusionEngine, messages: list[dict], decoder: str) -> str:
    if decoder == "re-weighed per token":
        return reweighed(engine, messages)[0]
    options = {"mode": "single", "adapters": ["tools"]} if decoder == "tools alone" else {}
    return engine.generate(messages, tools=TOOLS, max_new_tokens=MAX_NEW_TOKENS, **options).text


def run(engine: FusionEngine, decoder: str, tasks) -> list[dict]:
    rows = []
    for task in tqdm(tasks, desc=decoder):
        messages = [{"role": "user", "content": task.request}]
        first = answer(engine, messages, decoder)
        calls = parse_tool_calls(first, list(TOOL_FUNCTIONS)).calls
        right_call, final = False, first
        if calls:
            call = calls[0]
            right_call = call.name == task.tool and call.arguments == task.arguments
            try:
                result = str(TOOL_FUNCTIONS[call.name](**call.arguments))
            except Exception as exc:  # a bad call is an answer too: the model reads the error
                result = f"error: {exc}"
            history = [
                *messages,
                {"role": "assistant", "content": first},
                {"role": "tool", "content": result},
            ]
            final = answer(engine, history, decoder)
        solved = right_call and normalize(final) == normalize(task.answer)
        rows.append(
            {
                "language": task.language,
                "tool": task.tool,
                "request": task.request,
                "call": first,
                "answer": final,
                "expected": task.answer,
                "right_call": right_call,
                "solved": solved,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--per-cell", type=int, default=9)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    catalog = AdapterCatalog.from_file(args.catalog)
    tasks = tool_tasks(args.per_cell)
    results = {}
    with FusionEngine.from_pretrained(catalog.base_model, catalog, progress=False) as engine:
        for decoder in ("default", "re-weighed per token", "tools alone"):
            results[decoder] = run(engine, decoder, tasks)
    print(
        f"\n{len(tasks)} requests\n\n| decoder | success all | English | composite | right call |\n"
        "|---|---|---|---|---|"
    )
    for decoder, rows in results.items():
        english = [r for r in rows if r["language"] == "en"]
        composite = [r for r in rows if r["language"] != "en"]

        def rate(part: list[dict], key: str) -> str:
            return f"{100 * sum(r[key] for r in part) / len(part):.1f}"

        print(
            f"| {decoder} | {rate(rows, 'solved')} | {rate(english, 'solved')} | "
            f"{rate(composite, 'solved')} | {rate(rows, 'right_call')} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"catalog": str(args.catalog), "results": results}, indent=1))


if __name__ == "__main__":
    main()
