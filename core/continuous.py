"""Iteration-level (continuous) scheduling, as in Orca and vLLM.

The static batcher runs a gathered batch to its end, so a request that arrives while a batch
decodes waits for the whole batch. Here the worker loop works one decode step at a time:

1. take what was submitted; drop queued requests already cancelled;
2. retire running rows whose request was cancelled (disconnect, timeout): their cache rows
   are freed before the next step;
3. admit waiting requests while there are free rows (``max_rows``) and prefill budget
   (``max_prefill_tokens`` prompt tokens per step, at least one request): plan them
   (preselect + weigh, batched among the newcomers), prefill them (batched among
   themselves), choose their first token, merge their KV into the running batch;
4. run ONE decode step for every running row, stream each row's text, retire finished rows.

Bounding rows and prefill per step keeps the running rows' token rate steady while new
requests keep their time to first token low.

**Planning ahead** (``plan_ahead=True``): the planning half of admission (preselection and
the weighing pass, k+1 rows over the whole prompt) costs several times the prefill of the one
row that then decodes. A second thread, the planner, takes submitted requests and plans them
while the worker decodes; the worker only prefills planned requests and merges them. Planning
reads the model under each query's own forward context (a context variable, so the two
threads never see each other's adapters) and never touches the running batch, so the two
threads share nothing mutable but the locked prefix store. On a CPU the two threads run on two
cores (one intra-op thread each on a small machine, :mod:`qaflora.threads`): running rows keep
decoding while newcomers are weighed, and newcomers no longer wait for decode steps. Measured
on 2 cores (benchmarks/RESULTS.md §6.1): a third more tokens/s under 16 streams, but each
weighing runs slower beside the decoding worker and the TTFT tail grew, so it is off by default.

Each row keeps its own fusion weights, options, stops, budget, stream, grammar and
cancellation (:class:`~qaflora.running_batch.RunningRow`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from .admission import Admission
from .decoding import next_tokens
from .errors import EngineClosedError
from .planning import Plan
from .running_batch import RunningBatch
from .scheduler import _STOP, Job, start_worker
from .threads import prompt_phase

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    """A request waiting for a row: its job and, when the planner ran ahead, its plan."""

    job: Job
    plan: Plan | None = None
    planning_began: float | None = None  # the end of its queueing time


class ContinuousScheduler:
    """The worker thread of ``scheduling="continuous"``."""

    def __init__(
        self,
        admission: Admission,
        batch: RunningBatch,
        *,
        max_rows: int = 16,
        max_prefill_tokens: int = 2048,
        window_s: float = 0.002,
        plan_ahead: bool = False,
        name: str = "qaflora-worker",
        prompt_threads: int | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.plan_ahead = plan_ahead
        self.admission = admission
        self.batch = batch
        self.max_rows = max_rows
        self.max_prefill_tokens = max_prefill_tokens
        self.window_s = window_s
        self._queue: queue.Queue[object] = queue.Queue()  # submitted: lists of Job
        # what the worker takes: lists of Pending (planned, from the planner) or the submissions
        self._planned: queue.Queue[object] = queue.Queue() if plan_ahead else self._queue
        self._waiting: deque[Pending] = deque()
        self._closing = False
        self._stopped = False
        # counters read by state() from other threads (ints: safe to read without a lock)
        self.steps = 0
        self.admitted = 0
        self.finished = 0
        self.queued_jobs = 0
        self._count_lock = threading.Lock()
        self.running_rows = 0
        self.kv_bytes = 0
        self.prefill_tokens_run = 0
        self.prefill_tokens_reused = 0
        # Planner and worker each run model work on their own core: neither widens (env ignored).
        threads = dict(prompt_threads=prompt_threads, widen=not plan_ahead)
        self._planner = start_worker(self._plan_loop, f"{name}-planner", **threads) if plan_ahead else None
        self._thread = start_worker(self._loop, name, **threads)

    # ------------------------------------------------------------------ API (any thread)
    def submit(self, jobs: list[Job]) -> None:
        if self._closing:
            raise EngineClosedError("the engine is closed")
        with self._count_lock:
            self.queued_jobs += len(jobs)
        self._queue.put(jobs)

    def close(self, timeout: float | None = 5.0) -> None:
        if not self._closing:
            self._closing = True
            self._queue.put(_STOP)
            if self._planner is not None:
                self._planner.join(timeout)
            self._thread.join(timeout)

    # ------------------------------------------------------------------ planner (plan_ahead)
    def _plan_loop(self) -> None:
        """Plan submitted requests in arrival order and pass them on; _STOP passes last."""
        try:
            while True:
                item = self._queue.get()
                batch: list[Job] = []
                stop = item is _STOP
                if not stop:
                    batch.extend(item)  # type: ignore[arg-type]
                while not stop and len(batch) < self.max_rows:  # what else already arrived
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                    else:
                        batch.extend(item)  # type: ignore[arg-type]
                if batch:
                    self._planned.put(self._plan(batch))
                if stop:
                    return
        finally:
            self._planned.put(_STOP)

    def _plan(self, jobs: list[Job]) -> list[Pending]:
        """Plans of the live ``jobs`` (a closing engine plans nothing: the worker fails them)."""
        live = [job for job in jobs if not (job.future.cancelled() or job.cancelled.is_set())]
        began = time.perf_counter()
        if self._closing or not live:
            return [Pending(job) for job in jobs]
        try:
            with torch.inference_mode(), prompt_phase():
                plans = self.admission.plan(live)
        except Exception:  # the worker plans them itself, and reports the error per request
            logger.exception("planning %d request(s) ahead failed", len(live))
            return [Pending(job) for job in jobs]
        planned = {id(job): plan for job, plan in zip(live, plans, strict=True)}
        return [Pending(job, planned.get(id(job)), began) for job in jobs]

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        try:
            while not self._stopped:
                self._collect(block=not self.batch.rows and not self._waiting)
                if self._stopped:
                    break
                with torch.inference_mode():
                    self._retire_cancelled()
                    self._admit()
                    if self.batch.rows:
                        self._step()
                self._publish()
        finally:
            self._fail_all()

    def _collect(self, block: bool) -> None:
        """Move submitted jobs to the waiting line; when idle, wait for one, then a short window."""
        source = self._planned
        deadline = None
        while True:
            try:
                if block and deadline is None:
                    item = source.get()
                    deadline = time.perf_counter() + self.window_s
                elif deadline is not None and (left := deadline - time.perf_counter()) > 0:
                    item = source.get(timeout=left)
                else:
                    item = source.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._stopped = True
                return
            self._waiting.extend(_pending(item))

    def _retire_cancelled(self) -> None:
        keep, gone = [], []
        for index, item in enumerate(self.batch.rows):
            if item.job.cancelled.is_set():
                gone.append(item)
            else:
                keep.append(index)
        if not gone:
            return
        self.batch.keep(keep)
        self.finished += len(gone)
        self._publish()
        now = time.perf_counter()
        for item in gone:
            item.row.finish_reason = item.row.finish_reason or "stop"
            self.admission.finish(item, now)

    def _take(self) -> list[Pending]:
        """Waiting jobs to admit now: FIFO, within free rows and the prefill budget."""
        free = self.max_rows - len(self.batch.rows)
        chosen: list[Pending] = []
        tokens = 0
        while self._waiting and len(chosen) < free:
            pending = self._waiting[0]
            job = pending.job
            if job.future.cancelled() or job.cancelled.is_set():
                self._waiting.popleft()
                self._dequeued()
                if not job.future.done():
                    job.future.cancel()
                continue
            size = len(job.prompt.ids)
            if chosen and tokens + size > self.max_prefill_tokens:
                break
            self._waiting.popleft()
            self._dequeued()
            if job.future.set_running_or_notify_cancel():
                chosen.append(pending)
                tokens += size
        return chosen

    def _dequeued(self) -> None:
        with self._count_lock:
            self.queued_jobs -= 1

    def _admit(self) -> None:
        chosen = self._take()
        if not chosen:
            return
        jobs = [pending.job for pending in chosen]
        self.admitted += len(jobs)
        try:
            with prompt_phase():  # whole-prompt forwards: every core the policy gives admissions
                if all(pending.plan is not None for pending in chosen):
                    began = min(p.planning_began for p in chosen if p.planning_began is not None)
                    plans = [pending.plan for pending in chosen]
                    admitted = self.admission.admit(jobs, len(self.batch.rows), plans, began)  # type: ignore[arg-type]
                else:
                    admitted = self.admission.admit(jobs, len(self.batch.rows))
        except Exception as exc:  # these newcomers fail; the running rows go on
            logger.exception("admitting %d request(s) failed", len(jobs))
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            self.finished += len(jobs)
            return
        self.finished += len(jobs) - len(admitted.joining)
        self.prefill_tokens_run += admitted.prompt_tokens_run
        self.prefill_tokens_reused += admitted.prompt_tokens_reused
        try:
            self.batch.join(admitted.joining)
        except Exception as exc:
            logger.exception("merging %d request(s) into the batch failed", len(admitted.joining))
            for item, _, _ in admitted.joining:
                if not item.job.future.done():
                    item.job.future.set_exception(exc)

    def _step(self) -> None:
        rows = self.batch.rows
        try:
            logits = self.batch.step()
            tokens = next_tokens(logits, [item.row for item in rows])
        except Exception as exc:  # a failed forward fails the rows in it, not the worker
            logger.exception("decode step over %d row(s) failed", len(rows))
            for item in rows:
                if not item.job.future.done():
                    item.job.future.set_exception(exc)
            self.finished += len(rows)
            self.batch.keep([])
            return
        self.steps += 1
        keep = []
        done = []
        for index, (item, token) in enumerate(zip(rows, tokens, strict=True)):
            if self.admission.advance(item, token):
                keep.append(index)
            else:
                done.append(item)
        self.batch.keep(keep)
        self.finished += len(done)
        self._publish()
        now = time.perf_counter()
        for item in done:  # answered after leaving the batch: a caller that sees its answer sees the row gone
            self.admission.finish(item, now)

    def _publish(self) -> None:
        self.running_rows = len(self.batch.rows)
        self.kv_bytes = self.batch.nbytes()

    def _fail_all(self) -> None:
        for item in self.batch.rows:
            if not item.job.future.done():
                item.job.future.set_exception(
                    EngineClosedError("the engine was closed while this request ran")
                )
        self.batch.keep([])
        for source in {id(q): q for q in (self._queue, self._planned)}.values():
            while True:
                try:
                    item = source.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    self._waiting.extend(_pending(item))
        for pending in self._waiting:
            job = pending.job
            if not job.future.done():
                job.future.set_exception(EngineClosedError("the engine was closed before this request ran"))
        self._waiting.clear()
        with self._count_lock:
            self.queued_jobs = 0
        self._publish()


def _pending(item: object) -> list[Pending]:
    """A queue item as Pending requests: the planner sends Pending, submitters send Jobs."""
    return [entry if isinstance(entry, Pending) else Pending(entry) for entry in item]  # type: ignore[attr-defined]
