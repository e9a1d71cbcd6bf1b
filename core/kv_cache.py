"""KV-cache surgery for continuous batching: the one module that knows the layout of a cache.

The continuous batcher keeps ONE cache for all running rows and must add rows (newcomers,
prefilled separately), drop rows (finished or cancelled requests), and drop leading columns
that every row masks out. The prefix cache must cut a row's columns into blocks and put
them back. Everything here speaks transformers' ``Cache`` API as installed (5.x: a
``DynamicCache`` holding one ``DynamicLayer`` or ``DynamicSlidingWindowLayer`` per decoder
layer, keys and values ``[batch, heads, columns, head_dim]``), so another transformers
release needs this module changed and nothing else.

Layout: every row's real tokens are contiguous and right-aligned (left padding), so a row's
position ids and the attention mask, kept by the caller, say everything about padding. A
full-attention layer holds every column; a sliding-window layer holds only the last
``window - 1`` columns (``cumulative_length`` counts them all) and the caller's mask still
has one entry per column: transformers slices it with the layer's offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from .hf_compat import output_cache, with_cache

LayerKV = tuple[torch.Tensor, torch.Tensor]
"""Keys and values of one decoder layer, ``[batch, heads, columns, head_dim]`` each."""

_SUPPORTED_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


class UnsupportedCacheError(RuntimeError):
    """The model's KV cache has a layout this module cannot split and merge."""


@dataclass(frozen=True)
class CacheLayout:
    """Per decoder layer: ``None`` for full attention, else the sliding window size."""

    windows: tuple[int | None, ...]

    @property
    def num_layers(self) -> int:
        return len(self.windows)

    def held(self, layer: int, columns: int) -> int:
        """How many of ``columns`` columns a layer keeps (a sliding layer keeps the last ``window - 1``)."""
        window = self.windows[layer]
        return columns if window is None else min(columns, window - 1)

    def keeps_all(self, columns: int) -> bool:
        """True while every layer still holds every one of ``columns`` columns."""
        return all(self.held(layer, columns) == columns for layer in range(self.num_layers))


def probe_layout(model: torch.nn.Module) -> CacheLayout:
    """Run a two-token forward and read the cache layout; raise if it is not one we can edit.

    A cache class other than ``DynamicCache``, or a layer type other than plain full or
    sliding-window dynamic layers (chunked, quantized, linear-attention, KV-sharing...), is
    refused: splitting those by columns would give wrong answers, not errors.
    """
    ids = torch.tensor([[1, 1]], device=model.device)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    if type(cache) is not DynamicCache:
        raise UnsupportedCacheError(f"the model returns a {type(cache).__name__}, not a DynamicCache")
    fresh = new_cache_like(model)
    windows: list[int | None] = []
    for index, layer in enumerate(cache.layers):
        if type(layer) not in _SUPPORTED_LAYERS:
            raise UnsupportedCacheError(f"cache layer {index} is a {type(layer).__name__}")
        if index >= len(fresh.layers) or type(fresh.layers[index]) is not type(layer):
            raise UnsupportedCacheError("DynamicCache(config=...) does not rebuild the model's cache layers")
        windows.append(int(layer.sliding_window) if isinstance(layer, DynamicSlidingWindowLayer) else None)
    if not windows:
        raise UnsupportedCacheError("the model's cache has no layers")
    return CacheLayout(tuple(windows))


def new_cache_like(model: torch.nn.Module) -> DynamicCache:
    """An empty cache with the layer types the model itself would create."""
    return DynamicCache(config=model.config)


def columns(cache: DynamicCache) -> int:
    """Column count of a cache (sliding layers included: their cumulative length)."""
    return int(cache.get_seq_length())


def build(model: torch.nn.Module, layout: CacheLayout, layers: Sequence[LayerKV], total: int) -> DynamicCache:
    """A cache holding ``layers`` (as ``layout.held`` columns of a ``total``-column space)."""
    cache = new_cache_like(model)
    for index, (keys, values) in enumerate(layers):
        layer = cache.layers[index]
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = total
    return cache


def layers_of(cache: DynamicCache) -> list[LayerKV]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def nbytes(cache: DynamicCache | None) -> int:
    if cache is None:
        return 0
    return sum(
        layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        for layer in cache.layers
        if layer.is_initialized and layer.keys is not None
    )


def select_rows(cache: DynamicCache, index: torch.Tensor) -> None:
    """Keep only rows ``index`` (in that order), in place."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys = layer.keys[index]
            layer.values = layer.values[index]


def subset(
    model: torch.nn.Module, layout: CacheLayout, cache: DynamicCache | None, rows: Sequence[int]
) -> DynamicCache | None:
    """A new cache holding only ``rows`` of ``cache`` (which stays as it was)."""
    if cache is None:
        return None
    index = torch.tensor(list(rows), device=cache.layers[0].keys.device)
    return build(model, layout, [(k[index], v[index]) for k, v in layers_of(cache)], columns(cache))


def trim_left(cache: DynamicCache, layout: CacheLayout, drop: int) -> None:
    """Drop the first ``drop`` columns (masked out in every row), in place."""
    if drop <= 0:
        return
    total = columns(cache)
    for index, layer in enumerate(cache.layers):
        held_before = layout.held(index, total)
        held_after = layout.held(index, total - drop)
        cut = held_before - held_after
        if cut > 0:
            layer.keys = layer.keys[:, :, cut:].contiguous()
            layer.values = layer.values[:, :, cut:].contiguous()
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = total - drop


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    pad = width - tensor.shape[2]
    return tensor if pad == 0 else F.pad(tensor, (0, 0, pad, 0))


def stack_rows(
    model: torch.nn.Module, layout: CacheLayout, parts: Sequence[tuple[Sequence[LayerKV], int]]
) -> DynamicCache:
    """One cache from several caches' rows, each ``(layers, total columns)``, left-padded to the widest.

    Padding columns are zeros; the caller's attention mask must mark them 0.
    """
    total = max(part_total for _, part_total in parts)
    merged: list[LayerKV] = []
    for index in range(layout.num_layers):
        width = layout.held(index, total)
        keys = torch.cat([_left_pad(layers[index][0], width) for layers, _ in parts], dim=0)
        values = torch.cat([_left_pad(layers[index][1], width) for layers, _ in parts], dim=0)
        merged.append((keys, values))
    return build(model, layout, merged, total)


def row_columns(
    cache_layers: Sequence[LayerKV], layout: CacheLayout, total: int, row: int, start: int, stop: int
) -> list[LayerKV] | None:
    """Copies of row ``row``'s columns ``[start, stop)`` per layer (``[heads, n, head_dim]``).

    ``None`` when a sliding layer no longer holds those columns.
    """
    out: list[LayerKV] = []
    for index, (keys, values) in enumerate(cache_layers):
        held = layout.held(index, total)
        first = total - held
        if start < first:
            return None
        a, b = start - first, stop - first
        out.append((keys[row, :, a:b].clone(), values[row, :, a:b].clone()))
    return out


def from_blocks(
    model: torch.nn.Module, layout: CacheLayout, blocks: Sequence[Sequence[LayerKV]]
) -> tuple[list[LayerKV], int]:
    """One row's layers (``[1, heads, n, head_dim]``) from consecutive blocks of ``row_columns``."""
    total = sum(int(block[0][0].shape[1]) for block in blocks)
    layers: list[LayerKV] = []
    for index in range(layout.num_layers):
        keys = torch.cat([block[index][0] for block in blocks], dim=1).unsqueeze(0)
        values = torch.cat([block[index][1] for block in blocks], dim=1).unsqueeze(0)
        held = layout.held(index, total)
        layers.append((keys[:, :, total - held :], values[:, :, total - held :]))
    return layers, total


def forward_kwargs(model: torch.nn.Module, cache: DynamicCache | None) -> dict:
    """The cache keyword of a forward (none for a first chunk: the model makes its own)."""
    return {} if cache is None else with_cache(model, cache)
