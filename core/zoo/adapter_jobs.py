"""Train the zoo's adapters on the saved base, several at once in worker processes.

Why processes: the adapters are independent once the base is saved, and one adapter's training
step (small matrices, many small ops) does not keep two cores busy. On 2 cores, one thread per
adapter and two adapters at once do about 1.5x the steps per second of one adapter on two
threads (``benchmarks/ZOO.md``, "Build time of the uses world"). Threads of one process would
share the GIL between those small ops, so each job is a spawned process with its own model copy.

Why the bytes do not depend on ``jobs``: an adapter's training is fixed by its seed, its data
and its thread count (``Recipe.adapter_threads``), never by the process that runs it or the
order adapters finish in. Parallel jobs therefore need a fixed thread count; the shipped
world's recipe has none (its adapters train on the build process's threads, as they always
did) and builds one adapter at a time. (On this machine the thread count happened not to
matter: the uses world built with two one-thread jobs is byte-identical to its sequential
two-thread build; a fixed count keeps that true where a kernel splits sums by thread.)
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .build import Recipe
    from .world import ZooExample


@dataclass(frozen=True)
class AdapterRun:
    """What one adapter's training reports for ``build_info.json``."""

    name: str
    loss: float
    seconds: float


def default_jobs(recipe: Recipe, quick: bool = False) -> int:
    """As many adapters at once as the machine has cores for, where the recipe allows more than
    one; one for a quick build (its adapters train in a few steps: a process costs more)."""
    if quick or recipe.adapter_threads is None:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // recipe.adapter_threads)


def check_jobs(jobs: int, recipe: Recipe) -> None:
    """Refuse a parallel build whose adapters' bytes would depend on how many run at once."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs > 1 and recipe.adapter_threads is None:
        raise ValueError(
            f"jobs={jobs} needs a recipe with a fixed adapter_threads (the uses world's has 1); "
            "this recipe trains each adapter on the build process's threads, so it builds one "
            "adapter at a time"
        )


def train_adapters(
    names: list[str],
    out_dir: Path,
    recipe: Recipe,
    seed: int,
    replay_pool: list[ZooExample],
    *,
    jobs: int = 1,
    progress: bool = True,
    steps_of: Callable[[str], int] | None = None,
) -> list[AdapterRun]:
    """Train and save every adapter of ``names`` on ``out_dir/base``; one report per adapter,
    in ``names`` order. ``steps_of`` orders the parallel queue longest first (a shorter wall
    time when the adapters' step counts differ, e.g. code 1600 and languages 400)."""
    check_jobs(jobs, recipe)
    if jobs == 1:
        return [_train_one(name, out_dir, recipe, seed, replay_pool, progress) for name in names]
    queue = sorted(names, key=lambda name: -(steps_of(name) if steps_of else 0))
    runs: dict[str, AdapterRun] = {}
    context = multiprocessing.get_context("spawn")  # never fork a process that runs OpenMP
    with ProcessPoolExecutor(max_workers=min(jobs, len(names)), mp_context=context) as pool:
        futures = [pool.submit(_train_one, n, out_dir, recipe, seed, replay_pool, False) for n in queue]
        bar = tqdm(total=len(futures), desc=f"adapters ({jobs} at once)", disable=not progress)
        try:
            for future in as_completed(futures):
                run = future.result()
                runs[run.name] = run
                bar.update()
        except BaseException:  # one adapter failed (or ^C): do not train the queued ones first
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
    return [runs[name] for name in names]


def _train_one(
    name: str, out_dir: Path, recipe: Recipe, seed: int, replay_pool: list[ZooExample], progress: bool
) -> AdapterRun:
    """Train adapter ``name`` on the saved base under the recipe's thread count, and save it."""
    from transformers import LlamaForCausalLM

    from ..hf_quiet import quiet_transformers
    from .build import save_adapter, train_adapter
    from .tokenizer import build_tokenizer

    threads_before = torch.get_num_threads()
    if recipe.adapter_threads is not None:
        torch.set_num_threads(recipe.adapter_threads)
    try:
        started = time.time()
        # The base exactly as users load it (see build_zoo), once per adapter: a process of its own
        # has no other copy, and the sequential build pays one load (~0.1 s) per adapter too.
        with quiet_transformers():  # one load per adapter: seven bars would drown the build's own
            base = LlamaForCausalLM.from_pretrained(out_dir / "base", dtype=torch.float32)
        peft_model, loss = train_adapter(name, base, build_tokenizer(), replay_pool, recipe, seed, progress)
        save_adapter(peft_model, name, out_dir / "adapters" / name)
        return AdapterRun(name, round(loss, 4), round(time.time() - started, 1))
    finally:
        torch.set_num_threads(threads_before)
