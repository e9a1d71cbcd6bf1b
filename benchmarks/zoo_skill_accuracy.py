"""Exact match of every adapter of a zoo on its own held-out queries: the base, the adapter alone,
the default fusion over the whole catalog; plus the uses world's composite skill cells (a tool
transcript or a passage in Zorbic/Velari) with the default fusion and the skill adapter alone.
For an adapter the catalog marks ``kind: reading`` also the default fusion with that kind as a
hint (``hint_kinds``), as ``QaFloraLLM`` sends it for a query engine's retrieved context.

Tool transcripts carry their tools: every query goes to the engine as messages plus tools, as the
integrations send it (so the policy knows tools are offered), and is checked to render exactly
as in training. Evaluation seed, 60 queries per row by default (``--seed 7777778``: the dev seed;
``--fusion JSON``: options for every fusion row, e.g. ``'{"language_place": false}'``):

    python benchmarks/zoo_skill_accuracy.py --catalog zoo-uses/catalog.yaml --json out.json

Run it in the zoo's world (``QAFLORA_ZOO_WORLD=uses`` for a ``--world uses`` build: the rows
follow this process's ``qaflora.zoo.skills.TASKS``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from qaflora import AdapterCatalog, FusionEngine
from qaflora.zoo import catalog_or_shipped
from qaflora.zoo.skills import SKILLS, TASKS
from qaflora.zoo.world import DEFAULT_EVAL_SEED, ZooExample, generic_questions, is_correct, make_examples


def correct_answers(
    engine: FusionEngine, examples: list[ZooExample], max_new_tokens: int = 24, **options: Any
) -> list[bool]:
    """Exact match per example, each sent as messages plus tools (as the integrations send them)."""
    for e in examples:  # the engine renders what training rendered
        assert engine.encode(e.messages, tools=e.tools).text == e.chat_prompt(engine.tokenizer)

    async def answers() -> list[Any]:  # submitted together: the engine batches them
        requests = (
            engine.agenerate(e.messages, tools=e.tools, max_new_tokens=max_new_tokens, **options)
            for e in examples
        )
        return await asyncio.gather(*requests)

    results = asyncio.run(answers())
    return [is_correct(r.text, e) for r, e in zip(results, examples, strict=True)]


def accuracy(engine: FusionEngine, examples: list[ZooExample], **options: Any) -> float:
    return sum(correct_answers(engine, examples, **options)) / len(examples)


def measure(
    engine: FusionEngine,
    group: str,
    adapter: str,
    examples: list[ZooExample],
    hint: str | None = None,
    fusion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row: the base, ``adapter`` alone and the default fusion (with ``fusion``'s options) on
    ``examples``; with ``hint`` (a catalog kind a caller would name for these queries, e.g. a query
    engine's ``reading``) also the default fusion told so (``hint_kinds``)."""
    fusion = fusion or {}
    row = {
        "group": group,
        "base": accuracy(engine, examples, mode="base"),
        "alone": accuracy(engine, examples, mode="single", adapters=[adapter]),
        "default": accuracy(engine, examples, **fusion),
    }
    line = f"{group:<28} base {row['base']:.2f}  alone {row['alone']:.2f}  default {row['default']:.2f}"
    if hint is not None:
        row["default_hinted"] = accuracy(engine, examples, hint_kinds=(hint,), **fusion)
        line += f"  default + {hint} hint {row['default_hinted']:.2f}"
    print(line)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default=None)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED, help="query seed (dev: 7777778)")
    parser.add_argument("--fusion", type=json.loads, default={}, help="fusion options (JSON) of every row")
    parser.add_argument("--skills-only", action="store_true", help="only the composite skill cells")
    args = parser.parse_args()
    catalog = AdapterCatalog.from_file(catalog_or_shipped(args.catalog))
    engine = FusionEngine.from_pretrained(catalog.base_model, catalog, progress=False, max_batch_size=64)
    # the reading skill's queries are what a query engine sends: QaFloraLLM would name the kind
    hints = {a.name: a.kind for a in catalog.enabled if a.kind == "reading"}
    rows = []
    for adapter in [] if args.skills_only else engine.adapter_names:
        if adapter in TASKS:
            examples = make_examples(adapter, "en", args.n, args.seed)
        else:
            examples = generic_questions(adapter.removeprefix("lang_"), args.n, args.seed)
        group = f"{adapter} (own queries)"
        rows.append(measure(engine, group, adapter, examples, hints.get(adapter), args.fusion))
    for skill in (s for s in SKILLS if s in engine.adapter_names):
        for language in ("zo", "ve"):
            examples = make_examples(skill, language, args.n, args.seed)
            group = f"{skill}/{language} (composite)"
            rows.append(measure(engine, group, skill, examples, hints.get(skill), args.fusion))
    engine.close()
    if args.json is not None:
        payload = {"catalog": str(args.catalog), "n": args.n, "seed": args.seed, "fusion": args.fusion}
        payload["rows"] = rows
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
