"""One request's grammar state: the token constraint (:mod:`qaflora.token_constraints`) decoding drives.

Masks are computed by llguidance into a packed bitmask (one bit per token), unpacked with
numpy and applied with one ``torch.where`` on the logits' device; llguidance's own torch
helper compiles a kernel with ``torch.compile``, which a CPU-only install should not need.

The token budget. A request that runs out of tokens inside a JSON value would end as
truncated, unparseable text (``finish_reason="length"``, as hosted APIs return it). We
know the budget, so near its end we steer instead: the constraint simulates, on a copy
of its state, how many tokens the shortest way out of the current position takes (close
the string, the object, the array: "closers" first, then a digit for a required number,
else the first token the grammar allows). Once that is no longer comfortably below the
tokens left (a reserve of half the schema's shortest answer covers a model that opens an
optional object just before), it switches to *closing mode* and masks every token that
does not take that way.
The answer is then complete, valid JSON whose last value may be cut short; it ends with
``finish_reason="stop"``. Only when even the shortest way out does not fit (a budget
smaller than the schema's required skeleton) is the output truncated.
"""

from __future__ import annotations

import numpy as np
import torch

from .vocabulary import Vocabulary

CLOSING_SLACK = 2
"""Tokens of margin always kept between the shortest completion and the budget."""


class GrammarViolation(RuntimeError):
    """The decode loop fed a token the grammar had not allowed (a bug, never user input)."""


class GrammarConstraint:
    """Per-request, stateful: masks for the next token, advanced by each chosen token."""

    def __init__(
        self,
        matcher: object,
        vocabulary: Vocabulary,
        *,
        budget: int | None = None,
        horizon: int = 64,
        reserve: int = CLOSING_SLACK,
    ) -> None:
        self._matcher = matcher
        self._vocab = vocabulary
        self._bits = np.zeros((vocabulary.size + 31) // 32, dtype=np.int32)
        self._budget = budget
        self._horizon = horizon
        self._reserve = reserve
        self._generated = 0
        self._last_token: int | None = None
        self._estimate: int | None = None
        self._was_inside = False
        self._neg: torch.Tensor | None = None
        self.closing = False
        """True once the budget forced the output towards its shortest valid end."""

    # ------------------------------------------------------------------ TokenConstraint
    def mask_logits(self, logits: torch.Tensor) -> None:
        allowed = self.allowed()
        if not self.closing and self._near_the_end(allowed):
            self.closing = True
        if self.closing:
            allowed = _closing_choice(allowed, self._vocab, decide=True)
        width = logits.shape[-1]
        keep = torch.from_numpy(allowed[:width])
        if width > len(keep):  # logits wider than the tokenizer's table: those ids are no text
            keep = torch.cat([keep, torch.zeros(width - len(keep), dtype=torch.bool)])
        # torch.where into the logits: on CPU several times faster than masked_fill_ (measured)
        torch.where(keep.to(logits.device, non_blocking=True), logits, self._minus_inf(logits), out=logits)

    def _minus_inf(self, logits: torch.Tensor) -> torch.Tensor:
        if self._neg is None or self._neg.dtype != logits.dtype or self._neg.device != logits.device:
            self._neg = torch.full((), float("-inf"), dtype=logits.dtype, device=logits.device)
        return self._neg

    def accept(self, token_id: int) -> None:
        if not self._matcher.consume_token(int(token_id)):
            raise GrammarViolation(f"token {token_id} is not allowed here: {self._matcher.get_error()}")
        self._generated += 1
        self._last_token = int(token_id)

    def is_terminated(self) -> bool:
        return self._matcher.is_stopped()

    # ------------------------------------------------------------------ budget
    def set_token_budget(self, tokens: int) -> None:
        """The most tokens this request may still generate from its start (the decode loop knows it
        best: the context window can leave less room than ``max_new_tokens``)."""
        self._budget = tokens if self._budget is None else min(self._budget, tokens)

    def allowed(self) -> np.ndarray:
        """bool[vocabulary size]: the tokens the grammar allows next."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if self._matcher.is_error():
            raise GrammarViolation(self._matcher.get_error())
        allowed = _unpack(self._bits, self._vocab.size)
        if not allowed.any():
            raise GrammarViolation(
                "no token of this tokenizer can continue the constrained output after "
                f"{self._generated} token(s): its vocabulary cannot spell what the grammar requires"
            )
        return allowed

    def _near_the_end(self, allowed: np.ndarray) -> bool:
        """Whether the shortest way out, plus the reserve, no longer fits in the tokens left.

        Free text that may end here (outside a call under ``auto`` tool choice) is never steered:
        cut by the budget it is still what it is. The shortest way out is simulated
        (:func:`shortest_completion`), but not at every token: while the output stays inside
        one string it cannot grow (only an escape can, so a backslash forces a new estimate),
        so the last estimate stands.
        """
        if self._budget is None:
            return False
        left = self._budget - self._generated
        if left > self._horizon or self._may_end(allowed):
            return False  # far from the end, or free text (auto tool choice) that may stop anywhere
        inside = in_string(allowed, self._vocab)
        escaped = self._last_token is not None and b"\\" in self._vocab.token_bytes(self._last_token)
        if self._estimate is None or not (inside and self._was_inside) or escaped:
            self._estimate = shortest_completion(self._matcher, self._vocab, limit=left)
        self._was_inside = inside
        return self._estimate is None or self._estimate + self._reserve >= left

    def _may_end(self, allowed: np.ndarray) -> bool:
        return any(i < len(allowed) and allowed[i] for i in self._vocab.eos_ids)


def shortest_completion(matcher: object, vocabulary: Vocabulary, limit: int) -> int | None:
    """Tokens the closing policy takes from ``matcher``'s state to a complete output (None: over ``limit``).

    Stretches the grammar forces (a required key, the closing tag) are taken in one go.
    """
    probe = matcher.deep_copy()
    bits = np.zeros((vocabulary.size + 31) // 32, dtype=np.int32)
    steps = 0
    while steps <= limit:
        if probe.is_stopped():
            return steps
        forced = probe.compute_ff_tokens()
        if forced:
            if not probe.consume_tokens(forced):
                return None
            steps += len(forced)
            continue
        probe.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        if probe.is_error():
            return None
        candidates = np.flatnonzero(_closing_choice(_unpack(bits, vocabulary.size), vocabulary, decide=True))
        if len(candidates) == 0:
            return None
        token = int(candidates[0])
        steps += 1
        if token in vocabulary.eos_ids:
            return steps
        if not probe.consume_token(token):
            return None
    return None


def in_string(allowed: np.ndarray, vocabulary: Vocabulary) -> bool:
    """Whether the state is inside a JSON string (or free text): a letter no literal starts with fits."""
    return bool(len(vocabulary.string_probes)) and bool(allowed[vocabulary.string_probes].any())


def _unpack(bits: np.ndarray, size: int) -> np.ndarray:
    """The packed mask (bit i of word i // 32 is token i) as bool[size], without copying the bits twice."""
    return np.unpackbits(bits.view(np.uint8), bitorder="little")[:size].view(bool)


def _closing_choice(allowed: np.ndarray, vocabulary: Vocabulary, decide: bool = False) -> np.ndarray:
    """The allowed tokens on the shortest way out of the current state.

    EOS when allowed; inside a string, the closing quote (with brackets after it); outside,
    closing brackets, then a quote (an empty string or a required key), then separators
    (required keys, array items), then a digit (a required number); else whatever the
    grammar allows (forced keys, enum values, patterns). There, with ``decide``, only the
    lowest allowed id: the same way :func:`shortest_completion` measured, so the estimate
    that started closing is the path taken (an optional key picked freely could overrun it).
    """
    eos = [i for i in vocabulary.eos_ids if i < len(allowed) and allowed[i]]
    if eos:
        only = np.zeros_like(allowed)
        only[eos] = True
        return only
    order = (
        (vocabulary.quote_closers,)
        if in_string(allowed, vocabulary)
        else (vocabulary.closers, vocabulary.quote_closers, vocabulary.separators, vocabulary.digits)
    )
    for cls in order:
        narrowed = allowed & cls
        if narrowed.any():
            return narrowed
    if decide and allowed.any():
        only = np.zeros_like(allowed)
        only[np.flatnonzero(allowed)[0]] = True
        return only
    return allowed
