"""Is the zoo's training bit-reproducible? Train the first N base steps twice and compare.

A full `qaflora zoo build` takes ~18 minutes; this checks the property it depends on in about a
minute per run: the base model after ``--steps`` steps of the real recipe, hashed, twice, with
the given thread count and with or without deterministic kernels.

    python benchmarks/zoo_determinism.py --threads 2 --steps 150
    python benchmarks/zoo_determinism.py --threads 2 --steps 150 --nondeterministic
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import time
from unittest import mock

import torch
from qaflora.zoo import training
from qaflora.zoo.build import FULL, build_tokenizer, train_base


def weights_hash(model: torch.nn.Module) -> str:
    payload = b"".join(p.detach().contiguous().numpy().tobytes() for p in model.parameters())
    return hashlib.sha1(payload).hexdigest()[:12]


def run_once(steps: int, deterministic: bool) -> tuple[str, float, float]:
    recipe = dataclasses.replace(FULL, base_steps=steps)
    tokenizer = build_tokenizer()
    # the training loop enables deterministic kernels itself; --nondeterministic switches that off
    patch = (
        contextlib.nullcontext()
        if deterministic
        else mock.patch.object(training, "deterministic_algorithms", contextlib.nullcontext)
    )
    start = time.perf_counter()
    with patch:
        model, _, loss = train_base(tokenizer, recipe, seed=0, progress=False)
    return weights_hash(model), loss, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--nondeterministic", action="store_true", help="train without deterministic kernels")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [run_once(args.steps, not args.nondeterministic) for _ in range(2)]
    for index, (digest, loss, seconds) in enumerate(runs):
        print(
            f"run {index}: threads={args.threads} steps={args.steps} "
            f"loss={loss:.6f} weights={digest} {seconds:.0f} s"
        )
    print("bit-identical" if runs[0][0] == runs[1][0] else "DIFFERENT weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
