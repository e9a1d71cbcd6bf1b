"""Batched generation with per-row fusion weights, sampling options and stop sequences.

Our own loop rather than ``model.generate``: rows of one batch come from
different requests, so temperature, top-p, seed, stop strings, token budget
and fusion weights all differ per row, and each row streams its own text.
Finished rows leave the batch (KV cache rows dropped), so a long answer does
not make short ones pay for its tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from .adapters import LoadedModel
from .batching import left_pad, pad_token_id
from .config import GenerationOptions
from .fused_lora import activate
from .hf_compat import output_cache, with_cache
from .results import FinishReason
from .token_constraints import TokenConstraint


@dataclass
class DecodeRow:
    """One request's generation state inside a batch."""

    prompt_ids: list[int]
    options: GenerationOptions
    adapters: list[int]
    weights: torch.Tensor  # [len(adapters), L]
    on_text: Callable[[str], None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    constraint: TokenConstraint | None = None  # grammar: masks this row's logits, told each token
    # filled while decoding
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None
    # constrained decoding: the row's grammar state, and the error that ended the row, if any
    constraint: TokenConstraint | None = None
    error: Exception | None = None


@dataclass
class DecodeTimings:
    prefill: float = 0.0
    decode: float = 0.0
    first_token_at: float = 0.0  # perf_counter when the batch's first tokens were chosen


class TextTracker:
    """Incremental detokenisation with stop strings held back until they are decided."""

    def __init__(self, tokenizer, stops: list[str] | None) -> None:
        self.tokenizer = tokenizer
        self.stops = stops or []

    def update(self, row: DecodeRow) -> str:
        """Refresh ``row.text``; cut at a stop string; return the newly safe text to stream."""
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            row.text = text[:cut]
            row.finish_reason = "stop"
            return self._flush(row)
        row.text = text
        safe = len(text) - self._held_back(text)
        if safe <= row.emitted:
            return ""
        piece = text[row.emitted : safe]
        row.emitted = safe
        return piece

    def _held_back(self, text: str) -> int:
        """Characters at the end that may still become a stop string or a multi-byte char."""
        hold = len(text) - len(text.rstrip("\ufffd"))
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        return hold

    @staticmethod
    def _flush(row: DecodeRow) -> str:
        piece = row.text[row.emitted :]
        row.emitted = len(row.text)
        return piece

    def finish(self, row: DecodeRow) -> str:
        return self._flush(row)


def eos_token_ids(loaded: LoadedModel) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(loaded.model, "generation_config", None), loaded.tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def new_generator(options: GenerationOptions, device: torch.device) -> torch.Generator | None:
    """The row's own random stream (seeded if asked), or None for greedy rows."""
    if options.greedy:
        return None
    generator = torch.Generator(device=device)
    if options.seed is not None:
        generator.manual_seed(options.seed)
    else:
        generator.seed()
    return generator


def token_budget(row: DecodeRow, context_window: int | None) -> int:
    """New tokens a row may make: its ``max_new_tokens``, within the context window."""
    room = (context_window - len(row.prompt_ids)) if context_window else row.options.max_new_tokens
    budget = max(0, min(row.options.max_new_tokens, room))
    if row.constraint is not None and hasattr(row.constraint, "set_token_budget"):
        row.constraint.set_token_budget(budget)  # lets a grammar close its JSON before the budget ends
    return budget


def weights_tensor(rows: list[DecodeRow], num_layers: int) -> tuple[list[int], torch.Tensor]:
    """The adapters used by any row (sorted) and ``[rows, len(union), L]`` weights, 0 where unused."""
    union = sorted({a for row in rows for a in row.adapters})
    column = {a: i for i, a in enumerate(union)}
    weights = torch.zeros(len(rows), len(union), num_layers)
    for r, row in enumerate(rows):
        for j, adapter in enumerate(row.adapters):
            weights[r, column[adapter]] = row.weights[j]
    return union, weights


def next_tokens(logits: torch.Tensor, rows: list[DecodeRow]) -> list[int]:
    """Pick each row's next token: greedy rows by argmax (batched), others sampled with their generator.

    A row with a grammar constraint has its logits masked first (in place).
    """
    mask_constrained(logits, rows)
    choice = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if not row.options.greedy]
    for i in sampled:
        options = rows[i].options
        scaled = logits[i].float() / float(options.temperature)
        if options.top_p is not None and options.top_p < 1.0:
            sorted_logits, order = scaled.sort(descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) >= options.top_p
            sorted_logits[drop] = float("-inf")
            scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
        probs = scaled.softmax(-1)
        choice[i] = torch.multinomial(probs, 1, generator=rows[i].generator)[0]
    return choice.tolist()


# ---------------------------------------------------------------- constrained decoding, per row
def mask_constrained(logits: torch.Tensor, rows: list[DecodeRow]) -> None:
    """Before choosing: each constrained row's disallowed tokens to -inf (free rows untouched)."""
    for position, row in enumerate(rows):
        if row.constraint is not None and row.error is None:
            try:
                row.constraint.mask_logits(logits[position])
            except Exception as exc:  # a broken grammar fails its own request, not the batch
                row.error = exc


def advance_constrained(row: DecodeRow, token: int) -> None:
    """After choosing: advance the row's grammar; a finished grammar finishes the row."""
    if row.constraint is None or row.error is not None:
        return
    try:
        row.constraint.accept(token)
        if row.constraint.is_terminated():
            row.finish_reason = "stop"
    except Exception as exc:
        row.error = exc


def advance_row(
    row: DecodeRow, token: int, tracker: TextTracker, budget: int, eos: set[int], cancelled: bool = False
) -> None:
    """Apply one chosen token to a row: stop, budget, stop strings, grammar; stream the safe text.

    Sets ``row.finish_reason`` when the row is done (and flushes its held-back text). A row
    whose grammar failed stops here; the scheduler reports ``row.error`` to its request only.
    """
    if row.error is not None:
        row.finish_reason = "stop"
    elif budget == 0:
        row.finish_reason = "length"
    elif cancelled or (token in eos and not row.options.ignore_eos):
        row.finish_reason = "stop"
    else:
        row.token_ids.append(token)
        advance_constrained(row, token)
        piece = tracker.update(row)
        if piece and row.on_text is not None:
            row.on_text(piece)
        if row.finish_reason is None and len(row.token_ids) >= budget:
            row.finish_reason = "length"
    if row.finish_reason is not None:
        piece = tracker.finish(row)
        if piece and row.on_text is not None:
            row.on_text(piece)


def decode_batch(
    loaded: LoadedModel,
    rows: list[DecodeRow],
    context_window: int | None,
    prefill_phase: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> DecodeTimings:
    """Generate for every row until each stops; fills the rows in place (the static batcher's loop).

    ``prefill_phase``: entered around the prefill forward (the worker's admission threads,
    :func:`qaflora.threads.prompt_phase`).
    """
    timings = DecodeTimings()
    model = loaded.model
    device = model.device
    eos = eos_token_ids(loaded)
    trackers = [TextTracker(loaded.tokenizer, row.options.stop) for row in rows]
    budgets = [token_budget(row, context_window) for row in rows]
    for row in rows:
        row.generator = new_generator(row.options, device)

    union, weights = weights_tensor(rows, loaded.anatomy.num_layers)
    batch = left_pad([row.prompt_ids for row in rows], pad_token_id(loaded.tokenizer), device)
    active = list(range(len(rows)))
    mask = batch.attention_mask
    positions = batch.position_ids[:, -1:]
    start = time.perf_counter()
    isolate = len({tuple(row.adapters) for row in rows}) > 1
    context = loaded.bank.context(union, weights, isolate_rows=isolate)
    with activate(context), prefill_phase():
        out = model(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=batch.position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
    cache = output_cache(out)
    logits = out.logits[:, -1, :]
    timings.prefill = time.perf_counter() - start
    start = time.perf_counter()

    first = True
    while True:
        tokens = next_tokens(logits, [rows[i] for i in active])
        if first:
            timings.first_token_at = time.perf_counter()
            first = False
        keep: list[int] = []
        for position, (index, token) in enumerate(zip(active, tokens, strict=True)):
            row = rows[index]
            cancelled = row.is_cancelled is not None and row.is_cancelled()
            advance_row(row, token, trackers[index], budgets[index], eos, cancelled)
            if row.finish_reason is None:
                keep.append(position)
        if not keep:
            break
        if len(keep) < len(active):
            keep_index = torch.tensor(keep, device=device)
            cache.batch_select_indices(keep_index)
            mask = mask[keep_index]
            positions = positions[keep_index]
            weights = weights[keep_index.cpu()]
            context = loaded.bank.context(union, weights, isolate_rows=isolate)
            tokens = [tokens[p] for p in keep]
            active = [active[p] for p in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        positions = positions + 1
        with activate(context):
            out = model(
                input_ids=torch.tensor(tokens, device=device).unsqueeze(1),
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **with_cache(model, cache),
            )
        cache = output_cache(out)
        logits = out.logits[:, -1, :]
    timings.decode = time.perf_counter() - start
    return timings
