"""Where the uses world's reading skill fails: exact match of the ``reading`` adapter alone (and
of the base) on its own English queries, broken down by what the question asks, how many facts
of that kind the passage holds, and the prompt's template; plus the base's own in-context
tasks (``story``, ``follows``, ``lastword``), which say whether the base can bind at all.
The same breakdown on fact sheets (``skills.fact_sheet``: several facts of one subject) follows.

Why: the reading adapter answers about half of its own queries (benchmarks/ZOO.md, drafts C-E)
and RAG through fusion stays under 35 %. Whether it misses the binding (several facts of one
kind: which one is asked?) or something else decides what the next recipe should change.
Evaluation seed, same query stream as ``make_examples("reading", "en", n, seed)``:

    QAFLORA_ZOO_WORLD=uses python benchmarks/reading_breakdown.py --catalog E/catalog.yaml --n 300
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

from qaflora import AdapterCatalog, FusionEngine
from qaflora.zoo.skills import make_reading_sheets, reading_turns
from qaflora.zoo.world import (
    DEFAULT_EVAL_SEED,
    DRUGS,
    NUMBER_WORDS,
    ORGANS,
    SHELF_COLORS,
    SYMPTOMS,
    UNKNOWN,
    ZooExample,
    in_language,
    make_examples,
)
from zoo_skill_accuracy import correct_answers

ANSWER_KINDS = {"drug": DRUGS, "organ": ORGANS, "symptom": SYMPTOMS, "shelf": SHELF_COLORS}


def answer_kind(answer: str) -> str:
    """What the question asks, read off its answer (numbers: a sum or a list's item/length)."""
    if answer == UNKNOWN:
        return "unknown"
    for kind, words in ANSWER_KINDS.items():
        if answer in words:
            return kind
    return "number" if answer in NUMBER_WORDS else "other"


def same_kind_facts(passage: str, kind: str) -> int:
    """Sentences of the passage that hold a word of the asked kind: the candidates to bind among."""
    words = ANSWER_KINDS.get(kind, NUMBER_WORDS)
    return sum(any(w in sentence.split() for w in words) for sentence in passage.split(" . ") if sentence)


def reading_queries(n: int, seed: int, sheets: bool = False) -> list[tuple[ZooExample, dict[str, Any]]]:
    """The ``make_examples("reading", "en", n, seed)`` stream (with ``sheets``: the
    ``make_reading_sheets(n, seed)`` one), with each query's passage and style."""
    rng = random.Random(f"{seed}-sheets" if sheets else f"{seed}-reading-en")
    out = []
    for _ in range(n):
        turns = reading_turns(rng, sheets=sheets)
        example = in_language(turns, "reading", "en")
        kind = answer_kind(turns.answer)
        out.append(
            (
                example,
                {
                    "kind": kind,
                    "style": turns.meta["style"],
                    "candidates": same_kind_facts(turns.meta["passage"], kind) if kind != "unknown" else 0,
                },
            )
        )
    return out


def breakdown(hits: list[bool], labels: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for hit, label in zip(hits, labels, strict=True):
        groups[str(label[key])].append(hit)
    return {k: {"n": len(v), "accuracy": round(sum(v) / len(v), 3)} for k, v in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    catalog = AdapterCatalog.from_file(args.catalog)
    engine = FusionEngine.from_pretrained(catalog.base_model, catalog, progress=False, max_batch_size=64)
    report: dict[str, Any] = {"catalog": args.catalog, "n": args.n, "seed": args.seed}
    for stream, sheets in (("", False), (", fact sheets", True)):
        queries = reading_queries(args.n, args.seed, sheets=sheets)
        examples, labels = [q[0] for q in queries], [q[1] for q in queries]
        make = make_reading_sheets if sheets else partial(make_examples, "reading", "en")
        expected = make(args.n, args.seed)
        assert [e.messages for e in examples] == [e.messages for e in expected]
        for name, options in (
            ("reading alone", {"mode": "single", "adapters": ["reading"]}),
            ("base", {"mode": "base"}),
        ):
            hits = correct_answers(engine, examples, max_new_tokens=12, **options)
            report[name + stream] = {
                "accuracy": round(sum(hits) / len(hits), 3),
                **{key: breakdown(hits, labels, key) for key in ("kind", "candidates", "style")},
            }
    generic = [
        e
        for e in make_examples(None, "en", 4 * args.n, args.seed)
        if e.meta["task"] in ("story", "follows", "lastword")
    ]
    hits = correct_answers(engine, generic, max_new_tokens=12, mode="base")
    report["base, in-context generic tasks"] = breakdown(
        hits, [{"task": e.meta["task"]} for e in generic], "task"
    )
    engine.close()
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
