"""What the fusion policies cost per query: planning alone and planning + generation.

Interleaved runs (every policy once per round, ``--rounds`` rounds), medians, and ratios
against qa-FLoRA as published (``policy="shares"``) measured in the same rounds. The queries
are the composite queries of the dev seed (the composition check runs on queries with two
relevant adapters, so these are its worst case on the demo zoo). Every other option is the
engine's default, so the last row is what a user gets.

    python benchmarks/policy_cost.py --json benchmarks/results/policy_cost.json
    python benchmarks/policy_cost.py --catalog /tmp/distr/catalog_32.yaml --json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from policy_features import DEV_SEED, load_engine
from qaflora.zoo.world import eval_set

POLICIES = {
    "qa-FLoRA (paper: shares)": {"mode": "qaflora", "policy": "shares"},
    "relevant, unit strength": {"mode": "qaflora", "policy": "relevant", "strength": "unit"},
    "relevant + uniform check (fit_blocks=0; the default until 2026-12-02)": {
        "mode": "qaflora",
        "policy": "relevant",
        "fit_blocks": 0,
    },
    "default (relevant + check by depth, fit_blocks=4)": {"mode": "qaflora", "policy": "relevant"},
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, default=None)
    parser.add_argument("--n", type=int, default=8, help="queries per composite cell")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    engine = load_engine(args.catalog)
    messages = [e.messages for e in eval_set("composite", args.n, DEV_SEED)]
    plan: dict[str, list[float]] = {name: [] for name in POLICIES}
    total: dict[str, list[float]] = {name: [] for name in POLICIES}
    try:
        for options in POLICIES.values():  # warm-up
            engine.generate_batch(messages[:4], max_new_tokens=2, **options)
        for _ in range(args.rounds):
            for name, options in POLICIES.items():
                start = time.perf_counter()
                engine.fusion_weights_batch(messages, **options)
                plan[name].append((time.perf_counter() - start) / len(messages))
                start = time.perf_counter()
                engine.generate_batch(messages, max_new_tokens=args.max_new_tokens, **options)
                total[name].append((time.perf_counter() - start) / len(messages))
    finally:
        engine.close()
    paper = "qa-FLoRA (paper: shares)"
    rows = {}
    for name in POLICIES:
        p, t = statistics.median(plan[name]), statistics.median(total[name])
        rows[name] = {
            "plan_ms_per_query": round(1e3 * p, 2),
            "plan_vs_paper": round(p / statistics.median(plan[paper]), 2),
            "end_to_end_ms_per_query": round(1e3 * t, 2),
            "end_to_end_vs_paper": round(t / statistics.median(total[paper]), 2),
        }
    report = {
        "catalog": str(args.catalog or "shipped"),
        "queries": len(messages),
        "rounds": args.rounds,
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    print("| policy | plan ms/query | x paper | plan+generate ms/query | x paper |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['plan_ms_per_query']} | {row['plan_vs_paper']} | "
            f"{row['end_to_end_ms_per_query']} | {row['end_to_end_vs_paper']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
