"""The tokenizer as the grammar engine sees it: the bytes of every token, checked.

A grammar is written over bytes, a model chooses tokens; llguidance bridges the two
with a token table (the bytes each token id stands for) built from the Hugging Face
``tokenizer.json``. It reads byte-level BPE (GPT-2 style) and SentencePiece-style
vocabularies whose decoder is ``Replace("▁", " ")`` + ``ByteFallback`` (Llama 2 style),
but a ``Metaspace`` *decoder* (what ``tokenizers`` writes for a Unigram model with a
Metaspace pre-tokenizer) is taken literally, so every ``▁`` would stay three bytes and
no constrained output could ever contain a space. We rewrite that decoder into the
equivalent ``Replace`` on a copy of the tokenizer's JSON before handing it over.

Because a wrong table fails silently (masks that allow the wrong tokens), the table
is checked once against the tokenizer itself: every ordinary token's text, decoded by
Hugging Face after an anchor token (so no leading-space stripping applies), must be the
bytes llguidance has for it. A tokenizer that fails is refused with the first mismatches
named, rather than decoded under wrong masks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llguidance
import numpy as np

from ..errors import ConfigError

_QUOTE_CLOSERS = frozenset(b'"}]')
_CLOSERS = frozenset(b"}]")
_SEPARATORS = frozenset(b",: ")
_DIGITS = frozenset(b"0123456789")
# letters that begin no JSON literal (true/false/null) and no number (e/E): a state that
# allows one of them as the next token is inside a string (or free text)
_STRING_ONLY_LETTERS = frozenset(b"bcdghijkmopqvwxyzBCDGHIJKMOPQVWXYZ")


@dataclass(frozen=True)
class Vocabulary:
    """llguidance's token table for one tokenizer, plus the token classes the budget steering uses."""

    tokenizer: llguidance.LLTokenizer
    size: int
    """Width of the model's logits (may exceed the tokenizer's length: padded embeddings)."""
    eos_ids: frozenset[int]
    quote_closers: np.ndarray
    """bool[size]: ``"`` followed only by ``}``/``]``: inside a string, the way out of it."""
    closers: np.ndarray
    """bool[size]: tokens made only of ``}``, ``]``: they end objects and arrays."""
    separators: np.ndarray
    """bool[size]: tokens made only of ``,``, ``:``, space: what required keys and items need."""
    digits: np.ndarray
    """bool[size]: tokens made only of digits: the shortest way to write a number."""
    string_probes: np.ndarray
    """ids of single letters that only a string (or free text) can continue with."""

    def token_bytes(self, token_id: int) -> bytes:
        return self.tokenizer.decode_bytes([token_id])


def build_vocabulary(hf_tokenizer: Any, logits_size: int, eos_ids: set[int]) -> Vocabulary:
    """The checked token table of ``hf_tokenizer`` (a fast tokenizer) for logits of ``logits_size``."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            "constrained decoding needs a fast (Rust-backed) Hugging Face tokenizer; "
            f"{type(hf_tokenizer).__name__} has no backend_tokenizer"
        )
    spec = json.loads(backend.to_str())
    spec["padding"] = None
    spec["truncation"] = None
    spec["decoder"] = _literal_metaspace(spec.get("decoder"))
    eos = sorted(eos_ids) or [hf_tokenizer.eos_token_id]
    size = max(logits_size, len(hf_tokenizer))
    try:
        table = llguidance.LLTokenizer(json.dumps(spec), n_vocab=size, eos_token=eos)
    except ValueError as exc:  # e.g. a decoder llguidance cannot map to bytes (WordPiece)
        raise ConfigError(f"constrained decoding cannot read this tokenizer: {exc}") from exc
    _check_table(hf_tokenizer, table)
    classes = {name: np.zeros(size, dtype=bool) for name in ("quote", "close", "sep", "digit")}
    probes = []
    for token_id in range(len(hf_tokenizer)):
        if table.is_special_token(token_id):
            continue
        raw = table.decode_bytes([token_id])
        if not raw:
            continue
        chars = set(raw)
        classes["quote"][token_id] = raw[0] == ord('"') and chars <= _QUOTE_CLOSERS
        classes["close"][token_id] = chars <= _CLOSERS
        classes["sep"][token_id] = chars <= _SEPARATORS
        classes["digit"][token_id] = chars <= _DIGITS
        if len(raw) == 1 and raw[0] in _STRING_ONLY_LETTERS:
            probes.append(token_id)
    return Vocabulary(
        table,
        size,
        frozenset(eos),
        quote_closers=classes["quote"],
        closers=classes["close"],
        separators=classes["sep"],
        digits=classes["digit"],
        string_probes=np.array(probes, dtype=np.int64),
    )


def _literal_metaspace(decoder: dict[str, Any] | None) -> dict[str, Any] | None:
    """``Metaspace`` decoders (also inside a ``Sequence``) as the equivalent ``Replace("▁", " ")``.

    The prefix-space stripping a Metaspace decoder also does only concerns the first token
    of a whole text; the grammar engine needs each token's own bytes, where ``▁`` is a space.
    """
    if decoder is None:
        return None
    if decoder.get("type") == "Metaspace":
        return {"type": "Replace", "pattern": {"String": decoder.get("replacement", "▁")}, "content": " "}
    if decoder.get("type") == "Sequence":
        return {**decoder, "decoders": [_literal_metaspace(d) for d in decoder.get("decoders", [])]}
    return decoder


def _check_table(hf_tokenizer: Any, table: llguidance.LLTokenizer, shown: int = 3) -> None:
    """Refuse a token table that disagrees with the tokenizer on any ordinary token's text."""
    special = set(hf_tokenizer.all_special_ids)
    anchor = _anchor_token(hf_tokenizer)
    ids = [i for i in range(len(hf_tokenizer)) if i not in special and not table.is_special_token(i)]
    prefix = hf_tokenizer.decode([anchor], clean_up_tokenization_spaces=False)
    pairs = hf_tokenizer.batch_decode([[anchor, i] for i in ids], clean_up_tokenization_spaces=False)
    wrong = []
    for token_id, text in zip(ids, pairs, strict=True):
        if "\ufffd" in text or not text.startswith(prefix):
            continue  # part of a multi-byte character: its text alone says nothing
        expected = text[len(prefix) :].encode("utf-8")
        if expected != table.decode_bytes([token_id]):
            wrong.append((token_id, expected, table.decode_bytes([token_id])))
    if wrong:
        sample = ", ".join(f"id {i}: tokenizer {e!r} vs grammar engine {g!r}" for i, e, g in wrong[:shown])
        raise ConfigError(
            f"constrained decoding cannot read this tokenizer: {len(wrong)} token(s) would be matched "
            f"against the wrong bytes ({sample})"
        )


def _anchor_token(hf_tokenizer: Any) -> int:
    """A plain single-letter token to decode others after, so no decoder strips their leading space."""
    for text in ("a", "x", "e", "0"):
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        candidates = [i for i in ids if hf_tokenizer.decode([i]) == text]
        if candidates:
            return candidates[0]
    raise ConfigError("constrained decoding cannot read this tokenizer: it has no plain single-letter token")
