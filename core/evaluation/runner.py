"""Run the methods on the zoo's held-out queries and score them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..results import FusionWeights
from ..zoo.world import ZooExample, is_correct
from .methods import EvalContext, Method, MethodOutput
from .tasks import cell_of, relevant_adapters


@dataclass
class MethodScore:
    name: str
    over: str
    accuracy_by_cell: dict[str, float]
    accuracy: float  # mean over cells
    routing: float | None  # share of queries whose relevant adapters get the largest weights
    seconds_per_query: float
    notes: dict = field(default_factory=dict)


def routed_correctly(weights: FusionWeights | None, example: ZooExample) -> bool | None:
    """Did the method route this query to the adapters it needs?

    Weights that come from a selection (``policy="relevant"``: ``relevance`` is set) must use
    exactly the needed adapters -- none at all for generic text. Weights spread over every
    candidate (shares) count as routed when the needed adapters carry the largest mean weights.
    """
    if weights is None:
        return None
    needed = relevant_adapters(example)
    if weights.relevance is not None:
        return set(weights.adapters) == set(needed)
    if not weights.adapters:
        return None
    ranked = [name for name, _ in weights.ranked()]
    return set(ranked[: len(needed)]) == set(needed)


def score(
    method: Method, ctx: EvalContext, items: Sequence[ZooExample], reference: Sequence[str] | None = None
) -> tuple[MethodScore, MethodOutput]:
    """Accuracy per cell, routing and time of ``method``; ``reference`` answers (the base's, for
    generic text) add the share of answers identical to them as ``notes["same_as_reference"]``."""
    output = method.run(ctx, items)
    correct_by_cell: dict[str, list[bool]] = {}
    routes: list[bool] = []
    for item, answer, weights in zip(items, output.answers, output.weights, strict=True):
        correct_by_cell.setdefault(cell_of(item), []).append(is_correct(answer, item))
        if method.over == "all":
            routed = routed_correctly(weights, item)
            if routed is not None:
                routes.append(routed)
    by_cell = {cell: sum(v) / len(v) for cell, v in correct_by_cell.items()}
    notes = dict(output.notes)
    if reference is not None:
        same = [a == r for a, r in zip(output.answers, reference, strict=True)]
        notes["same_as_reference"] = sum(same) / len(same)
    return (
        MethodScore(
            name=method.name,
            over=method.over,
            accuracy_by_cell=by_cell,
            accuracy=sum(by_cell.values()) / len(by_cell),
            routing=(sum(routes) / len(routes)) if routes else None,
            seconds_per_query=output.seconds / len(items),
            notes=notes,
        ),
        output,
    )


def run_methods(
    methods: Sequence[Method],
    ctx: EvalContext,
    items: Sequence[ZooExample],
    progress: bool = True,
    reference: str | None = None,
) -> tuple[list[MethodScore], dict[str, list]]:
    """Score every method; ``reference`` names a method (run first) whose answers the others are
    compared with, token for token (``notes["same_as_reference"]``)."""
    scores, weights = [], {}
    reference_answers = None
    ordered = sorted(methods, key=lambda m: m.name != reference) if reference else list(methods)
    for method in tqdm(ordered, desc="methods", disable=not progress):
        result, output = score(method, ctx, items, reference_answers)
        if reference is not None and method.name == reference:
            reference_answers = output.answers
        scores.append(result)
        weights[method.name] = output.weights
    return scores, weights


def selection_recall(
    ctx: EvalContext, items: Sequence[ZooExample], ks: Sequence[int], **logo_options: Any
) -> dict[int, float]:
    """LoGo recall@k: share of each query's relevant adapters among the k best LoGo scores."""
    all_weights = ctx.engine.fusion_weights_batch(
        [i.messages for i in items], mode="logo", top_k=None, **logo_options
    )
    recall = {k: 0.0 for k in ks}
    for item, weights in zip(items, all_weights, strict=True):
        needed = set(relevant_adapters(item))
        ranked = sorted(weights.selection_scores, key=lambda n: -weights.selection_scores[n])
        for k in ks:
            recall[k] += len(needed & set(ranked[:k])) / len(needed)
    return {k: v / len(items) for k, v in recall.items()}


def mean_weights_by_cell(
    items: Sequence[ZooExample], weights: Sequence[FusionWeights | None]
) -> dict[str, FusionWeights]:
    """Average per-layer weight matrix per cell (all queries of a cell share the same adapters)."""
    grouped: dict[str, list[FusionWeights]] = {}
    for item, w in zip(items, weights, strict=True):
        if w is not None and w.adapters:
            grouped.setdefault(cell_of(item), []).append(w)
    averaged = {}
    for cell, group in grouped.items():
        names = group[0].adapters
        same = [w for w in group if w.adapters == names]
        averaged[cell] = FusionWeights(
            adapters=names, matrix=torch.stack([w.matrix for w in same]).mean(0), mode=group[0].mode
        )
    return averaged
