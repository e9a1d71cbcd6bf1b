"""Canonical prefill: prompts run in chunks that end at fixed block boundaries, never padded.

Why canonical: a prompt's KV computed in one forward and the same KV computed as a cached
prefix plus a suffix differ in the last bits (measured on CPU: up to 1e-6 in the logits),
enough to flip a near-tie token; the same holds for a row padded differently. Prefix reuse
must give exactly what a miss gives, so every prefill here, hit or miss, computes the
chunks ``[0, B), [B, 2B), ...`` (B = ``block``) of each row, starting after its cached
blocks. Rows share a forward only when they are at the same chunk with the same length
and the same ``group`` (e.g. the same adapter set, so the stacked LoRA factors are the
same), which keeps every row's numbers independent of who else was in the batch: a reused
block is bitwise the block a miss computes.

Cost: one forward per chunk instead of one per prompt; with blocks of 32+ tokens the
forward's fixed overhead is small next to its work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import kv_cache
from .adapters import LoadedModel
from .fused_lora import ForwardContext, activate
from .hf_compat import output_cache
from .kv_cache import CacheLayout, LayerKV


class LastTokenCapture:
    """Layer observer keeping each decoder layer's output at the last position of the chunk."""

    def __init__(self, num_layers: int) -> None:
        self.last: list[torch.Tensor | None] = [None] * num_layers

    def observe_layer(self, layer_index: int, hidden: torch.Tensor) -> None:
        self.last[layer_index] = hidden[:, -1, :]

    def rows(self) -> torch.Tensor:
        """``[rows, L, d]``."""
        if any(h is None for h in self.last):
            raise RuntimeError("a decoder layer did not report its output; was the model modified?")
        return torch.stack(self.last, dim=1)  # type: ignore[arg-type]


@dataclass
class PrefillRow:
    """One prompt to prefill, possibly after cached leading blocks."""

    ids: list[int]
    group: Hashable
    tag: Any = None  # the caller's: what this row is for
    past: list[LayerKV] | None = None  # KV of ids[:start] ([1, heads, held, head_dim] per layer)
    start: int = 0
    # filled by prefill_rows
    layers: list[LayerKV] | None = None  # KV of the whole prompt
    logits: torch.Tensor | None = None  # [vocab] at the last prompt token
    hidden: torch.Tensor | None = None  # [L, d] layer outputs at the last prompt token (if captured)
    computed: int = field(default=0)  # prompt tokens this prefill actually ran


@dataclass
class _Work:
    rows: list[PrefillRow]
    cache: Any  # DynamicCache | None
    start: int


def prefill_rows(
    loaded: LoadedModel,
    layout: CacheLayout,
    rows: Sequence[PrefillRow],
    block: int,
    context_of: Callable[[list[PrefillRow]], ForwardContext],
    *,
    capture: bool = False,
    want_logits: bool = True,
) -> float:
    """Prefill every row in canonical chunks; fills ``layers``, ``logits``/``hidden``. Returns seconds."""
    model = loaded.model
    device = model.device
    started = time.perf_counter()
    work: list[_Work] = []
    groups: dict[tuple[Hashable, int], list[PrefillRow]] = {}
    for row in rows:
        if row.start % block or row.start >= len(row.ids):
            raise ValueError("a cached prefix must be whole blocks and leave at least one token to run")
        groups.setdefault((row.group, row.start), []).append(row)
    for (_, start), members in groups.items():
        cache = None
        if start:
            cache = kv_cache.stack_rows(model, layout, [(r.past, start) for r in members])  # type: ignore[misc]
        work.append(_Work(members, cache, start))

    while work:
        item = work.pop()
        boundary = (item.start // block + 1) * block
        ends = [min(boundary, len(r.ids)) for r in item.rows]
        if len(set(ends)) > 1:  # rows whose prompts end inside this block part ways here
            for end in sorted(set(ends)):
                picked = [i for i, e in enumerate(ends) if e == end]
                work.append(
                    _Work(
                        [item.rows[i] for i in picked],
                        kv_cache.subset(model, layout, item.cache, picked),
                        item.start,
                    )
                )
            continue
        end = ends[0]
        ids = torch.tensor([r.ids[item.start : end] for r in item.rows], device=device)
        positions = torch.arange(item.start, end, device=device).unsqueeze(0).expand(len(item.rows), -1)
        context = context_of(item.rows)
        observer = LastTokenCapture(loaded.anatomy.num_layers) if capture else None
        context.layer_observer = observer
        with activate(context):
            out = model(
                input_ids=ids,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **kv_cache.forward_kwargs(model, item.cache),
            )
        cache = output_cache(out)
        for r in item.rows:
            r.computed += end - item.start
        done = [i for i, r in enumerate(item.rows) if end == len(r.ids)]
        if done:
            layers = kv_cache.layers_of(cache)
            hidden = observer.rows() if observer is not None else None
            for i in done:
                row = item.rows[i]
                row.layers = [(k[i : i + 1], v[i : i + 1]) for k, v in layers]
                if want_logits:
                    row.logits = out.logits[i, -1]
                if hidden is not None:
                    row.hidden = hidden[i]
        rest = [i for i, r in enumerate(item.rows) if end < len(r.ids)]
        if rest:
            work.append(
                _Work(
                    [item.rows[i] for i in rest],
                    kv_cache.subset(model, layout, cache, rest) if done else cache,
                    end,
                )
            )
    return time.perf_counter() - started
