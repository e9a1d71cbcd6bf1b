"""Admitting requests into the running batch: weigh them, prefill them, choose their first token.

Newcomers admitted at one step are planned together (one batched preselection, one
batched weighing pass over their new tokens) and prefilled together (canonical chunks,
:mod:`qaflora.prefill`), reusing stored prefixes (:mod:`qaflora.reuse`). Each gets its first
token from its own prefill logits, under its own options and grammar; the time to first
token ends there. Rows that are already finished (a one-token budget, an immediate stop)
are answered at once; the others go to the running batch with their prompt KV.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .adapters import LoadedModel
from .config import FusionConfig
from .decoding import (
    DecodeRow,
    TextTracker,
    advance_row,
    eos_token_ids,
    new_generator,
    next_tokens,
    token_budget,
    weights_tensor,
)
from .kv_cache import CacheLayout, LayerKV
from .planning import Plan, PlanItem, plan_batch
from .prefill import PrefillRow, prefill_rows
from .prefix_cache import PrefixCache
from .prompting import EncodedPrompt
from .results import Timings
from .reuse import ConversationWeights, ReusingWeigher, cached_prefix, fused_namespace, remember_blocks
from .running_batch import RunningRow
from .scheduler import Job, result_of

logger = logging.getLogger(__name__)


@dataclass
class Admitted:
    """What one admission step produced: rows for the running batch (with their prompt KV)."""

    joining: list[tuple[RunningRow, list[LayerKV], int]]
    prompt_tokens_run: int = 0
    prompt_tokens_reused: int = 0


class Admission:
    """The model work of admitting newcomers (runs on the worker thread only)."""

    def __init__(
        self,
        loaded: LoadedModel,
        layout: CacheLayout,
        store: PrefixCache,
        *,
        block: int,
        context_window: int | None,
        model_name: str,
        content_free: Callable[[list[FusionConfig]], EncodedPrompt | None],
    ) -> None:
        self.loaded = loaded
        self.layout = layout
        self.store = store
        self.block = block
        self.context_window = context_window
        self.model_name = model_name
        self.content_free = content_free
        self.weigher = ReusingWeigher(layout, store, block)
        self.conversations = ConversationWeights()
        self.eos = eos_token_ids(loaded)

    def finish(self, item: RunningRow, now: float | None = None) -> None:
        """Answer a finished row's job."""
        now = time.perf_counter() if now is None else now
        timings = Timings(
            preselect=item.plan.preselect_s,
            weigh=item.plan.weigh_s,
            prefill=item.prefill_s,
            decode=max(0.0, now - item.first_token_at),
            queued=item.admitted_at - item.job.submitted_at,
            batch_size=item.batch_size,
            first_token=item.first_token_at - item.job.submitted_at,
        )
        if item.job.future.done():
            return
        if item.row.error is not None:  # its grammar failed: this request fails, the batch goes on
            item.job.future.set_exception(item.row.error)
        else:
            item.job.future.set_result(result_of(item.job, item.plan, item.row, timings, self.model_name))

    def admit(
        self,
        jobs: list[Job],
        running_rows: int,
        plans: list[Plan] | None = None,
        admitted_at: float | None = None,
    ) -> Admitted:
        """Prefill and start ``jobs`` (futures already marked running), planning them first unless
        ``plans`` (from :meth:`plan`, run ahead on the planner thread) are given.

        ``admitted_at``: when the requests' model work began (the planner's start, when it
        planned them), the end of their queueing time.
        """
        admitted_at = time.perf_counter() if admitted_at is None else admitted_at
        plans = self.plan(jobs) if plans is None else plans
        items: list[RunningRow] = []
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
            row.generator = new_generator(job.options, self.loaded.model.device)
            item = RunningRow(
                job=job,
                plan=plan,
                row=row,
                tracker=TextTracker(self.loaded.tokenizer, job.options.stop),
                budget=token_budget(row, self.context_window),
                admitted_at=admitted_at,
            )
            if item.budget == 0:  # nothing to generate: answer without running the model
                item.first_token_at = time.perf_counter()
                if not self.advance(item, -1):
                    self.finish(item)
                continue
            items.append(item)
        if not items:
            return Admitted([])

        namespaces = [fused_namespace(i.plan.adapters, i.plan.weights.matrix) for i in items]
        prows = []
        for index, (item, namespace) in enumerate(zip(items, namespaces, strict=True)):
            ids = list(item.job.prompt.ids)
            past, start = cached_prefix(self.loaded, self.layout, self.store, namespace, ids)
            prows.append(
                PrefillRow(
                    ids=ids, group=tuple(sorted(item.plan.adapters)), tag=index, past=past, start=start
                )
            )

        def context_of(chunk: list[PrefillRow]):
            union, weights = weights_tensor([items[r.tag].row for r in chunk], self.loaded.anatomy.num_layers)
            return self.loaded.bank.context(union, weights, isolate_rows=True)

        prefill_s = prefill_rows(self.loaded, self.layout, prows, self.block, context_of)
        for prow, namespace in zip(prows, namespaces, strict=True):
            remember_blocks(self.layout, self.store, namespace, prow)

        logits = torch.stack([p.logits for p in prows])  # type: ignore[misc]
        tokens = next_tokens(logits, [item.row for item in items])
        now = time.perf_counter()
        joining: list[tuple[RunningRow, list[LayerKV], int]] = []
        for item, prow, token in zip(items, prows, tokens, strict=True):
            item.first_token_at = now
            item.prefill_s = prefill_s
            if self.advance(item, token):
                assert prow.layers is not None
                joining.append((item, prow.layers, len(prow.ids)))
            else:
                self.finish(item)
        for item, _, _ in joining:
            item.batch_size = running_rows + len(joining)
        return Admitted(
            joining,
            prompt_tokens_run=sum(p.computed for p in prows),
            prompt_tokens_reused=sum(p.start for p in prows),
        )

    def advance(self, item: RunningRow, token: int) -> bool:
        """Apply a chosen token to a row. True while the row goes on; False when it is done
        (finished: call :meth:`finish` once it has left the batch; or failed: its job already
        holds the exception)."""
        try:
            advance_row(item.row, token, item.tracker, item.budget, self.eos, item.job.cancelled.is_set())
        except Exception as exc:  # a grammar refusing the token, a consumer gone: this row only
            logger.debug("row failed", exc_info=True)
            if not item.job.future.done():
                item.job.future.set_exception(exc)
            return False
        if item.row.finish_reason is not None:
            return False
        item.next_token = token
        return True

    def plan(self, jobs: list[Job]) -> list[Plan]:
        """Preselect and weigh ``jobs`` (batched); a query's error is returned in its Plan.

        Touches only the model (read-only, under each query's own forward context), the prefix
        store (locked) and the conversation weights (locked), never the running batch: so it may
        run on a thread of its own while the worker decodes (``ContinuousScheduler``'s planner).
        """
        plans: list[Plan | None] = [None] * len(jobs)
        for index, job in enumerate(jobs):
            if job.config.conversation_weights == "once":
                known = self.conversations.find(_config_key(job.config), job.prompt.text)
                if known is not None:  # a copy: a caller editing its result must not edit the next turn's
                    weights = known.weights.model_copy(update={"matrix": known.weights.matrix.clone()})
                    plans[index] = replace(known, weights=weights, preselect_s=0.0, weigh_s=0.0)
        todo = [i for i, plan in enumerate(plans) if plan is None]
        if todo:
            fresh = plan_batch(
                self.loaded,
                [PlanItem(jobs[i].prompt, jobs[i].config) for i in todo],
                self.content_free([jobs[i].config for i in todo]),
                weigher=self.weigher,
            )
            for index, plan in zip(todo, fresh, strict=True):
                plans[index] = plan
                job = jobs[index]
                if job.config.conversation_weights == "once" and plan.error is None:
                    self.conversations.remember(_config_key(job.config), job.prompt.text, plan)
        return plans  # type: ignore[return-value]


def _config_key(config: FusionConfig) -> str:
    return config.model_dump_json()
