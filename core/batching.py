"""Left-padded batches: the shape every batched forward of the engine uses.

Left padding keeps the last prompt token of every row at position -1, which is
where qa-FLoRA reads the logit lens and where decoding continues. Position ids
are derived from the attention mask so padded rows see the same positions as
they would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> PaddedBatch:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    return PaddedBatch(ids.to(device), mask.to(device), positions.to(device))


def pad_token_id(tokenizer: object) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
