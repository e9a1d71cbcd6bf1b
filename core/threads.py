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
"""

from __future__ import annotations

import logging
import os
import threading
import warnings

import torch

logger = logging.getLogger(__name__)

ENV_VAR = "QAFLORA_NUM_THREADS"
USER_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Up to this many usable cores the worker runs single-threaded by default (measured on 2 cores).
SMALL_CPU_CORES = 2


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity, e.g. ``taskset`` or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _requested_threads() -> int | None:
    """``QAFLORA_NUM_THREADS`` as a positive int; None when unset, empty or ``auto``."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw or raw.lower() == "auto":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        message = f"{ENV_VAR}={raw!r} is not a positive integer; ignoring it and using the default policy"
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


def configure_worker_threads() -> int:
    """Apply :func:`worker_threads` to the calling (worker) thread only; return its thread count.

    Called once by the engine's worker thread when it starts. Other threads keep theirs.
    """
    wanted = worker_threads()
    if wanted is None or wanted == torch.get_num_threads():
        return torch.get_num_threads()
    process_default = _process_default_threads()
    torch.set_num_threads(wanted)  # this thread's OpenMP team and MKL count ...
    restore = threading.Thread(  # ... and, as a side effect, the default of new threads: undo that
        target=torch.set_num_threads, args=(process_default,), name="qaflora-threads-restore"
    )
    restore.start()
    restore.join()
    logger.debug("worker thread uses %d intra-op thread(s); other threads keep %d", wanted, process_default)
    return torch.get_num_threads()


def _process_default_threads() -> int:
    """The thread count a newly created thread starts with (read from a fresh thread)."""
    seen: list[int] = []
    probe = threading.Thread(
        target=lambda: seen.append(torch.get_num_threads()), name="qaflora-threads-probe"
    )
    probe.start()
    probe.join()
    return seen[0]
