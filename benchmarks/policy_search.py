"""The dev-seed search behind benchmarks/POLICY.md: selection rules and fusion policies, side by side.

Two parts, both on the DEV seed (7777778 unless ``--seed``), never on the evaluation seed:

1. **Selection rules** on the features of ``policy_features.py`` (no generation): the share of
   queries whose selected set is exactly the labelled one (composite: task + language adapter;
   single: its adapter; generic English: none). Rules: the issue's hint (layer-mean KL >=
   0.35 x max), a fraction of the max / an absolute floor / the largest log-gap on the
   next-token KL, and the top-2 above a floor.
2. **Policies** run through the engine itself (``fusion_weights_batch``, so the composition
   check is the shipped code), then ONE fused forward with the chosen weights: the answer is a
   single token, so "argmax == answer" is the first-token proxy of exact match (`qaflora eval`
   generates; the proxy and generation agreed within 1.1 points on every policy we ran both).
   Also the product-of-experts target's own accuracy (what output-space fusion would answer).

    python benchmarks/policy_features.py --n 100 --out /tmp/policy_dev.pt
    python benchmarks/policy_search.py --features /tmp/policy_dev.pt \\
        --json benchmarks/results/policy_search_dev.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from policy_features import Features, FusedProbe, load_engine
from qaflora.policy import product_of_experts

KINDS = ("composite", "single", "generic_en")


def by_kind(features: Features, ok: torch.Tensor) -> dict[str, float]:
    """Mean over the cells of each kind of query (as `qaflora eval` averages), in percent."""
    out = {}
    for kind in KINDS:
        cells = sorted({c for c in features.cells if c.startswith(kind)})
        out[kind] = round(
            100 * sum(float(ok[features.mask(c)].float().mean()) for c in cells) / len(cells), 1
        )
    return out


def by_cell(features: Features, ok: torch.Tensor) -> dict[str, float]:
    return {
        c.split(":")[1]: round(100 * float(ok[features.mask(c)].float().mean()), 1)
        for c in sorted(set(features.cells))
    }


# ----------------------------------------------------------------------------- 1. selection rules


def _fraction(score: torch.Tensor, fraction: float, floor: float = 0.0) -> torch.Tensor:
    return (score >= fraction * score.amax(1, keepdim=True)) & (score >= floor)


def _largest_log_gap(score: torch.Tensor, floor: float, k_max: int) -> torch.Tensor:
    """k = the position of the largest drop in sorted log-drift among the first k_max + 1."""
    logs, order = score.clamp_min(1e-12).log().sort(1, descending=True)
    k = (logs[:, :k_max] - logs[:, 1 : k_max + 1]).argmax(1) + 1
    k = torch.minimum(k, (logs >= math.log(floor)).sum(1))
    chosen = torch.zeros_like(score, dtype=torch.bool)
    for q in range(score.shape[0]):
        chosen[q, order[q, : k[q]]] = True
    return chosen


def _top_above(score: torch.Tensor, floor: float, k: int) -> torch.Tensor:
    chosen = torch.zeros_like(score, dtype=torch.bool)
    top = score.topk(k, 1).indices
    chosen.scatter_(1, top, True)
    return chosen & (score >= floor)


def selection_rules(features: Features) -> dict[str, dict[str, float]]:
    last, mean = features.kl[:, :, -1], features.kl.mean(-1)
    needed = features.relevant_matrix() > 0
    rules: dict[str, torch.Tensor] = {
        "hint: layer-mean KL >= 0.35 x max": _fraction(mean, 0.35),
        "layer-mean KL >= 0.35 x max and >= 0.5 nats": _fraction(mean, 0.35, 0.5),
        "next-token KL >= 0.35 x max and >= 0.5 nats": _fraction(last, 0.35, 0.5),
        "next-token KL >= 0.5 x max and >= 0.5 nats": _fraction(last, 0.5, 0.5),
        "next-token KL >= 1 nat": last >= 1.0,
        "next-token KL >= 2 nats": last >= 2.0,
        "largest log-gap among top 3, >= 0.5 nats": _largest_log_gap(last, 0.5, 2),
        "top-2 next-token KL >= 0.5 nats (shipped relevance)": _top_above(last, 0.5, 2),
        "top-2 next-token KL >= 0.25 nats": _top_above(last, 0.25, 2),
        "top-2 next-token KL >= 1 nat": _top_above(last, 1.0, 2),
        "top-3 next-token KL >= 0.5 nats": _top_above(last, 0.5, 3),
    }
    result = {name: by_kind(features, (chosen == needed).all(1)) for name, chosen in rules.items()}
    ranked_first = {}
    for kind in ("composite", "single"):
        rows = features.mask(kind)
        score, need = last[rows], needed[rows]
        weakest_needed = torch.where(need, score, torch.full_like(score, math.inf)).min(1).values
        strongest_other = torch.where(~need, score, torch.full_like(score, -math.inf)).max(1).values
        ranked_first[kind] = round(100 * float((weakest_needed > strongest_other).float().mean()), 1)
    result["(ceiling) needed adapters ranked above all others by next-token KL"] = ranked_first
    return result


# ----------------------------------------------------------------------------- 2. policies


def policy_rows(features: Features) -> dict[str, dict[str, Any]]:
    relevant = {"mode": "qaflora", "policy": "relevant"}
    return {
        "qa-FLoRA (paper: shares, sum)": {"mode": "qaflora"},
        "qa-FLoRA, max-normalized": {"mode": "qaflora", "normalize": "max"},
        "relevant, unit strength (floor 0.5, top 2)": {**relevant, "strength": "unit"},
        "relevant, unit strength, floor 0.25": {**relevant, "strength": "unit", "relevance_floor": 0.25},
        "relevant, unit strength, floor 1.0": {**relevant, "strength": "unit", "relevance_floor": 1.0},
        "relevant + check (shipped: floor 0.5, grid 0/1/1.5/2/3, logprobs)": {**relevant},
        "relevant + check, floor 0.25": {**relevant, "relevance_floor": 0.25},
        "relevant + check, floor 1.0": {**relevant, "relevance_floor": 1.0},
        "relevant + check, grid 0/1/2/3": {**relevant, "fit_grid": (0.0, 1.0, 2.0, 3.0)},
        "relevant + check, grid 0/1/2": {**relevant, "fit_grid": (0.0, 1.0, 2.0)},
        "relevant + check, grid 0/0.5/1/1.5/2/3": {**relevant, "fit_grid": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)},
        "relevant + check, grid without 0 (1/1.5/2/3)": {**relevant, "fit_grid": (1.0, 1.5, 2.0, 3.0)},
        "relevant + check, mixed target": {**relevant, "fit_target": "mixed"},
        "relevant + check, top 3": {**relevant, "max_relevant": 3, "fit_grid": (0.0, 1.0, 2.0, 3.0)},
        "relevant + check, mixed target, top 3": {
            **relevant,
            "fit_target": "mixed",
            "max_relevant": 3,
            "fit_grid": (0.0, 1.0, 2.0, 3.0),
        },
    }


def run_policy(engine, features: Features, probe: FusedProbe, options: dict[str, Any]) -> dict[str, Any]:
    names = engine.adapter_names
    start = time.perf_counter()
    weights = engine.fusion_weights_batch(features.messages, **options)
    plan_s = time.perf_counter() - start
    matrix = torch.zeros(len(weights), len(names), engine.num_layers)
    for q, w in enumerate(weights):
        for row, name in enumerate(w.adapters):
            matrix[q, names.index(name)] = w.matrix[row]
    ok = probe.correct(matrix, features.answer_ids)
    needed = [set(r) for r in features.relevant]
    exact = torch.tensor([set(w.adapters) == need for w, need in zip(weights, needed, strict=True)])
    return {
        "accuracy": by_kind(features, ok),
        "cells": by_cell(features, ok),
        "exact_set": by_kind(features, exact),
        "plan_ms_per_query": round(1e3 * plan_s / len(weights), 2),
    }


def output_space_targets(features: Features) -> dict[str, dict[str, float]]:
    """Accuracy of the product-of-experts answer itself (no parameter-space fusion)."""
    last = features.lens[:, :, -1]
    needed = features.relevant_matrix()
    drift = features.kl[:, :, -1]
    top2 = torch.zeros_like(drift).scatter(1, drift.topk(2, 1).indices, 1.0) * (drift >= 0.5)
    out = {}
    for name, chosen in (("labelled adapters", needed), ("top-2 >= 0.5 nats", top2)):
        answers = torch.stack(
            [
                product_of_experts(last[q, 0], last[q, 1:][chosen[q] > 0]).argmax()
                if chosen[q].any()
                else last[q, 0].argmax()
                for q in range(len(features.cells))
            ]
        )
        out[f"product of experts over the {name}"] = by_kind(features, answers == features.answer_ids)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="output of policy_features.py")
    parser.add_argument("--catalog", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--only", nargs="*", default=None, help="policy rows whose name contains one of these"
    )
    args = parser.parse_args(argv)
    features = Features.load(args.features)
    engine = load_engine(args.catalog)
    report: dict[str, Any] = {"features": str(args.features), "queries": len(features.cells)}
    report["selection"] = selection_rules(features)
    report["output_space"] = output_space_targets(features)
    probe = FusedProbe(engine, features.prompts)
    report["policies"] = {}
    chosen: Callable[[str], bool] = lambda n: not args.only or any(o in n for o in args.only)  # noqa: E731
    try:
        for name, options in policy_rows(features).items():
            if chosen(name):
                report["policies"][name] = run_policy(engine, features, probe, options)
                print(name, report["policies"][name]["accuracy"], flush=True)
    finally:
        engine.close()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
