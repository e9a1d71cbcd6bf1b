"""Train a built zoo's base again from its recipe and say whether the bytes are the same.

Why: a uses-world draft whose figures moved by 20-35 points from the last one (benchmarks/ZOO.md,
"draft H") raised the question which base the recipe really gives. The base is most of a build's
time (about 9 min of the uses world's 30 on 2 cores); this retrains only it, with the build's
seed, shape and threads, and compares the saved files by sha256:

    QAFLORA_ZOO_WORLD=uses python benchmarks/zoo_reproduce_base.py --zoo H [--out DIR]

Run it in the zoo's world (``QAFLORA_ZOO_WORLD`` / ``QAFLORA_ZOO_WORLD_SEED`` as for the build).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from qaflora.zoo.build import Recipe, build_recipe, build_tokenizer, save_base, train_base

COMPARED = ("model.safetensors", "tokenizer.json", "config.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_of(info: dict[str, Any]) -> Recipe:
    """The build's recipe: build_info records a quick build's shape as "quick"."""
    quick = bool(info.get("quick"))
    return build_recipe(quick, "shipped" if quick else info["shape"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, required=True, help="a built zoo (its build_info.json and base/)")
    parser.add_argument("--out", type=Path, default=None, help="keep the retrained base here")
    args = parser.parse_args()
    info = json.loads((args.zoo / "build_info.json").read_text())
    torch.set_num_threads(min(2, torch.get_num_threads()))  # as build_zoo does
    tokenizer = build_tokenizer()
    base, _, loss = train_base(tokenizer, recipe_of(info), info["seed"], True)
    out = args.out or Path(tempfile.mkdtemp(prefix="qaflora-base-"))
    save_base(base, tokenizer, out)
    print(f"loss {loss:.4f} (the build recorded {info['base']['loss']:.4f})")
    same = True
    for name in COMPARED:
        mine, theirs = sha256(out / name), sha256(args.zoo / "base" / name)
        same &= mine == theirs
        print(f"{name}: {'same' if mine == theirs else 'DIFFERENT'} ({mine[:12]} vs {theirs[:12]})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
