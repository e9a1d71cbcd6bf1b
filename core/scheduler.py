"""Requests, and the static batcher: a worker thread that runs gathered requests as one batch.

Requests from many threads (LangChain ``batch``, a web server) or asyncio
tasks are queued; the worker takes everything that arrives within a short
window (up to ``max_batch_size``) and runs it as ONE padded batch: one
preselection forward, one weighing forward, one decode loop. The model is
driven by this one thread, so no request ever shares mutable state with
another; each request's weights travel in its own rows.

This is ``scheduling="static"``; the default, iteration-level scheduler is
:mod:`qaflora.continuous`. Both start their worker with :func:`start_worker`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .config import FusionConfig, GenerationOptions
from .decoding import DecodeRow
from .errors import EngineClosedError
from .planning import Plan
from .prompting import EncodedPrompt
from .results import FusionResult, Timings, Usage
from .threads import configure_worker_threads
from .token_constraints import TokenConstraint

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One generation request waiting for, or inside, a batch."""

    prompt: EncodedPrompt
    config: FusionConfig
    options: GenerationOptions
    on_text: Callable[[str], None] | None = None
    future: Future[FusionResult] = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    constraint: TokenConstraint | None = None
    """The compiled grammar of ``options.constraint`` for this request (compiled at submission)."""


def result_of(
    job: Job,
    plan: Plan,
    row: DecodeRow,
    timings: Timings,
    model_name: str,
) -> FusionResult:
    """The answer of a finished job, whichever scheduler ran it."""
    return FusionResult(
        text=row.text,
        weights=plan.weights,
        usage=Usage(prompt_tokens=len(job.prompt.ids), completion_tokens=len(row.token_ids)),
        timings=timings,
        finish_reason=row.finish_reason or "length",
        model_name=model_name,
        token_ids=list(row.token_ids),
    )


_STOP = object()


def start_worker(
    loop: Callable[[], None], name: str, *, prompt_threads: int | None = None, widen: bool = True
) -> threading.Thread:
    """Start the thread that drives the model: the one place where an engine's worker begins.

    Both schedulers start here, so what every worker thread must do first (thread policy,
    naming, ...) goes in ``run`` and nowhere else. ``prompt_threads`` and ``widen``: its
    admission thread count (:func:`qaflora.threads.configure_worker_threads`).
    """

    def run() -> None:
        # this thread's intra-op threads, per phase (see qaflora.threads)
        configure_worker_threads(prompt_threads, widen=widen)
        loop()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


class BatchScheduler:
    def __init__(
        self,
        run_batch: Callable[[list[Job]], None],
        *,
        max_batch_size: int = 16,
        window_s: float = 0.002,
        name: str = "qaflora-worker",
        prompt_threads: int | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = threading.Event()
        self.running_rows = 0
        self.queued_jobs = 0  # submitted, not yet taken into a batch (read by engine.scheduler_state)
        self._count_lock = threading.Lock()
        self._thread = start_worker(self._loop, name, prompt_threads=prompt_threads)

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs; jobs submitted together are guaranteed to be considered for one batch."""
        if self._closed.is_set():
            raise EngineClosedError("the engine is closed")
        with self._count_lock:
            self.queued_jobs += len(jobs)
        self._queue.put(jobs)

    def close(self, timeout: float | None = 5.0) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(_STOP)
            self._thread.join(timeout)

    def _loop(self) -> None:
        pending: list[Job] = []
        while True:
            item = self._queue.get() if not pending else None
            if item is _STOP:
                break
            if item is not None:
                pending.extend(item)  # type: ignore[arg-type]
            deadline = time.perf_counter() + self.window_s
            stop = False
            while len(pending) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    item = (
                        self._queue.get(timeout=max(remaining, 0.0))
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                pending.extend(item)  # type: ignore[arg-type]
            batch, pending = pending[: self.max_batch_size], pending[self.max_batch_size :]
            with self._count_lock:
                self.queued_jobs -= len(batch)
            batch = [
                job
                for job in batch
                if not job.future.cancelled() and job.future.set_running_or_notify_cancel()
            ]
            if batch:
                self._execute(batch)
            if stop:
                break
        for job in pending:
            if not job.future.done():
                job.future.set_exception(EngineClosedError("the engine was closed before this request ran"))

    def _execute(self, batch: list[Job]) -> None:
        self.running_rows = len(batch)
        try:
            with torch.inference_mode():
                self._run_batch(batch)
        except Exception as exc:  # one bad batch must not kill the worker
            logger.exception("batch of %d request(s) failed", len(batch))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
        finally:
            self.running_rows = 0
