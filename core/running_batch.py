"""The rows decoding right now, as one batch that rows join and leave between steps.

State: one KV cache for every running row (left-padded: each row's tokens are contiguous
and right-aligned), the attention mask ``[rows, columns]``, each row's next position, and
each row's chosen-but-not-yet-fed token. A step feeds those tokens, one per row, through ONE
forward. Rows that join bring the KV of their prompt (prefilled elsewhere); the caches are
aligned by left padding. Rows that leave take their cache rows with them, and columns that
every remaining row masks out are cut, so memory follows the live rows, not the batch's
history. The per-row weights and the forward context are rebuilt only when rows change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import kv_cache
from .adapters import LoadedModel
from .decoding import DecodeRow, TextTracker, weights_tensor
from .fused_lora import ForwardContext, activate
from .hf_compat import output_cache, with_cache
from .kv_cache import CacheLayout, LayerKV
from .planning import Plan
from .scheduler import Job


@dataclass
class RunningRow:
    """One request inside the running batch, with everything it keeps of its own."""

    job: Job
    plan: Plan
    row: DecodeRow  # options, weights, stops, streaming, constraint, generator, tokens so far
    tracker: TextTracker
    budget: int
    next_token: int = -1  # chosen, not yet fed to the model
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    prefill_s: float = 0.0
    batch_size: int = 1


class RunningBatch:
    """The running rows and their shared KV cache."""

    def __init__(self, loaded: LoadedModel, layout: CacheLayout) -> None:
        self.loaded = loaded
        self.layout = layout
        self.rows: list[RunningRow] = []
        self.cache = None  # DynamicCache | None
        self.mask: torch.Tensor | None = None  # [rows, columns] long
        self.positions: torch.Tensor | None = None  # [rows] next position of each row
        self._context: ForwardContext | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def nbytes(self) -> int:
        return kv_cache.nbytes(self.cache)

    def join(self, newcomers: Sequence[tuple[RunningRow, list[LayerKV], int]]) -> None:
        """Add rows with their prompt KV (``layers`` of ``length`` columns); their next token is set."""
        if not newcomers:
            return
        model = self.loaded.model
        device = model.device
        parts: list[tuple[Sequence[LayerKV], int]] = []
        if self.cache is not None:
            parts.append((kv_cache.layers_of(self.cache), self.columns))
        parts.extend((layers, length) for _, layers, length in newcomers)
        width = max(length for _, length in parts)
        self.cache = kv_cache.stack_rows(model, self.layout, parts)
        masks = []
        if self.mask is not None:
            masks.append(F.pad(self.mask, (width - self.columns, 0)))
        for _, _, length in newcomers:
            row_mask = torch.zeros(1, width, dtype=torch.long, device=device)
            row_mask[0, width - length :] = 1
            masks.append(row_mask)
        self.mask = torch.cat(masks, dim=0)
        new_positions = torch.tensor([length for _, _, length in newcomers], dtype=torch.long, device=device)
        self.positions = (
            new_positions if self.positions is None else torch.cat([self.positions, new_positions])
        )
        self.rows.extend(row for row, _, _ in newcomers)
        self._context = None

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only rows ``indices`` (in order); free the others' cache rows and dead columns."""
        if len(indices) == len(self.rows):
            return
        self._context = None
        if not indices:
            self.rows, self.cache, self.mask, self.positions = [], None, None, None
            return
        assert self.cache is not None and self.mask is not None and self.positions is not None
        index = torch.tensor(list(indices), device=self.mask.device)
        kv_cache.select_rows(self.cache, index)
        self.mask = self.mask[index]
        self.positions = self.positions[index]
        self.rows = [self.rows[i] for i in indices]
        live = self.mask.any(dim=0)
        dead = int(torch.argmax(live.to(torch.int8))) if bool(live.any()) else 0
        if dead:
            kv_cache.trim_left(self.cache, self.layout, dead)
            self.mask = self.mask[:, dead:]

    def context(self) -> ForwardContext:
        if self._context is None:
            union, weights = weights_tensor([r.row for r in self.rows], self.loaded.anatomy.num_layers)
            self._context = self.loaded.bank.context(union, weights, isolate_rows=True)
        return self._context

    def step(self) -> torch.Tensor:
        """Feed every row's next token; return the logits of the following one, ``[rows, vocab]``."""
        assert self.cache is not None and self.mask is not None and self.positions is not None
        model = self.loaded.model
        device = model.device
        tokens = torch.tensor([r.next_token for r in self.rows], device=device).unsqueeze(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        with activate(self.context()):
            out = model(
                input_ids=tokens,
                attention_mask=self.mask,
                position_ids=self.positions.unsqueeze(1),
                use_cache=True,
                **with_cache(model, self.cache),
            )
        self.cache = output_cache(out)
        self.positions = self.positions + 1
        return out.logits[:, -1, :]
