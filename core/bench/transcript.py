"""Prefix reuse on a 10-turn agent transcript: time per turn with and without reuse, same run.

An agent calls the model again and again with the same system prompt (tools listed by the
chat template) and a growing history: each turn adds a tool result or a user message, and the
model writes the next assistant message (``--tokens`` new tokens, EOS ignored). Two engines
with the same model serve the same turns, interleaved turn by turn:

* ``reuse``: the default engine (prefix cache on);
* ``no reuse``: the same engine with ``prefix_cache_mb=0``.

Two weights policies (``FusionConfig.conversation_weights``):

* ``per_turn`` (default): every turn is weighed afresh; the weighing pass reuses the KV of
  the shared history (its rows apply one adapter each, whatever the weights), the answer's
  prefill runs the whole prompt (new weights every turn);
* ``once``: the weights of the first turn are kept; the answer's prefill reuses the history's
  KV as well. Its no-reuse side is given the same weights (``mode="oracle"``) and nothing cached.

Every turn's output of the two sides must be identical (tokens and weights, asserted): reuse
changes the time, never the answer. The transcript runs ``--repeats`` times from empty caches;
per-turn medians and ratios (reuse / no reuse) are reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from rich.console import Console

from ..engine import FusionEngine
from ..results import FusionResult
from .common import (
    BENCH_FUSION,
    bench_parser,
    bench_world,
    count_parameters,
    environment,
    print_table,
    write_json,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "city_population",
            "description": "Population of a city, from the census table.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_units",
            "description": "Convert a quantity between units (km, miles, kg, pounds, thousands).",
            "parameters": {
                "type": "object",
                "properties": {"value": {"type": "number"}, "to": {"type": "string"}},
                "required": ["value", "to"],
            },
        },
    },
]
SYSTEM = (
    "You are a planning agent. Use the tools for every number you are not given: never guess a "
    "population or a conversion. Answer in the language of the question, briefly."
)
EVENTS = [
    ("user", "Which of Lyon and Porto has more inhabitants, and by how many thousands?"),
    ("tool", '{"city": "Lyon", "population": 522250}'),
    ("tool", '{"city": "Porto", "population": 231962}'),
    ("tool", '{"value": 290288, "to": "thousands", "result": 290.3}'),
    ("user", "Good. Now the distance between them is 1,200 km: how many miles is that?"),
    ("tool", '{"value": 1200, "to": "miles", "result": 745.6}'),
    ("user", "Answer the first question again in Spanish, please."),
    ("user", "And what is the population of Porto in thousands?"),
    ("tool", '{"value": 231962, "to": "thousands", "result": 232.0}'),
    ("user", "Summarize everything in one sentence."),
]


class Conversation:
    """The growing message list of the transcript; ``reply`` appends the model's answer."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]

    def reply(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text or "(no text)"})


def conversation():
    """Yield the conversation before each of the 10 turns (the caller adds the answer)."""
    state = Conversation()
    for role, content in EVENTS:
        state.history.append({"role": role, "content": content})
        yield state


def weights_as_oracle(result: FusionResult) -> dict[str, list[float]]:
    """A result's per-layer weights as ``oracle_weights`` (float32 round-trips exactly)."""
    return {n: row.tolist() for n, row in zip(result.weights.adapters, result.weights.matrix, strict=True)}


def run(args: Any, console: Console) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    world = bench_world(args.shape, args.k)
    adapters = list(world.adapters)[: args.k]
    common = dict(device=args.device, progress=False)
    reuse = FusionEngine.from_pretrained(world.base, world.catalog(args.k), config=BENCH_FUSION, **common)
    plain = FusionEngine.from_pretrained(
        world.base, world.catalog(args.k), config=BENCH_FUSION, prefix_cache_mb=0, **common
    )
    base_options = dict(max_new_tokens=args.tokens, ignore_eos=True, adapters=adapters)
    reuse.generate("warm up", **base_options)
    plain.generate("warm up", **base_options)

    times: dict[str, dict[str, list[list[float]]]] = {p: {"reuse": [], "no_reuse": []} for p in args.policies}
    prompt_tokens: list[int] = []
    for repeat in range(args.repeats):
        for policy in args.policies:
            console.print(f"repeat {repeat + 1}/{args.repeats}: policy {policy}")
            reuse.clear_prefix_cache()
            plain.clear_prefix_cache()
            turn_times: dict[str, list[float]] = {"reuse": [], "no_reuse": []}
            first_weights: dict[str, list[float]] = {}
            for turn, messages in enumerate(conversation()):
                start = time.perf_counter()
                ours = reuse.generate(
                    messages.history, tools=TOOLS, conversation_weights=policy, **base_options
                )
                turn_times["reuse"].append(time.perf_counter() - start)
                theirs_options: dict[str, Any] = dict(base_options)
                if policy == "once" and turn > 0:  # the same weights, given explicitly, nothing cached
                    theirs_options.update(mode="oracle", oracle_weights=first_weights)
                start = time.perf_counter()
                theirs = plain.generate(messages.history, tools=TOOLS, **theirs_options)
                turn_times["no_reuse"].append(time.perf_counter() - start)
                if ours.token_ids != theirs.token_ids or not torch.equal(
                    ours.weights.matrix, theirs.weights.matrix
                ):
                    raise AssertionError(f"turn {turn + 1} ({policy}): reuse changed the answer")
                if policy == "once" and turn == 0:
                    first_weights = weights_as_oracle(ours)
                if repeat == 0 and policy == args.policies[0]:
                    prompt_tokens.append(ours.usage.prompt_tokens)
                messages.reply(ours.text)
            for side in ("reuse", "no_reuse"):
                times[policy][side].append(turn_times[side])
    state = reuse.scheduler_state()
    info = {
        **world.describe(),
        "params": count_parameters(reuse.model),
        "k": args.k,
        "new_tokens_per_turn": args.tokens,
        "prompt_tokens_per_turn": prompt_tokens,
        "prefill_block": reuse.prefix_cache.block_size,
        "prefix_cache_limit_bytes": state.cache_limit_bytes,
        "prefix_cache_bytes_at_end": state.cached_bytes,
        "repeats": args.repeats,
        "device": str(reuse.device),
        "load_average": _load(),
        **environment(),
    }
    reuse.close()
    plain.close()

    records = []
    for policy in args.policies:
        for turn in range(len(EVENTS)):
            with_reuse = statistics.median(run[turn] for run in times[policy]["reuse"])
            without = statistics.median(run[turn] for run in times[policy]["no_reuse"])
            ratios = [
                r[turn] / n[turn]
                for r, n in zip(times[policy]["reuse"], times[policy]["no_reuse"], strict=True)
            ]
            records.append(
                {
                    "policy": policy,
                    "turn": turn + 1,
                    "prompt_tokens": prompt_tokens[turn] if turn < len(prompt_tokens) else None,
                    "reuse_s": with_reuse,
                    "no_reuse_s": without,
                    "ratio": statistics.median(ratios),
                }
            )
    print_table(
        console,
        f"10-turn agent transcript, time per turn ({info['params'] / 1e6:.1f} M params, "
        f"k={args.k}, {args.tokens} new tokens per turn, block {info['prefill_block']}, {info['device']}, "
        f"{args.threads} thread(s); medians of {args.repeats}; outputs identical; "
        f"load {info['load_average']})",
        ["policy", "turn", "prompt tokens", "reuse s", "no reuse s", "reuse / no reuse"],
        [
            [r["policy"], r["turn"], r["prompt_tokens"], r["reuse_s"], r["no_reuse_s"], r["ratio"]]
            for r in records
        ],
    )
    return {"suite": "transcript", "info": info, "results": records, "runs": times}


def _load() -> str:
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=3)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16, help="New tokens per assistant turn.")
    parser.add_argument("--policies", nargs="+", default=["per_turn", "once"], choices=["per_turn", "once"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    payload = run(args, Console(width=160))
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
