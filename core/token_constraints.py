"""The contract between the decode loop and grammar-constrained decoding.

A request may ask for output of a given shape (a JSON schema, any JSON object, a
tool call). The decode loop does not know grammars; it only knows that some rows of
its batch carry a :class:`TokenConstraint` and must be asked, at every step, which
tokens are allowed, then told which token was chosen. Rows without one decode
freely, so a constrained request and a free one share a batch.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TokenConstraint(Protocol):
    """Per-request, stateful: one instance per generated sequence, never shared."""

    def mask_logits(self, logits: torch.Tensor) -> None:
        """Set the logits (``[vocab]``, one row) of tokens that may not come next to ``-inf``, in place."""

    def accept(self, token_id: int) -> None:
        """Advance past ``token_id`` (the token the row generated); raises if it was not allowed."""

    def is_terminated(self) -> bool:
        """True once the output is complete: the row must stop generating."""
