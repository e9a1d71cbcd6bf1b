"""The fused LoRA forward: every adapter of a module in two matmuls, weights per request row.

PEFT computes a multi-adapter forward as a Python loop over active adapters
(2k small matmuls per module). We stack the adapters of each module once at
load time, ``A_all: [R, d_in]`` and ``B_all^T: [R, d_out]`` with ``R = sum_j r_j``
(each adapter's ``scale_j`` folded into its rows of B once), and compute

    y = W x + B_S @ (w * (A_S @ x))

where ``S`` are the rank rows of the adapters a request uses and ``w`` holds,
per batch row, ``alpha_j^l`` repeated over adapter j's ``r_j`` rows. The stacked
factors are the only copy of the adapters: every other view the engine needs
(the full set, the per-adapter view of the weighing pass) is a view of them.
Two matmuls for any k, and rows of one batch may carry different weights
(heterogeneous batches, the shape S-LoRA/Punica kernels use).

The weights of a request travel with the request: they live in a
:class:`ForwardContext` held by a :class:`contextvars.ContextVar`, which each
thread (and each asyncio task) sees separately. Nothing about a request is
written into the model, so concurrent requests cannot see each other's weights.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn


class ModuleObserver(Protocol):
    """Something that wants to see the input of LoRA modules (LoGo's probe)."""

    def observe(self, module: FusedLoraLinear, x: torch.Tensor) -> None: ...


class LayerObserver(Protocol):
    """Something that wants to see each decoder layer's output (the logit lens capture)."""

    def observe_layer(self, layer_index: int, hidden: torch.Tensor) -> None: ...


@dataclass
class SlotLora:
    """The LoRA a request applies at one module: stacked factors and per-row weights.

    When every row of the batch carries the same weights (one request, or one
    configuration), the weights are folded into ``b_t`` once and ``w`` is None: the
    decode step then costs two matmuls and nothing else.
    """

    a: torch.Tensor  # [R_S, d_in]
    b_t: torch.Tensor  # [R_S, d_out]: B transposed, weights folded in when ``w`` is None
    w: torch.Tensor | None = None  # [batch, R_S] per-row fusion weights
    keep: torch.Tensor | None = None  # [batch, R_S] bool: rows a batch row really uses


@dataclass
class RowLora:
    """At most ONE adapter per batch row (the weighing pass): per-row factors, gathered on use.

    ``a``: ``[N, r, d_in]`` and ``b_t``: ``[N, r, d_out]`` hold every adapter of the module
    (scale folded into B); when all adapters have the same rank these are views of the
    stacked factors, otherwise zero-padded copies. ``index[i]`` is row i's adapter and
    ``live[i]`` is 0 for a base row (no adapter). The gather happens in the forward, one
    module at a time, so a large model never holds the gathered factors of every module at
    once. Two batched matmuls cost ``r`` rank rows per row instead of the ``k*r`` the stacked
    path would spend on a one-hot weight vector.
    """

    a: torch.Tensor
    b_t: torch.Tensor
    index: torch.Tensor  # [batch] adapter of each row (0 for base rows, masked by ``live``)
    live: torch.Tensor  # [batch, 1, 1] 1 where the row applies its adapter, 0 for base rows


@dataclass
class ForwardContext:
    """Everything one forward pass needs to know about the request(s) in its batch."""

    slots: list[SlotLora | RowLora | None] = field(default_factory=list)
    module_observer: ModuleObserver | None = None
    layer_observer: LayerObserver | None = None


_ACTIVE: ContextVar[ForwardContext | None] = ContextVar("qaflora_forward_context", default=None)


@contextlib.contextmanager
def activate(context: ForwardContext | None) -> Iterator[None]:
    """Run the block with ``context`` as the current request's fusion state (this thread/task only)."""
    token = _ACTIVE.set(context)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current_context() -> ForwardContext | None:
    return _ACTIVE.get()


class FusedLoraLinear(nn.Module):
    """A base linear (``nn.Linear`` or GPT-2's ``Conv1D``) plus the stacked LoRAs of every adapter.

    It replaces PEFT's ``lora.Linear`` after loading. With no active context it is
    exactly the base layer, so the model outside a request is the base model.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        *,
        slot: int,
        name: str,
        layer_index: int | None,
        lora_a: torch.Tensor,
        lora_b_t: torch.Tensor,
        row_adapter: torch.Tensor,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.slot = slot
        self.module_name = name
        self.layer_index = layer_index
        self.register_buffer("lora_a", lora_a, persistent=False)  # [R_all, d_in]
        self.register_buffer("lora_b_t", lora_b_t, persistent=False)  # [R_all, d_out]: (scale_j B_j)^T
        self.register_buffer("row_adapter", row_adapter, persistent=False)  # [R_all] adapter index

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        context = _ACTIVE.get()
        if context is None:
            return result
        if context.module_observer is not None:
            context.module_observer.observe(self, x)
        lora = context.slots[self.slot] if context.slots else None
        if lora is None:
            return result
        if isinstance(lora, RowLora):
            hidden = torch.bmm(x.to(lora.a.dtype), lora.a[lora.index].transpose(1, 2)) * lora.live
            return result + torch.bmm(hidden, lora.b_t[lora.index]).to(result.dtype)
        hidden = F.linear(x if x.dtype == lora.a.dtype else x.to(lora.a.dtype), lora.a)
        if lora.w is not None:
            if hidden.dim() == 3:
                hidden = hidden * lora.w.unsqueeze(1)
                if lora.keep is not None:  # 0 * inf would leak one row's overflow into another row
                    hidden = torch.where(lora.keep.unsqueeze(1), hidden, 0.0)
            else:
                hidden = hidden * lora.w
        if result.dtype == hidden.dtype and result.is_contiguous() and not torch.is_grad_enabled():
            # fused multiply-add into the base output (a fresh tensor nobody else holds)
            result.view(-1, result.shape[-1]).addmm_(hidden.reshape(-1, hidden.shape[-1]), lora.b_t)
            return result
        return result + torch.matmul(hidden, lora.b_t).to(result.dtype)

    def adapter_delta(self, x: torch.Tensor, num_adapters: int) -> torch.Tensor:
        """Per-adapter outputs ``scale_j * B_j A_j x`` for every adapter: ``[..., num_adapters, d_out]``.

        LoGo scores each adapter by its own projection output. One masked matmul
        computes all of them: row r of the rank dimension only feeds the adapter
        it belongs to. Adapters absent from this module get zeros.
        """
        hidden = F.linear(x.to(self.lora_a.dtype), self.lora_a)  # [..., R_all]
        owner = F.one_hot(self.row_adapter, num_adapters).T.to(hidden.dtype)  # [N, R_all]
        return torch.matmul(hidden.unsqueeze(-2) * owner, self.lora_b_t)

    def extra_repr(self) -> str:
        return f"slot={self.slot}, layer={self.layer_index}, rank_rows={self.lora_a.shape[0]}"


StackedFactors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""A module's factors for one adapter subset: (A_S ``[R_S, d_in]``, B_S^T ``[R_S, d_out]``, local
adapter index of each rank row)."""


def _slot(
    a: torch.Tensor, b_t: torch.Tensor, row_weights: torch.Tensor, *, uniform: bool, isolate_rows: bool
) -> SlotLora | None:
    """One module's slot for a batch, as cheap as the batch allows (None: nothing to add).

    When every row carries the same weights (one request, or one configuration) the weights
    are folded into ``B^T`` and the step costs two matmuls. Folding is only safe where no rank
    row has weight 0 (``0 * inf`` would turn an overflowing adapter into NaN), so zero-weight
    rank rows are dropped from the factors instead of multiplied by 0. Rows of different
    weights keep the per-row multiply, and the isolating mask only where some row really
    leaves a rank row out.
    """
    if uniform:
        weights = row_weights[0]
        used = weights != 0
        if not bool(used.any()):
            return None
        if not bool(used.all()):
            a, b_t, weights = a[used], b_t[used], weights[used]
        return SlotLora(a=a, b_t=b_t * weights.unsqueeze(1))
    keep = None
    if isolate_rows:
        keep = row_weights != 0
        if bool(keep.all()):
            keep = None
    return SlotLora(a=a, b_t=b_t, w=row_weights, keep=keep)


class AdapterBank:
    """All fused modules of a model, and the stacked factors of adapter subsets.

    ``adapter_names`` fixes the global index of each adapter. Subsets of adapters
    a request uses are stacked once and cached (LRU), so a query that selects
    k of N adapters pays k*r rank rows per module, not N*r.
    """

    def __init__(
        self, modules: list[FusedLoraLinear], adapter_names: list[str], num_layers: int, cache_size: int = 32
    ) -> None:
        self.modules = modules
        self.adapter_names = list(adapter_names)
        self.num_layers = num_layers
        self._cache: OrderedDict[tuple[int, ...], list[StackedFactors | None]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._per_adapter_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # views or padded copies

    @property
    def num_slots(self) -> int:
        return len(self.modules)

    def index(self, name: str) -> int:
        return self.adapter_names.index(name)

    def _stacked(self, adapters: tuple[int, ...]) -> list[StackedFactors | None]:
        """Per slot: (A_S, B_S^T, local adapter index of each row), or None.

        The set of every adapter of a module returns the module's own factors (no copy);
        a strict subset is gathered once and kept in the LRU cache.
        """
        with self._lock:
            cached = self._cache.get(adapters)
            if cached is not None:
                self._cache.move_to_end(adapters)
                return cached
        local_of = torch.full((len(self.adapter_names),), -1, dtype=torch.long)
        local_of[list(adapters)] = torch.arange(len(adapters))
        stacked: list[StackedFactors | None] = []
        for module in self.modules:
            local = local_of.to(module.row_adapter.device)[module.row_adapter]
            rows = (local >= 0).nonzero().flatten()
            if rows.numel() == 0:
                stacked.append(None)
            elif rows.numel() == module.row_adapter.numel() and torch.equal(local[rows], module.row_adapter):
                stacked.append((module.lora_a, module.lora_b_t, local))
            else:
                a, b_t = module.lora_a[rows].contiguous(), module.lora_b_t[rows].contiguous()
                stacked.append((a, b_t, local[rows]))
        with self._lock:
            self._cache[adapters] = stacked
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return stacked

    def context(
        self, adapters: list[int], weights: torch.Tensor, *, isolate_rows: bool = False
    ) -> ForwardContext:
        """Build the forward context for a batch.

        ``adapters``: global indices of the adapters the batch uses (the union over rows).
        ``weights``: ``[batch, len(adapters), num_layers]`` fusion weights per row.
        ``isolate_rows``: mask out, per batch row, the adapters that row does not use,
        so an adapter that overflows on one row cannot turn another row into NaN
        (``0 * inf``); used when rows carry different adapter sets.
        Modules outside the decoder layers (rare) use each row's mean weight over layers.
        """
        if not adapters:
            return ForwardContext(slots=[None] * self.num_slots)
        stacked = self._stacked(tuple(adapters))
        uniform = weights.shape[0] == 1 or bool((weights == weights[:1]).all())
        slots: list[SlotLora | RowLora | None] = []
        for module, entry in zip(self.modules, stacked, strict=True):
            if entry is None:
                slots.append(None)
                continue
            a, b_t, local = entry
            layer = module.layer_index
            layer_weights = weights.mean(dim=2) if layer is None else weights[:, :, layer]
            row_weights = layer_weights.to(device=a.device, dtype=a.dtype)[:, local]
            slots.append(_slot(a, b_t, row_weights, uniform=uniform, isolate_rows=isolate_rows))
        return ForwardContext(slots=slots)

    def _per_adapter(self, module: FusedLoraLinear) -> tuple[torch.Tensor, torch.Tensor]:
        """One module's factors as ``[N, r, d]`` per adapter, for the weighing pass.

        The usual case (every adapter at this module, all of one rank, stacked in catalog
        order) is a free view of the stacked factors. Mixed ranks or adapters missing from
        the module need a zero-padded copy. Either is worked out once per module and cached:
        the weighing pass asks for every module on every query.
        """
        key = module.slot
        with self._lock:
            cached = self._per_adapter_cache.get(key)
        if cached is not None:
            return cached
        n = len(self.adapter_names)
        owners = module.row_adapter
        ranks = torch.bincount(owners, minlength=n)
        r_max = int(ranks.max())
        d_in, d_out = module.lora_a.shape[1], module.lora_b_t.shape[1]
        in_order = torch.equal(owners, torch.arange(n, device=owners.device).repeat_interleave(r_max))
        if bool((ranks == r_max).all()) and in_order:
            a, b_t = module.lora_a.view(n, r_max, d_in), module.lora_b_t.view(n, r_max, d_out)
        else:
            a = module.lora_a.new_zeros(n, r_max, d_in)
            b_t = module.lora_b_t.new_zeros(n, r_max, d_out)
            for adapter in range(n):
                rows = (owners == adapter).nonzero().flatten()
                if rows.numel():
                    a[adapter, : rows.numel()] = module.lora_a[rows]
                    b_t[adapter, : rows.numel()] = module.lora_b_t[rows]
        with self._lock:
            self._per_adapter_cache[key] = (a, b_t)
        return a, b_t

    def row_context(self, row_adapter: list[int | None]) -> ForwardContext:
        """Context where batch row i applies only adapter ``row_adapter[i]`` at full scale (None = base)."""
        index = torch.tensor([0 if a is None else a for a in row_adapter])
        live = torch.tensor([0.0 if a is None else 1.0 for a in row_adapter]).view(-1, 1, 1)
        slots: list[SlotLora | RowLora | None] = []
        for module in self.modules:
            a, b_t = self._per_adapter(module)
            slots.append(
                RowLora(a=a, b_t=b_t, index=index.to(a.device), live=live.to(device=a.device, dtype=a.dtype))
            )
        return ForwardContext(slots=slots)

    def memory_bytes(self) -> int:
        """Bytes held by the stacked LoRA factors (not the per-subset caches)."""
        return sum(
            m.lora_a.numel() * m.lora_a.element_size() + m.lora_b_t.numel() * m.lora_b_t.element_size()
            for m in self.modules
        )
