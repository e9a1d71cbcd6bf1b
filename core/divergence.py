"""Divergences between the base distribution and each adapter's, and the weights derived from them.

qa-FLoRA's premise: an adapter relevant to the query moves the model's
next-token distribution away from the base's more than an irrelevant one does.
At each layer l, ``div_j^l = KL(p_base^l || q_j^l)`` (or an ablation's
distance), and the fusion weight is the share ``div_j^l / sum_i div_i^l``.
"""

from __future__ import annotations

import torch

from .config import Divergence


def divergences(
    base_logprobs: torch.Tensor, adapter_logprobs: torch.Tensor, kind: Divergence
) -> torch.Tensor:
    """Divergence of each adapter from the base, per layer.

    ``base_logprobs``: ``[L, V]``; ``adapter_logprobs``: ``[k, L, V]``; returns ``[k, L]``.
    KL and JS compare distributions; cosine and Euclidean (the paper's ablations)
    compare the probability vectors as points.
    """
    base = base_logprobs.unsqueeze(0).float()
    adapter = adapter_logprobs.float()
    if kind == "kl":
        p = base.exp()
        return (p * (base - adapter)).sum(-1).clamp_min(0.0)
    if kind == "js":
        p, q = base.exp(), adapter.exp()
        m = (0.5 * (p + q)).clamp_min(torch.finfo(torch.float32).tiny).log()
        return (0.5 * (p * (base - m)).sum(-1) + 0.5 * (q * (adapter - m)).sum(-1)).clamp_min(0.0)
    if kind == "cosine":
        p, q = base.exp(), adapter.exp()
        return (1.0 - torch.nn.functional.cosine_similarity(p, q, dim=-1)).clamp_min(0.0)
    if kind == "euclidean":
        return (base.exp() - adapter.exp()).norm(dim=-1)
    raise ValueError(f"unknown divergence {kind!r}")


def normalize_per_layer(div: torch.Tensor, uniform_below: float, how: str = "sum") -> torch.Tensor:
    """Per-layer weights from divergences; uniform where a layer's divergences are ~0.

    ``how="sum"`` is the paper's ``alpha_j^l = div_j^l / sum_i div_i^l`` (columns sum to 1).
    ``how="max"`` divides by the layer's largest divergence instead: the same relative
    shares, but the most divergent adapter keeps its full trained strength (1.0), as
    each LoRA was trained to be applied at scale 1 (our variant, not the paper's).

    Early layers often leave the logit lens unchanged for every adapter: dividing
    by ~0 would amplify rounding noise into arbitrary weights, so those layers
    fall back to uniform weights (1/k for "sum", 1 for "max"). Never returns NaN
    for finite input.
    """
    k = div.shape[0]
    scale = div.sum(dim=0, keepdim=True) if how == "sum" else div.amax(dim=0, keepdim=True)
    flat = div.sum(dim=0, keepdim=True) <= uniform_below
    safe = torch.where(flat, torch.ones_like(scale), scale)
    fallback = 1.0 / k if how == "sum" else 1.0
    return torch.where(flat, torch.full_like(div, fallback), div / safe)


def non_finite_cells(div: torch.Tensor) -> tuple[list[int], list[int]]:
    """Adapter rows and layer columns holding NaN/inf (empty lists when all finite)."""
    bad = ~torch.isfinite(div)
    if not bad.any():
        return [], []
    rows = sorted({int(i) for i in bad.nonzero()[:, 0]})
    cols = sorted({int(i) for i in bad.nonzero()[:, 1]})
    return rows, cols
