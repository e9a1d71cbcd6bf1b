"""Retrain some adapters of a built zoo on its saved base with this code's recipe; link the rest.

Why: an adapter is trained on the base alone (its own data plus replay of the base mix), so a
recipe change that touches only some adapters (e.g. ``Recipe.language_english``, the language
adapters' own data) needs only those retrained: a few minutes instead of a 30-minute build.
With an unchanged recipe the retrained adapter is byte-identical to the build's (checked on
draft H's ``lang_zo``), so the result is what a full build of the current recipe gives,
provided the base's recipe did not change.

    QAFLORA_ZOO_WORLD=uses python benchmarks/zoo_retrain_adapters.py --zoo H --out I lang_zo lang_ve

Run it in the zoo's world (``QAFLORA_ZOO_WORLD`` / ``QAFLORA_ZOO_WORLD_SEED`` as for the build).
Each adapter trains in its own process on one thread, two at a time, as ``build_zoo`` does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from qaflora.zoo.build import adapter_names, base_mix, build_recipe, save_adapter, train_adapter
from transformers import AutoTokenizer, LlamaForCausalLM


def retrain(zoo: Path, out: Path, name: str) -> tuple[str, float]:
    """Train adapter ``name`` as the build would, on ``zoo``'s saved base; save it under ``out``."""
    torch.set_num_threads(1)
    info = json.loads((zoo / "build_info.json").read_text())
    recipe = build_recipe(bool(info.get("quick")), info.get("shape", "shipped"))
    tokenizer = AutoTokenizer.from_pretrained(str(zoo / "base"))
    base = LlamaForCausalLM.from_pretrained(zoo / "base", dtype=torch.float32)
    seed = info["seed"]
    model, loss = train_adapter(name, base, tokenizer, base_mix(recipe, seed), recipe, seed, progress=False)
    save_adapter(model, name, out / "adapters" / name)
    return name, loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, required=True, help="a built zoo")
    parser.add_argument("--out", type=Path, required=True, help="the new zoo (links the rest)")
    parser.add_argument("names", nargs="+", help="adapters to retrain")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(adapter_names()))
    if unknown:
        print(f"not adapters of this world: {unknown}; known: {adapter_names()}", file=sys.stderr)
        return 2
    zoo = args.zoo.resolve()
    (args.out / "adapters").mkdir(parents=True, exist_ok=True)
    for name in adapter_names():
        if name not in args.names:
            (args.out / "adapters" / name).symlink_to(zoo / "adapters" / name)
    (args.out / "base").symlink_to(zoo / "base")
    shutil.copy(zoo / "catalog.yaml", args.out / "catalog.yaml")
    with ProcessPoolExecutor(max_workers=2) as pool:
        count = len(args.names)
        for name, loss in pool.map(retrain, [zoo] * count, [args.out] * count, args.names):
            print(f"{name}: tail loss {loss:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
