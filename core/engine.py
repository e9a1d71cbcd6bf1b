"""The fusion engine: one base model, a catalog of LoRA adapters, fused answers per query.

    engine = FusionEngine.from_pretrained("path/to/base", AdapterCatalog.from_file("adapters.yaml"))
    engine.fusion_weights("Solve 12+7, answer in Russian").matrix   # [n_adapters, n_layers]
    engine.generate([{"role": "user", "content": "..."}], max_new_tokens=64).text

Generation requests go through a worker thread that batches them: by default
iteration-level (:mod:`qaflora.continuous`: requests join and leave the running
batch at every decode step, prompt prefixes are reused), or the static batcher
(:mod:`qaflora.scheduler`, ``scheduling="static"``: a gathered batch runs to its
end). ``fusion_weights`` runs in the caller's thread. Bad input raises in the
caller's thread before anything is queued, and an error inside one request never
poisons the engine for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from . import kv_cache
from .adapters import LoadedModel, load_fused_model
from .admission import Admission
from .catalog import AdapterCatalog, AdapterEntry
from .config import FusionConfig, GenerationOptions, OutputConstraint, split_call_options
from .constrained import GrammarCompiler, GrammarConstraint
from .continuous import ContinuousScheduler
from .decoding import DecodeRow, decode_batch, eos_token_ids
from .errors import ConfigError, EngineClosedError, RequestTimeoutError
from .fused_lora import activate
from .planning import PlanItem, plan_batch, validate_config
from .prefix_cache import PrefixCache
from .preselect import CONTENT_FREE_TEXT
from .prompting import EncodedPrompt, PromptFormatter, Query
from .results import EngineLoad, FusionResult, FusionWeights, SchedulerState, StreamEvent, Timings
from .running_batch import RunningBatch
from .scheduler import BatchScheduler, Job, result_of
from .threads import prompt_phase
from .weighing import install_layer_hooks

logger = logging.getLogger(__name__)

_DONE = object()

Scheduling = Literal["continuous", "static"]


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _cancel(job: Job) -> None:
    """Cancel a queued job outright, or make a running one stop at its next token."""
    job.future.cancel()
    job.cancelled.set()


class FusionEngine:
    """Query-adaptive, per-layer LoRA fusion over a Hugging Face causal LM.

    Serving options:

    * ``scheduling``: ``"continuous"`` (default; iteration-level batching, prefix reuse) or
      ``"static"`` (the gathered batch runs to its end; kept to compare and to bisect). A model
      whose KV cache cannot be split and merged by rows falls back to ``"static"``
      (``engine.scheduling`` says which one runs);
    * ``max_batch_size``: most requests decoding at once (rows of the running batch);
    * ``batch_window_ms``: how long an idle worker waits for more requests to arrive with the first;
    * ``prefix_cache_mb``: byte budget of the prefix cache (KV of prompt prefixes, LRU; 0 = off);
    * ``prefill_block``: prefill chunk and cache block size in tokens (prefills always end
      chunks at multiples of it, so reused prefixes give exactly what a full prefill gives).
      ``None``: 128 on CPU, 512 on an accelerator (smaller chunks cost matmul efficiency and
      per-forward overhead: measured on CPU, 32-token chunks made a 128-token prefill 1.5-1.9x
      slower, 128-token chunks cost nothing; smaller blocks reuse finer);
    * ``max_prefill_tokens``: prompt tokens admitted per decode step (at least one request), so
      running rows keep a steady token rate while newcomers are prefilled;
    * ``plan_ahead``: plan newcomers (preselection, weighing) on a second thread while the
      worker decodes (:mod:`qaflora.continuous`). Off by default: on the 2-core CPU it was
      measured on it raised throughput under 16 streams by a third but slowed each weighing
      and worsened the TTFT tail (benchmarks/RESULTS.md §6.1). On a CPU it needs a core
      of its own for the planner's intra-op threads.
    * ``prompt_threads``: intra-op threads of the worker's admissions (planning and prefill;
      decode steps keep the worker's own count; llama.cpp's ``--threads-batch``). ``None``:
      ``QAFLORA_PROMPT_THREADS``, else the worker's count (:mod:`qaflora.threads`: on 2 cores a
      wider admission sped up an idle engine's first token and worsened the TTFT tail under 16
      streams). With ``plan_ahead`` both threads keep one count.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        config: FusionConfig | None = None,
        generation: GenerationOptions | None = None,
        max_batch_size: int = 16,
        batch_window_ms: float = 2.0,
        model_name: str | None = None,
        scheduling: Scheduling = "continuous",
        prefix_cache_mb: float = 256.0,
        prefill_block: int | None = None,
        max_prefill_tokens: int = 2048,
        plan_ahead: bool = False,
        prompt_threads: int | None = None,
    ) -> None:
        if scheduling not in ("continuous", "static"):
            raise ConfigError(f"scheduling must be 'continuous' or 'static', not {scheduling!r}")
        if plan_ahead and scheduling == "static":
            raise ConfigError("plan_ahead needs scheduling='continuous' (the static batcher plans per batch)")
        if prefill_block is None:
            prefill_block = 128 if loaded.model.device.type == "cpu" else 512
        if prompt_threads is not None and prompt_threads < 1:
            raise ConfigError(f"prompt_threads must be >= 1 or None (the policy), not {prompt_threads!r}")
        if max_batch_size < 1 or prefill_block < 1 or max_prefill_tokens < 1 or prefix_cache_mb < 0:
            raise ConfigError(
                "max_batch_size, prefill_block and max_prefill_tokens must be >= 1, prefix_cache_mb >= 0"
            )
        self.loaded = loaded
        self.config = config or FusionConfig()
        self.generation = generation or GenerationOptions()
        self.model_name = model_name or Path(loaded.base_path.rstrip("/")).name or "qaflora"
        self.formatter = PromptFormatter(loaded.tokenizer, loaded.anatomy.context_window)
        self._hooks = install_layer_hooks(loaded)
        validate_config(loaded, self.config)
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20), prefill_block)
        self._scheduler: BatchScheduler | ContinuousScheduler
        self.scheduling: Scheduling = scheduling
        layout = None
        if scheduling == "continuous":
            try:
                layout = kv_cache.probe_layout(loaded.model)
            except kv_cache.UnsupportedCacheError as exc:
                logger.info("continuous scheduling unavailable (%s); using the static batcher", exc)
                self.scheduling = "static"
        if layout is not None:
            admission = Admission(
                loaded,
                layout,
                self.prefix_cache,
                block=prefill_block,
                context_window=self.context_window,
                model_name=self.model_name,
                content_free=lambda configs: self._content_free_if(*configs),
            )
            self._scheduler = ContinuousScheduler(
                admission,
                RunningBatch(loaded, layout),
                max_rows=max_batch_size,
                max_prefill_tokens=max_prefill_tokens,
                window_s=batch_window_ms / 1000.0,
                plan_ahead=plan_ahead,
                prompt_threads=prompt_threads,
            )
        else:
            self._scheduler = BatchScheduler(
                self._run_batch,
                max_batch_size=max_batch_size,
                window_s=batch_window_ms / 1000.0,
                prompt_threads=prompt_threads,
            )
        self._closed = False
        self._live_lock = threading.Lock()
        self._live: dict[int, Job] = {}  # submitted and not yet finished, by id(job)
        self._grammars: GrammarCompiler | None = None
        self._grammar_error: str | None = None  # why this tokenizer cannot be constrained
        self._grammars_lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        base_path: str | Path,
        catalog: AdapterCatalog | str | Path,
        *,
        config: FusionConfig | None = None,
        generation: GenerationOptions | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        progress: bool = True,
        strict_base: bool = False,
        **engine_kwargs: Any,
    ) -> FusionEngine:
        """Load the base model and every enabled catalog adapter (``catalog`` may be a file path).

        ``strict_base=True``: an adapter that names another base model is an error, not a warning.
        """
        if not isinstance(catalog, AdapterCatalog):
            catalog = AdapterCatalog.from_file(catalog)
        loaded = load_fused_model(
            base_path, catalog, device=device, dtype=dtype, progress=progress, strict_base=strict_base
        )
        return cls(loaded, config=config, generation=generation, **engine_kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def adapter_names(self) -> list[str]:
        return list(self.loaded.bank.adapter_names)

    @property
    def adapters(self) -> list[AdapterEntry]:
        return list(self.loaded.entries)

    @property
    def num_layers(self) -> int:
        return self.loaded.anatomy.num_layers

    @property
    def context_window(self) -> int | None:
        return self.loaded.anatomy.context_window

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def model(self):
        return self.loaded.model

    @property
    def device(self) -> torch.device:
        return self.loaded.model.device

    # ------------------------------------------------------------------ requests
    @cached_property
    def content_free_prompt(self) -> EncodedPrompt:
        """The reference prompt of calibrated LoGo preselection: 'N/A' in the queries' chat template."""
        return self.formatter.encode([{"role": "user", "content": CONTENT_FREE_TEXT}])

    @property
    def grammars(self) -> GrammarCompiler:
        """Compiles output constraints for this model's tokenizer (built at the first constrained request)."""
        with self._grammars_lock:
            if self._grammar_error is not None:  # found once: a tokenizer does not change
                raise ConfigError(self._grammar_error)
            if self._grammars is None:
                head = self.loaded.model.get_output_embeddings()
                width = head.weight.shape[0] if head is not None else len(self.tokenizer)
                try:
                    self._grammars = GrammarCompiler(self.tokenizer, int(width), eos_token_ids(self.loaded))
                except ConfigError as exc:
                    self._grammar_error = str(exc)
                    raise
            return self._grammars

    @property
    def supports_constraints(self) -> bool:
        """Whether grammar-constrained decoding can read this model's tokenizer.

        llguidance needs to know every token's bytes: byte-level BPE and SentencePiece
        tokenizers qualify; word-level ones whose decoder joins words with spaces (the demo
        zoo's) do not. Callers that only *prefer* a constraint (tool calls under ``auto``)
        skip it where this is False; a required one fails with a ConfigError naming the cause.
        """
        try:
            _ = self.grammars
        except ConfigError:
            return False
        return True

    def compile_constraint(
        self,
        constraint: OutputConstraint | dict[str, Any],
        *,
        max_new_tokens: int | None = None,
        assistant_prefix: str | None = None,
    ) -> GrammarConstraint:
        """A per-request grammar state for ``constraint`` (raises :class:`ConfigError` if it cannot be
        enforced). ``max_new_tokens`` lets it close the output before the budget runs out."""
        if not isinstance(constraint, OutputConstraint):
            try:
                constraint = OutputConstraint.model_validate(constraint)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        return self.grammars.constraint(constraint, budget=max_new_tokens, prefix=assistant_prefix)

    def _content_free_if(self, *configs: FusionConfig) -> EncodedPrompt | None:
        needed = any(c.logo_calibration == "content_free" for c in configs)
        return self.content_free_prompt if needed else None

    def encode(
        self,
        query: Query,
        *,
        formatted: bool = False,
        tools: list[dict] | None = None,
        assistant_prefix: str | None = None,
    ) -> EncodedPrompt:
        """The exact token ids the model will see for ``query`` (raises on bad input)."""
        return self.formatter.encode(
            query, formatted=formatted, tools=tools, assistant_prefix=assistant_prefix
        )

    def resolve_options(
        self,
        config: FusionConfig | None = None,
        generation: GenerationOptions | None = None,
        **overrides: Any,
    ) -> tuple[FusionConfig, GenerationOptions]:
        """Engine defaults <- explicit config objects <- keyword overrides, validated."""
        fusion_overrides, generation_overrides = split_call_options(overrides)
        fusion = (config or self.config).merged(**fusion_overrides)
        options = (generation or self.generation).merged(**generation_overrides)
        validate_config(self.loaded, fusion)
        return fusion, options

    def fusion_weights(
        self,
        query: Query,
        *,
        formatted: bool = False,
        config: FusionConfig | None = None,
        **overrides: Any,
    ) -> FusionWeights:
        """Per-layer fusion weights of ``query`` (computed now, in this thread)."""
        return self.fusion_weights_batch([query], formatted=formatted, config=config, **overrides)[0]

    def fusion_weights_batch(
        self,
        queries: Sequence[Query],
        *,
        formatted: bool = False,
        config: FusionConfig | None = None,
        **overrides: Any,
    ) -> list[FusionWeights]:
        """Weights of several queries, batched into shared forwards."""
        self._check_open()
        fusion, _ = self.resolve_options(config, None, **overrides)
        prompts = [self.encode(q, formatted=formatted) for q in queries]
        with torch.inference_mode():
            items = [PlanItem(p, fusion) for p in prompts]
            plans = plan_batch(self.loaded, items, self._content_free_if(fusion))
        for plan in plans:
            if plan.error is not None:
                raise plan.error
        return [plan.weights for plan in plans]

    def next_token_logits(
        self,
        query: Query,
        *,
        formatted: bool = False,
        config: FusionConfig | None = None,
        **overrides: Any,
    ) -> tuple[torch.Tensor, FusionWeights]:
        """Logits of the next token after ``query`` under its fused adapters, and the weights used.

        For scoring answers (likelihood evaluation) and for checking the fused
        forward against a reference; runs in this thread.
        """
        self._check_open()
        fusion, _ = self.resolve_options(config, None, **overrides)
        prompt = self.encode(query, formatted=formatted)
        with torch.inference_mode():
            plan = plan_batch(self.loaded, [PlanItem(prompt, fusion)], self._content_free_if(fusion))[0]
            if plan.error is not None:
                raise plan.error
            ids = torch.tensor([prompt.ids], device=self.device)
            with activate(self.loaded.bank.context(plan.adapters, plan.weights.matrix.unsqueeze(0))):
                out = self.loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return out.logits[0, -1].float().cpu(), plan.weights

    def generate(
        self,
        query: Query,
        *,
        formatted: bool = False,
        tools: list[dict] | None = None,
        assistant_prefix: str | None = None,
        config: FusionConfig | None = None,
        generation: GenerationOptions | None = None,
        timeout: float | None = None,
        **overrides: Any,
    ) -> FusionResult:
        """Answer ``query`` with fused adapters.

        Keyword overrides: any :class:`FusionConfig` or :class:`GenerationOptions` field.
        ``assistant_prefix`` is written at the start of the answer (the model continues it;
        it is not part of ``result.text``). ``timeout`` (seconds) cancels the request and
        raises :class:`RequestTimeoutError` when exceeded.
        """
        job = self._job(query, formatted, tools, assistant_prefix, config, generation, overrides)
        self._submit([job])
        return self._wait(job, timeout)

    def generate_batch(
        self,
        queries: Sequence[Query],
        *,
        formatted: bool = False,
        config: FusionConfig | None = None,
        generation: GenerationOptions | None = None,
        per_query: Sequence[dict[str, Any]] | None = None,
        timeout: float | None = None,
        **overrides: Any,
    ) -> list[FusionResult]:
        """Answer several queries in shared batches (each with its own fusion weights).

        ``per_query``: optional overrides for each query (e.g. its own candidate
        ``adapters`` or ``mode``), applied on top of the shared ``overrides``.
        """
        if per_query is not None and len(per_query) != len(queries):
            raise ConfigError(f"per_query has {len(per_query)} entries for {len(queries)} queries")
        extra = per_query or [{}] * len(queries)
        jobs = [
            self._job(q, formatted, None, None, config, generation, {**overrides, **own})
            for q, own in zip(queries, extra, strict=True)
        ]
        self._submit(jobs)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return [self._wait(job, _remaining(deadline)) for job in jobs]
        finally:
            for job in jobs:
                if not job.future.done():
                    _cancel(job)

    def stream(
        self,
        query: Query,
        *,
        formatted: bool = False,
        tools: list[dict] | None = None,
        assistant_prefix: str | None = None,
        config: FusionConfig | None = None,
        generation: GenerationOptions | None = None,
        timeout: float | None = None,
        **overrides: Any,
    ) -> Iterator[StreamEvent]:
        """Yield text pieces as they are generated; the last event carries the full result.

        Stop strings are never streamed: text that may turn into one is held
        back until decided. Closing the iterator early cancels the request.
        """
        pieces: queue.Queue[object] = queue.Queue()
        job = self._job(
            query, formatted, tools, assistant_prefix, config, generation, overrides, on_text=pieces.put
        )
        job.future.add_done_callback(lambda _f: pieces.put(_DONE))
        self._submit([job])
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    item = pieces.get(timeout=_remaining(deadline))
                except queue.Empty:
                    raise RequestTimeoutError(timeout) from None
                if item is _DONE:
                    break
                yield StreamEvent(text=item)  # type: ignore[arg-type]
            yield StreamEvent(text="", result=job.future.result())
        finally:
            if not job.future.done():
                _cancel(job)

    async def agenerate(
        self,
        query: Query,
        *,
        formatted: bool = False,
        tools: list[dict] | None = None,
        assistant_prefix: str | None = None,
        config: FusionConfig | None = None,
        generation: GenerationOptions | None = None,
        timeout: float | None = None,
        **overrides: Any,
    ) -> FusionResult:
        """Async :meth:`generate`: the event loop is free while the worker generates."""
        job = self._job(query, formatted, tools, assistant_prefix, config, generation, overrides)
        self._submit([job])
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.future)), timeout)
        except asyncio.TimeoutError:
            _cancel(job)
            raise RequestTimeoutError(timeout) from None
        except asyncio.CancelledError:
            _cancel(job)
            raise

    async def astream(
        self,
        query: Query,
        *,
        formatted: bool = False,
        tools: list[dict] | None = None,
        assistant_prefix: str | None = None,
        config: FusionConfig | None = None,
        generation: GenerationOptions | None = None,
        timeout: float | None = None,
        **overrides: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Async :meth:`stream`; pieces are handed to the event loop as the worker produces them."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[object] = asyncio.Queue()

        def deliver(item: object) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, item)

        job = self._job(
            query, formatted, tools, assistant_prefix, config, generation, overrides, on_text=deliver
        )
        job.future.add_done_callback(lambda _f: deliver(_DONE))
        self._submit([job])
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    item = await asyncio.wait_for(pieces.get(), _remaining(deadline))
                except asyncio.TimeoutError:
                    raise RequestTimeoutError(timeout) from None
                if item is _DONE:
                    break
                yield StreamEvent(text=item)  # type: ignore[arg-type]
            yield StreamEvent(text="", result=job.future.result())
        finally:
            if not job.future.done():
                _cancel(job)

    # ------------------------------------------------------------------ serving state
    @property
    def plans_ahead(self) -> bool:
        """Whether a planner thread weighs newcomers while the worker decodes (``plan_ahead``)."""
        return isinstance(self._scheduler, ContinuousScheduler) and self._scheduler.plan_ahead

    def scheduler_state(self) -> SchedulerState:
        """A cheap snapshot of the worker: running rows, queued jobs, KV and prefix-cache bytes."""
        scheduler = self._scheduler
        cache = self.prefix_cache.stats()
        state = SchedulerState(
            scheduling=self.scheduling,
            running_rows=scheduler.running_rows,
            queued_jobs=max(0, scheduler.queued_jobs),
            cache_limit_bytes=cache.max_bytes if isinstance(scheduler, ContinuousScheduler) else 0,
        )
        if isinstance(scheduler, ContinuousScheduler):
            state = state.model_copy(
                update={
                    "kv_bytes": scheduler.kv_bytes,
                    "cached_bytes": cache.bytes,
                    "cached_blocks": cache.entries,
                    "cache_hit_blocks": cache.hits,
                    "conversations": len(scheduler.admission.conversations),
                    "steps": scheduler.steps,
                    "admitted": scheduler.admitted,
                    "finished": scheduler.finished,
                    "prefill_tokens_run": scheduler.prefill_tokens_run,
                    "prefill_tokens_reused": scheduler.prefill_tokens_reused,
                    "weigh_tokens_run": scheduler.admission.weigher.tokens_run,
                    "weigh_tokens_reused": scheduler.admission.weigher.tokens_reused,
                }
            )
        return state

    def clear_prefix_cache(self) -> None:
        """Forget stored prompt prefixes and conversation weights (answers stay the same)."""
        self.prefix_cache.clear()
        if isinstance(self._scheduler, ContinuousScheduler):
            self._scheduler.admission.conversations.clear()

    def load(self) -> EngineLoad:
        """How many requests wait for a batch and how many are being generated, right now.

        Read-only, for servers and monitoring: a cancelled request leaves this count when
        its generation has actually stopped, so it tells whether a slot was freed.
        """
        with self._live_lock:
            jobs = [job for job in self._live.values() if not job.future.done()]
        running = sum(1 for job in jobs if job.future.running())
        return EngineLoad(queued=len(jobs) - running, running=running)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the worker; pending requests fail with :class:`EngineClosedError`."""
        if not self._closed:
            self._closed = True
            self._scheduler.close()
            for handle in self._hooks:
                handle.remove()

    def __enter__(self) -> FusionEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._scheduler.close(timeout=0.1)

    def __repr__(self) -> str:
        return (
            f"FusionEngine(model={self.model_name!r}, adapters={self.adapter_names}, "
            f"layers={self.num_layers}, device={self.device})"
        )

    # ------------------------------------------------------------------ internals
    @property
    def closed(self) -> bool:
        return self._closed

    def _wait(self, job: Job, timeout: float | None) -> FusionResult:
        try:
            return job.future.result(timeout)
        except FutureTimeoutError:
            _cancel(job)
            raise RequestTimeoutError(timeout) from None

    def _submit(self, jobs: list[Job]) -> None:
        """Hand jobs to the worker, counting them in :meth:`load` until their future is done."""
        with self._live_lock:
            self._live.update((id(job), job) for job in jobs)
        for job in jobs:
            job.future.add_done_callback(self._forgetter(id(job)))
        try:
            self._scheduler.submit(jobs)
        except BaseException:
            for job in jobs:
                self._forget(id(job))
            raise

    def _forgetter(self, key: int) -> Any:
        return lambda _future: self._forget(key)

    def _forget(self, key: int) -> None:
        with self._live_lock:
            self._live.pop(key, None)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")

    def _job(
        self,
        query: Query,
        formatted: bool,
        tools: list[dict] | None,
        assistant_prefix: str | None,
        config: FusionConfig | None,
        generation: GenerationOptions | None,
        overrides: dict[str, Any],
        on_text: Any = None,
    ) -> Job:
        """Validate everything that can be validated now, in the caller's thread."""
        self._check_open()
        fusion, options = self.resolve_options(config, generation, **overrides)
        prompt = self.encode(query, formatted=formatted, tools=tools, assistant_prefix=assistant_prefix)
        constraint = None
        if options.constraint is not None:  # compiled here, so a bad schema fails before queueing
            constraint = self.compile_constraint(
                options.constraint, max_new_tokens=options.max_new_tokens, assistant_prefix=assistant_prefix
            )
        return Job(prompt=prompt, config=fusion, options=options, on_text=on_text, constraint=constraint)

    def _run_batch(self, jobs: list[Job]) -> None:
        """Static batcher: plan every job (batched), then decode the runnable ones together."""
        started = time.perf_counter()
        with prompt_phase():
            plans = plan_batch(
                self.loaded,
                [PlanItem(job.prompt, job.config) for job in jobs],
                self._content_free_if(*(job.config for job in jobs)),
            )
        runnable: list[tuple[Job, Any, DecodeRow]] = []
        for job, plan in zip(jobs, plans, strict=True):
            if plan.error is not None:
                job.future.set_exception(plan.error)
                continue
            row = DecodeRow(
                prompt_ids=job.prompt.ids,
                options=job.options,
                adapters=plan.adapters,
                weights=plan.weights.matrix,
                on_text=job.on_text,
                is_cancelled=job.cancelled.is_set,
                constraint=job.constraint,
            )
            runnable.append((job, plan, row))
        if not runnable:
            return
        rows = [row for _, _, row in runnable]
        timings = decode_batch(self.loaded, rows, self.context_window, prompt_phase)
        for job, plan, row in runnable:
            if row.error is not None:  # its grammar failed: this request fails, the batch goes on
                job.future.set_exception(row.error)
                continue
            result = result_of(
                job,
                plan,
                row,
                Timings(
                    preselect=plan.preselect_s,
                    weigh=plan.weigh_s,
                    prefill=timings.prefill,
                    decode=timings.decode,
                    queued=started - job.submitted_at,
                    batch_size=len(runnable),
                    first_token=max(0.0, timings.first_token_at - job.submitted_at),
                ),
                self.model_name,
            )
            job.future.set_result(result)
