"""Does a base that reads its context make a better reading adapter? Train the uses world's
``reading`` adapter alone on a saved base and write a one-adapter catalog to measure it with.

Why: a full ``qaflora zoo build --world uses`` takes about 42 minutes; whether a changed base
recipe helps reading at all shows with its reading adapter alone (about 20 minutes on one
thread), measured by ``benchmarks/reading_breakdown.py`` on the catalog this writes. The
adapter is trained exactly as the build trains it (``adapter_jobs.train_adapters``: the uses
recipe, seed 0, the base reloaded from disk), its replay drawn from the base mix of the recipe
the base was trained with (``--in-context-share`` must be the base's).

    QAFLORA_ZOO_WORLD=uses OMP_NUM_THREADS=1 python benchmarks/reading_on_base.py \\
        --base /tmp/b --in-context-share 0.15 --out /tmp/b_reading
    QAFLORA_ZOO_WORLD=uses python benchmarks/reading_breakdown.py --catalog /tmp/b_reading/catalog.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from qaflora.zoo.adapter_jobs import train_adapters
from qaflora.zoo.build import base_mix, build_recipe, write_catalog
from qaflora.zoo.world import USES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="a saved uses-world base directory")
    parser.add_argument("--in-context-share", type=float, default=None, help="the base's (its replay)")
    parser.add_argument("--sheet-share", type=float, default=None, help="Recipe.reading_sheet_share")
    parser.add_argument("--steps", type=int, default=None, help="Recipe.reading_adapter_steps")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not USES:
        parser.error("run in the uses world: QAFLORA_ZOO_WORLD=uses")
    recipe = build_recipe()
    if args.in_context_share is not None:
        recipe = replace(recipe, in_context_share=args.in_context_share)
    if args.sheet_share is not None:
        recipe = replace(recipe, reading_sheet_share=args.sheet_share)
    if args.steps is not None:
        recipe = replace(recipe, reading_adapter_steps=args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(args.base, args.out / "base", dirs_exist_ok=True)
    (run,) = train_adapters(["reading"], args.out, recipe, 0, base_mix(recipe, 0), jobs=1)
    write_catalog(args.out, ["reading"])
    report = {"base": str(args.base), "in_context_share": recipe.in_context_share, "loss": run.loss}
    report |= {"sheet_share": recipe.reading_sheet_share, "steps": recipe.reading_adapter_steps}
    report["seconds"] = run.seconds
    print(json.dumps(report))


if __name__ == "__main__":
    main()
