"""Prefix reuse: KV blocks of prompt prefixes, LRU under a byte budget.

Agents and chats send the same system prompt and a growing history again and again. The
KV of a prompt prefix depends only on the tokens and on what the forward applied (a set of
fused adapters with given weights, or one adapter at full strength in the weighing pass),
so it is stored per *block* of ``block_size`` tokens, keyed like vLLM's automatic prefix
caching: a hash chain over the token ids (block i's key covers blocks 0..i) inside a
namespace naming what the forward applied. A later request walks its own chain and takes
every leading block it finds; nobody sends a conversation id.

Never a wrong answer: each stored block keeps its token ids and its parent's digest, and a
lookup checks both, so a hash collision cannot hand out another prompt's KV. Exactness of
the numbers is the prefill's job (:mod:`qaflora.prefill`): every prefill, hit or miss, runs
in chunks that end at the same block boundaries, so reused blocks are bitwise the blocks a
miss would compute.

Bounded: entries are evicted least-recently-used until the stored bytes fit ``max_bytes``;
a lookup touches the blocks it uses deepest-first so that a chain's first blocks (shared
by more prompts) outlive its tail. ``max_bytes=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .kv_cache import LayerKV

Block = list[LayerKV]
"""One block's KV, per decoder layer: keys and values ``[heads, block_size, head_dim]``."""


def chain_digests(ids: Sequence[int], block_size: int, blocks: int) -> list[bytes]:
    """Digest of each of the first ``blocks`` full blocks, chained (block i's covers blocks 0..i)."""
    digests: list[bytes] = []
    parent = b""
    for index in range(blocks):
        chunk = ids[index * block_size : (index + 1) * block_size]
        digest = hashlib.blake2b(parent + array("q", chunk).tobytes(), digest_size=16)
        parent = digest.digest()
        digests.append(parent)
    return digests


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    parent: bytes
    block: Block
    nbytes: int


@dataclass
class PrefixCacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class PrefixCache:
    """Block KV store: ``lookup`` the leading blocks of a prompt, ``store`` the ones computed."""

    def __init__(self, max_bytes: int, block_size: int) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self.block_size = int(block_size)
        self._entries: OrderedDict[tuple[Hashable, bytes], _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0  # blocks handed out
        self.misses = 0  # lookups that stopped before the limit
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            len(self._entries), self._bytes, self.max_bytes, self.hits, self.misses, self.evictions
        )

    def lookup(self, namespace: Hashable, ids: Sequence[int], max_blocks: int) -> list[Block]:
        """The longest run of leading blocks of ``ids`` under ``namespace`` (``max_blocks`` at most)."""
        if not self.enabled or max_blocks <= 0:
            return []
        found: list[Block] = []
        keys: list[tuple[Hashable, bytes]] = []
        parent = b""
        with self._lock:
            for index, digest in enumerate(chain_digests(ids, self.block_size, max_blocks)):
                key = (namespace, digest)
                entry = self._entries.get(key)
                start = index * self.block_size
                if (
                    entry is None
                    or entry.parent != parent
                    or entry.tokens != tuple(ids[start : start + self.block_size])
                ):
                    self.misses += 1
                    break
                found.append(entry.block)
                keys.append(key)
                parent = digest
            for key in reversed(keys):  # deepest first: the chain's head ends most recent
                self._entries.move_to_end(key)
            self.hits += len(found)
        return found

    def missing(self, namespace: Hashable, ids: Sequence[int], blocks: int) -> list[int]:
        """Indices among the first ``blocks`` full blocks of ``ids`` that are not stored yet."""
        if not self.enabled:
            return []
        digests = chain_digests(ids, self.block_size, blocks)
        with self._lock:
            return [i for i, d in enumerate(digests) if (namespace, d) not in self._entries]

    def store(self, namespace: Hashable, ids: Sequence[int], blocks: dict[int, Block]) -> None:
        """Store full blocks ``{index: block}`` of ``ids`` (blocks already present are kept as they are)."""
        if not self.enabled or not blocks:
            return
        digests = chain_digests(ids, self.block_size, max(blocks) + 1)
        with self._lock:
            for index in sorted(blocks):
                key = (namespace, digests[index])
                if key in self._entries:
                    continue
                block = blocks[index]
                size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in block)
                if size > self.max_bytes:
                    return
                start = index * self.block_size
                self._entries[key] = _Entry(
                    tokens=tuple(ids[start : start + self.block_size]),
                    parent=digests[index - 1] if index else b"",
                    block=block,
                    nbytes=size,
                )
                self._bytes += size
            # a new chain enters as most recent; its head must outlive its tail
            for index in sorted(blocks, reverse=True):
                key = (namespace, digests[index])
                if key in self._entries:
                    self._entries.move_to_end(key)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes
            self.evictions += 1
