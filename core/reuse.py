"""What a conversation's next turn can reuse from its earlier turns.

Three things, all found by token-prefix (or text-prefix) match, none needing an id from the
client:

* **the weighing pass** (:class:`ReusingWeigher`): its rows each apply ONE adapter at full
  strength (row 0 none), whatever the query's final weights, so the KV of a prompt prefix
  under "adapter j alone" serves every later prompt with that prefix. A new turn runs the
  weighing rows over its new tokens only, and gets bitwise the weights a full pass gives
  (canonical chunks, :mod:`qaflora.prefill`).
* **the decode prefill** (:func:`fused_namespace`): the KV of a prefix under the same fused
  weights. It hits when weights repeat: the same prompt again, weights that do not depend
  on the prompt (``base``, ``oracle``, ``static`` without preselection), or the
  ``conversation_weights="once"`` policy.
* **the weights themselves** (:class:`ConversationWeights`): with ``conversation_weights="once"``
  a conversation is weighed at its first turn and later turns (prompts that extend it) reuse
  those weights, so their decode prefill only runs the new tokens. With ``"per_turn"`` (the
  default) every turn is weighed afresh (the weighing reuses its prefix work).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable

import torch

from . import kv_cache
from .adapters import LoadedModel
from .kv_cache import CacheLayout
from .planning import Plan
from .prefill import PrefillRow, prefill_rows
from .prefix_cache import PrefixCache
from .weighing import WeighItem, WeighOutcome, outcome_from_hidden, weigh


def weigh_namespace(adapter: int | None) -> Hashable:
    """Prefix-cache namespace of a weighing row: one adapter at full strength (None: the base)."""
    return ("weigh", -1 if adapter is None else adapter)


def fused_namespace(adapters: list[int], weights: torch.Tensor) -> Hashable:
    """Prefix-cache namespace of a decode prefill: the exact adapters and weight matrix applied."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(list(adapters)).encode())
    matrix = weights.detach().to(torch.float32).cpu().contiguous()
    digest.update(repr(tuple(matrix.shape)).encode())
    digest.update(matrix.numpy().tobytes())
    return ("fused", digest.digest())


def cached_prefix(
    loaded: LoadedModel, layout: CacheLayout, store: PrefixCache | None, namespace: Hashable, ids: list[int]
) -> tuple[list[kv_cache.LayerKV] | None, int]:
    """KV of the longest stored block-prefix of ``ids`` (leaving at least one token to run)."""
    if store is None or not store.enabled:
        return None, 0
    blocks = store.lookup(namespace, ids, (len(ids) - 1) // store.block_size)
    if not blocks:
        return None, 0
    return kv_cache.from_blocks(loaded.model, layout, blocks)


def remember_blocks(
    layout: CacheLayout, store: PrefixCache | None, namespace: Hashable, row: PrefillRow
) -> None:
    """Store the full blocks of a prefilled row that the cache does not hold yet."""
    if store is None or not store.enabled or row.layers is None:
        return
    total = len(row.ids)
    size = store.block_size
    blocks = {}
    for index in store.missing(namespace, row.ids, total // size):
        block = kv_cache.row_columns(row.layers, layout, total, 0, index * size, (index + 1) * size)
        if block is None:  # a sliding-window layer dropped these columns: later blocks are unreachable
            break
        blocks[index] = block
    store.store(namespace, row.ids, blocks)


class ReusingWeigher:
    """The qa-FLoRA weighing pass in canonical chunks, reusing the KV of stored prompt prefixes.

    A drop-in ``weigher`` for :func:`qaflora.planning.plan_batch`. Queries that read the last
    token (``token="last"``, the default) go this way; ``token="mean"`` needs every prompt
    token's output and takes the plain pass.
    """

    def __init__(self, layout: CacheLayout, store: PrefixCache | None, block: int) -> None:
        self.layout = layout
        self.store = store
        self.block = block
        self.tokens_run = 0  # weighing row-tokens actually computed
        self.tokens_reused = 0  # weighing row-tokens taken from the cache

    def __call__(self, loaded: LoadedModel, items: list[WeighItem]) -> list[WeighOutcome]:
        outcomes: list[WeighOutcome | None] = [None] * len(items)
        plain = [i for i, item in enumerate(items) if item.config.token != "last"]
        if plain:
            for i, outcome in zip(plain, weigh(loaded, [items[i] for i in plain]), strict=True):
                outcomes[i] = outcome
        rows: list[PrefillRow] = []
        for index, item in enumerate(items):
            if outcomes[index] is not None:
                continue
            for adapter in [None, *item.candidates]:
                namespace = weigh_namespace(adapter)
                past, start = cached_prefix(loaded, self.layout, self.store, namespace, item.prompt.ids)
                rows.append(
                    PrefillRow(
                        ids=list(item.prompt.ids), group="weigh", tag=(index, adapter), past=past, start=start
                    )
                )
        if rows:
            prefill_rows(
                loaded,
                self.layout,
                rows,
                self.block,
                lambda chunk: loaded.bank.row_context([r.tag[1] for r in chunk]),
                capture=True,
                want_logits=False,
            )
            by_query: dict[int, list[PrefillRow]] = {}
            for row in rows:
                by_query.setdefault(row.tag[0], []).append(row)
                self.tokens_run += row.computed
                self.tokens_reused += row.start
                remember_blocks(self.layout, self.store, weigh_namespace(row.tag[1]), row)
                row.layers = None  # the weighing KV is only kept as blocks
            for index, query_rows in by_query.items():
                hidden = torch.stack([r.hidden for r in query_rows])  # type: ignore[misc]  # [1+k, L, d]
                outcomes[index] = outcome_from_hidden(loaded, hidden, items[index])
        return outcomes  # type: ignore[return-value]


class ConversationWeights:
    """Plans remembered per conversation, for ``conversation_weights="once"``.

    A conversation is recognised by its formatted prompt: turn t+1 of a chat starts with the
    whole text of turn t (history, then the new messages), so the stored prompt that is the
    longest text prefix of a new prompt, under the same fusion config, is its conversation.
    Bounded: the least recently used conversations are forgotten beyond ``max_entries``.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], Plan] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, config_key: str, text: str) -> Plan | None:
        with self._lock:
            best: tuple[str, str] | None = None
            for key in self._entries:
                if (
                    key[0] == config_key
                    and text.startswith(key[1])
                    and (best is None or len(key[1]) > len(best[1]))
                ):
                    best = key
            if best is None:
                return None
            self._entries.move_to_end(best)
            self.hits += 1
            return self._entries[best]

    def remember(self, config_key: str, text: str, plan: Plan) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[(config_key, text)] = plan
            self._entries.move_to_end((config_key, text))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
