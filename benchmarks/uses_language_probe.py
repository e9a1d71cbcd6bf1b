"""What a zoo's language adapters do to generic and composite queries, default fusion vs alone.

Why: on draft H of the uses world the default fusion kept a language adapter on 14 of 100
generic ENGLISH dev questions and changed a fifth of their answers (benchmarks/POLICY.md), and
the adapters alone answered some English questions in their own language. This measures, on
``--n`` generated queries of the dev seed (exact match, greedy, 24 new tokens, each request as
the integrations send it): generic English (base, default, default answers identical to the
base's, each language adapter alone), generic Zorbic / Velari (default, the adapter alone) and
the six composite cells (task asked in a language; default, ``--n / 2`` each). Generic
questions are ``world.generic_questions``: the in-context tasks, reading's job, are left out.

    QAFLORA_ZOO_WORLD=uses python benchmarks/uses_language_probe.py --catalog I/catalog.yaml --json F
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from qaflora import AdapterCatalog, FusionEngine
from qaflora.zoo.probe import DEV_SEED
from qaflora.zoo.world import LANGUAGES, ZooExample, generic_questions, is_correct, make_examples


def answers(engine: FusionEngine, examples: list[ZooExample], **options: Any) -> list[str]:
    """Replies to ``examples``, submitted together so the engine batches them."""

    async def run() -> list[Any]:
        requests = (
            engine.agenerate(e.messages, tools=e.tools, max_new_tokens=24, **options) for e in examples
        )
        return await asyncio.gather(*requests)

    return [r.text for r in asyncio.run(run())]


def right(replies: list[str], examples: list[ZooExample]) -> float:
    return sum(is_correct(r, e) for r, e in zip(replies, examples, strict=True)) / len(examples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--n", type=int, default=100, help="generic queries per language")
    parser.add_argument("--seed", type=int, default=DEV_SEED)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    catalog = AdapterCatalog.from_file(args.catalog)
    languages = [lang for lang in LANGUAGES if lang != "en"]
    out: dict[str, Any] = {"catalog": str(args.catalog), "seed": args.seed, "n": args.n}
    engine = FusionEngine.from_pretrained(catalog.base_model, catalog, progress=False, max_batch_size=64)
    with engine:
        english = generic_questions("en", args.n, args.seed)
        default, base = answers(engine, english), answers(engine, english, mode="base")
        row = {"base": right(base, english), "default": right(default, english)}
        same = sum(d.strip() == b.strip() for d, b in zip(default, base, strict=True))
        row["default_as_base"] = same / args.n
        for lang in languages:
            alone = answers(engine, english, mode="single", adapters=[f"lang_{lang}"])
            row[f"lang_{lang}_alone"] = right(alone, english)
        out["generic_en"] = row
        print("generic en", row, flush=True)
        for lang in languages:
            examples = generic_questions(lang, args.n, args.seed)
            row = {
                "default": right(answers(engine, examples), examples),
                "alone": right(answers(engine, examples, mode="single", adapters=[f"lang_{lang}"]), examples),
            }
            out[f"generic_{lang}"] = row
            print(f"generic {lang}", row, flush=True)
        cells = {}
        for domain in ("math", "medical", "code"):
            for lang in languages:
                examples = make_examples(domain, lang, args.n // 2, args.seed)
                cells[f"{domain}/{lang}"] = right(answers(engine, examples), examples)
        out["composite_default"] = cells
        out["composite_default_mean"] = sum(cells.values()) / len(cells)
        print("composite, default", cells, f"mean {out['composite_default_mean']:.3f}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
