"""Compile output constraints against one tokenizer, once, and hand out per-request matchers.

The token table (:mod:`.vocabulary`) is built once per tokenizer; a grammar is compiled
once per distinct constraint and kept in an LRU cache (structured-output callers send the
same schema again and again); each request gets a cheap copy of the compiled matcher.
Compiling happens in the caller's thread when the request is made, so a bad schema is a
:class:`~qaflora.errors.ConfigError` naming the problem before anything is queued.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import llguidance
import numpy as np

from ..config import OutputConstraint
from ..errors import ConfigError
from ..toolcalls import OPEN_TAG
from .grammars import grammar_for
from .matcher import CLOSING_SLACK, GrammarConstraint, shortest_completion
from .vocabulary import Vocabulary, build_vocabulary

MIN_HORIZON = 64
"""Budget steering starts looking at most this many tokens (or more, for big schemas) before the end."""


@dataclass(frozen=True)
class CompiledGrammar:
    """A constraint compiled for one tokenizer: a pristine matcher to copy per request."""

    grammar: str
    matcher: Any
    horizon: int
    """How many tokens before the end of the budget steering must start checking."""
    reserve: int
    """Tokens kept free beyond the shortest completion when deciding to close."""


class GrammarCompiler:
    """Turns :class:`OutputConstraint` s into per-request :class:`GrammarConstraint` s for one tokenizer."""

    def __init__(self, hf_tokenizer: Any, logits_size: int, eos_ids: set[int], cache_size: int = 64) -> None:
        self.vocabulary: Vocabulary = build_vocabulary(hf_tokenizer, logits_size, eos_ids)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, constraint: OutputConstraint) -> CompiledGrammar:
        """The compiled grammar of ``constraint`` (cached); ConfigError if it cannot be compiled."""
        key = json.dumps(constraint.model_dump(mode="json"), sort_keys=True)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        compiled = self._compile(constraint)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def constraint(
        self, constraint: OutputConstraint, *, budget: int | None = None, prefix: str | None = None
    ) -> GrammarConstraint:
        """A fresh per-request constraint; ``prefix`` (text already written at the start of the
        answer, e.g. an ``assistant_prefix``) is fed through the grammar first and must fit it."""
        compiled = self.compile(constraint)
        with self._lock:  # copying reads the pristine matcher; keep it away from concurrent copies
            matcher = compiled.matcher.deep_copy()
        if prefix:
            tokens = self.vocabulary.tokenizer.tokenize_str(prefix)
            if matcher.try_consume_tokens(tokens) != len(tokens):
                raise ConfigError(
                    f"the answer prefix {prefix!r} does not fit the output constraint ({constraint.type})"
                )
        return GrammarConstraint(
            matcher, self.vocabulary, budget=budget, horizon=compiled.horizon, reserve=compiled.reserve
        )

    # ------------------------------------------------------------------ internals
    def _compile(self, constraint: OutputConstraint) -> CompiledGrammar:
        grammar = grammar_for(constraint)
        table = self.vocabulary.tokenizer
        matcher = llguidance.LLMatcher(table, grammar, log_level=0)
        if matcher.is_error():
            reason = _first_line([matcher.get_error()])
            raise ConfigError(f"cannot enforce the output constraint ({constraint.type}): {reason}")
        if not self._can_start(matcher):
            raise ConfigError(
                f"cannot enforce the output constraint ({constraint.type}): no token of this tokenizer "
                "can start an output it allows"
            )
        shortest = self._shortest_answer(matcher, constraint)
        return CompiledGrammar(
            grammar,
            matcher,
            horizon=max(MIN_HORIZON, 2 * shortest + 16),
            reserve=CLOSING_SLACK + shortest // 2,
        )

    def _can_start(self, matcher: Any) -> bool:
        """Whether any token may come first (a vocabulary that cannot spell ``{`` allows none)."""
        probe = matcher.deep_copy()
        bits = np.zeros((self.vocabulary.size + 31) // 32, dtype=np.int32)
        probe.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        return not probe.is_error() and bool(bits.any())

    def _shortest_answer(self, matcher: Any, constraint: OutputConstraint) -> int:
        """Tokens of the shortest complete answer (for ``auto`` tool calls: of the shortest call)."""
        probe = matcher.deep_copy()
        if constraint.type == "tool_call" and constraint.tool_choice == "auto":
            tokens = self.vocabulary.tokenizer.tokenize_str(OPEN_TAG)
            probe.try_consume_tokens(tokens)
        shortest = shortest_completion(probe, self.vocabulary, limit=2048)
        return shortest if shortest is not None else 2048


def _first_line(messages: list[str]) -> str:
    text = " ".join(m.strip() for m in messages if m and m.strip()) or "the grammar engine rejected it"
    for line in text.splitlines():
        if line.strip() and not line.startswith("<"):
            return line.strip()[:500]
    return text[:500]
