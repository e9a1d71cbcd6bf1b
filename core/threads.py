"""Intra-op thread count of the engine's worker thread, chosen so a small CPU is not oversubscribed.

Why this exists: the engine decodes on its own worker thread. With PyTorch's OpenMP backend
every thread that runs a parallel op owns its own OpenMP team, sized by ``torch.get_num_threads()``
(the machine's cores by default). Once the caller's thread (it loaded the model and weighs
queries) and the worker both hold a team, there are more OpenMP threads than cores; libgomp then
stops spinning between parallel regions and every small matmul of a decode step pays a thread
wake-up. Measured on a 2-core machine (RESULTS.md §4.2): fused decode with 4 adapters ran at
0.58-0.65x the base model's speed with the default two threads, 0.82x with one.

What ``torch.set_num_threads`` does when called from a thread (measured on this torch build, and
pinned by ``tests/test_threads.py``): it sets the calling thread's OpenMP team size (the main
thread keeps its own) and MKL's thread-local count, and also the process-wide default that
threads created later start with. We want only the first two, so after setting the worker's
count we restore the process-wide default from a short-lived helper thread: the user's other
threads keep the threads they had.

Policy (``worker_threads``): ``QAFLORA_NUM_THREADS`` if set; else, if the user set
``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, torch's count as they configured it; else one
thread on machines with at most ``SMALL_CPU_CORES`` usable cores, where a second team cannot
fit, and torch's default elsewhere (not measured there, so not changed).

**Two counts, one per phase** (llama.cpp's ``--threads`` and ``--threads-batch``): decode steps
are many small per-token ops where a second team only adds wake-ups; admission (planning's k+1
rows and the prefill) is whole-prompt matmuls that split well. So the worker runs admission
inside :func:`prompt_phase`, with ``prompt_threads``: ``FusionEngine(prompt_threads=N)`` or
``QAFLORA_PROMPT_THREADS`` if given, else the worker's own count. Why not every core by default:
measured on 2 cores (benchmarks/RESULTS.md §6.1, "Admission threads"), admitting on both cores
made an idle engine's first token 9-14 % sooner but, under 16 streams, the TTFT p99 8-25 %
worse in each of 3 repeats (our reading, not measured apart: the serving process's event loop,
streaming the running rows' tokens and taking new requests, competes with a two-thread OpenMP
team for two cores). A machine with cores to spare, or a server that is rarely busy, can ask
for it.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

ENV_VAR = "QAFLORA_NUM_THREADS"
PROMPT_ENV_VAR = "QAFLORA_PROMPT_THREADS"
USER_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Up to this many usable cores the worker runs single-threaded by default (measured on 2 cores).
SMALL_CPU_CORES = 2


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity, e.g. ``taskset`` or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _requested_threads(name: str = ENV_VAR) -> int | None:
    """Environment variable ``name`` as a positive int; None when unset, empty or ``auto``."""
    raw = os.environ.get(name, "").strip()
    if not raw or raw.lower() == "auto":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        message = f"{name}={raw!r} is not a positive integer; ignoring it and using the default policy"
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return None
    return value


def worker_threads(cores: int | None = None) -> int | None:
    """Intra-op threads the worker should use, or None to keep torch's current setting."""
    requested = _requested_threads()
    if requested is not None:
        return requested
    if any(os.environ.get(name) for name in USER_THREAD_VARS):
        return None
    cores = usable_cores() if cores is None else cores
    return 1 if cores <= SMALL_CPU_CORES else None


def prompt_threads(worker: int) -> int:
    """Intra-op threads for the worker's admissions (planning, prefill), given its decode count:
    ``QAFLORA_PROMPT_THREADS`` if set, else ``worker`` (module docstring: why not more)."""
    requested = _requested_threads(PROMPT_ENV_VAR)
    return worker if requested is None else requested


@dataclass(frozen=True)
class PhaseThreads:
    """A worker thread's two intra-op counts, and the default new threads must keep."""

    decode: int
    prompt: int
    process_default: int


_local = threading.local()  # .phase: the PhaseThreads of a configured worker thread


def configure_worker_threads(prompt: int | None = None, *, widen: bool = True) -> int:
    """Apply :func:`worker_threads` to the calling (worker) thread only; return its thread count.

    Called once by the engine's worker thread when it starts. Other threads keep theirs. Also
    records this thread's :func:`prompt_phase` count: ``prompt`` if given, else
    :func:`prompt_threads` when ``widen`` (a thread that shares the cores with another model
    thread, the planner of ``plan_ahead`` and its worker, keeps one count).
    """
    process_default = _process_default_threads()
    wanted = worker_threads()
    if wanted is not None and wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)  # this thread's OpenMP team and MKL count ...
        _set_new_thread_default(process_default)  # ... and the default of new threads: undo that
        logger.debug("worker thread uses %d intra-op thread(s); others keep %d", wanted, process_default)
    decode = torch.get_num_threads()
    if prompt is None:
        prompt = prompt_threads(decode) if widen else decode
    _local.phase = PhaseThreads(decode=decode, prompt=prompt, process_default=process_default)
    return decode


@contextmanager
def prompt_phase() -> Iterator[int]:
    """Run the block (an admission: whole-prompt forwards) with this worker's prompt count.

    Yields the count in effect. A no-op in threads that :func:`configure_worker_threads` did
    not configure (the user's own threads) and where both counts are equal.
    """
    phase: PhaseThreads | None = getattr(_local, "phase", None)
    if phase is None or phase.prompt == phase.decode:
        yield torch.get_num_threads()
        return
    torch.set_num_threads(phase.prompt)
    try:
        yield phase.prompt
    finally:
        torch.set_num_threads(phase.decode)
        if phase.process_default != phase.decode:
            _set_new_thread_default(phase.process_default)


def _set_new_thread_default(count: int) -> None:
    """Set the thread count new threads start with, leaving the calling thread's own."""
    helper = threading.Thread(target=torch.set_num_threads, args=(count,), name="qaflora-threads-restore")
    helper.start()
    helper.join()


def _process_default_threads() -> int:
    """The thread count a newly created thread starts with (read from a fresh thread)."""
    seen: list[int] = []
    probe = threading.Thread(
        target=lambda: seen.append(torch.get_num_threads()), name="qaflora-threads-probe"
    )
    probe.start()
    probe.join()
    return seen[0]
