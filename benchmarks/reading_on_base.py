"""Does a base that reads its context make a better reading adapter? Train the uses world's
``reading`` adapter (or another of its adapters, ``--adapter``) alone on a saved base and write
a one-adapter catalog to measure it with.

Why: a full ``qaflora zoo build --world uses`` takes about 42 minutes; whether a changed base
recipe helps reading at all shows with its reading adapter alone (about 20 minutes on one
thread), measured by ``benchmarks/reading_breakdown.py`` on the catalog this writes. The
adapter is trained exactly as the build trains it (``adapter_jobs.train_adapters``: the uses
recipe, seed 0, the base reloaded from disk), its replay drawn from the base mix of the recipe
the base was trained with (``--in-context-share`` must be the base's).

    QAFLORA_ZOO_WORLD=uses OMP_NUM_THREADS=1 python benchmarks/reading_on_base.py \\
        --base /tmp/b --in-context-share 0.15 --out /tmp/b_reading
    QAFLORA_ZOO_WORLD=uses python benchmarks/reading_breakdown.py --catalog /tmp/b_reading/catalog.yaml

With ``--zoo F`` instead of ``--base``, the whole built zoo F is copied and the named adapters
(``--adapter``, repeatable, ``--jobs`` at once) are retrained in the copy under this process's
recipe: what a rebuild would give when a recipe change touches only those adapters (their
bytes do not depend on the others, nor on how many train at once), in a fraction of its time.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from qaflora.zoo.adapter_jobs import train_adapters
from qaflora.zoo.build import adapter_schedule, base_mix, build_recipe, write_catalog
from qaflora.zoo.world import USES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--base", type=Path, help="a saved uses-world base directory")
    where.add_argument("--zoo", type=Path, help="a built uses zoo: copy it, retrain --adapter in the copy")
    parser.add_argument("--in-context-share", type=float, default=None, help="the base's (its replay)")
    parser.add_argument("--sheet-share", type=float, default=None, help="Recipe.reading_sheet_share")
    parser.add_argument("--steps", type=int, default=None, help="Recipe.reading_adapter_steps (reading only)")
    parser.add_argument(
        "--adapter", action="append", help="an adapter to train (repeatable; default: reading)"
    )
    parser.add_argument("--tool-replay-share", type=float, default=None, help="Recipe.tool_replay_share")
    parser.add_argument("--jobs", type=int, default=1, help="adapters trained at once (one thread each)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not USES:
        parser.error("run in the uses world: QAFLORA_ZOO_WORLD=uses")
    names = args.adapter or ["reading"]
    recipe = build_recipe()
    if args.in_context_share is not None:
        recipe = replace(recipe, in_context_share=args.in_context_share)
    if args.sheet_share is not None:
        recipe = replace(recipe, reading_sheet_share=args.sheet_share)
    if args.steps is not None:
        recipe = replace(recipe, reading_adapter_steps=args.steps)
    if args.tool_replay_share is not None:
        recipe = replace(recipe, tool_replay_share=args.tool_replay_share)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.zoo is not None:  # the whole zoo, its catalog and the other adapters as they were
        shutil.copytree(args.zoo, args.out, dirs_exist_ok=True)
    else:
        shutil.copytree(args.base, args.out / "base", dirs_exist_ok=True)
    runs = train_adapters(
        names,
        args.out,
        recipe,
        0,
        base_mix(recipe, 0),
        jobs=args.jobs,
        steps_of=lambda n: adapter_schedule(n, recipe)[0],
    )
    if args.zoo is None:
        write_catalog(args.out, names)
    report = {"base": str(args.zoo or args.base), "in_context_share": recipe.in_context_share}
    report |= {"sheet_share": recipe.reading_sheet_share, "reading_steps": recipe.reading_adapter_steps}
    report |= {"tool_replay_share": recipe.tool_replay_share}
    report["adapters"] = {run.name: {"loss": run.loss, "seconds": run.seconds} for run in runs}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
