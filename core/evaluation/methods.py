"""The methods compared by ``qaflora eval``, each a way to answer a list of zoo queries.

Engine methods differ only in the per-query fusion options they pass; Arrow runs through
PEFT; the oracle pair searches a weight grid per table cell with the labels in hand (an
upper bound, not a method a user can run).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine import FusionEngine
from ..results import FusionWeights
from ..zoo.world import ZooExample, is_correct
from .arrow import ArrowRunner
from .centroid import CentroidRouter
from .tasks import cell_of, relevant_adapters


@dataclass
class MethodOutput:
    answers: list[str]
    weights: list[FusionWeights | None]
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalContext:
    """Shared state of one evaluation run (the engine and lazily built baselines)."""

    engine: FusionEngine
    base_path: Any
    adapter_paths: dict[str, Any]
    max_new_tokens: int = 6
    device: str = "cpu"
    _centroid: CentroidRouter | None = None
    _arrow: dict[int, ArrowRunner] = field(default_factory=dict)

    def centroid(self) -> CentroidRouter:
        if self._centroid is None:
            self._centroid = CentroidRouter(self.engine)
        return self._centroid

    def arrow(self, top_k: int) -> ArrowRunner:
        if top_k not in self._arrow:
            self._arrow[top_k] = ArrowRunner(self.base_path, self.adapter_paths, top_k, self.device)
        return self._arrow[top_k]


Runner = Callable[[EvalContext, Sequence[ZooExample]], MethodOutput]


@dataclass(frozen=True)
class Method:
    name: str
    run: Runner
    over: str  # "pair" (the relevant adapters), "all" (the whole catalog), "one" or "none"


def paper_unless_named(options: dict[str, Any]) -> dict[str, Any]:
    """qa-FLoRA rows are the paper's method: ``policy="shares"`` unless the row names a policy."""
    if options.get("mode") in ("qaflora", "logo") and "policy" not in options:
        return {**options, "policy": "shares"}
    return options


def engine_method(name: str, over: str, options: Callable[[ZooExample], dict[str, Any]]) -> Method:
    def run(ctx: EvalContext, items: Sequence[ZooExample]) -> MethodOutput:
        start = time.perf_counter()
        results = ctx.engine.generate_batch(
            [item.messages for item in items],
            per_query=[paper_unless_named(options(item)) for item in items],
            max_new_tokens=ctx.max_new_tokens,
        )
        return MethodOutput(
            [r.text for r in results], [r.weights for r in results], time.perf_counter() - start
        )

    return Method(name, run, over)


def centroid_method(name: str, over: str) -> Method:
    def run(ctx: EvalContext, items: Sequence[ZooExample]) -> MethodOutput:
        start = time.perf_counter()
        router = ctx.centroid()
        per_query = []
        for item in items:
            candidates = relevant_adapters(item) if over == "pair" else list(router.centroids)
            per_query.append({"mode": "oracle", "oracle_weights": router.weights(item.messages, candidates)})
        results = ctx.engine.generate_batch(
            [i.messages for i in items], per_query=per_query, max_new_tokens=ctx.max_new_tokens
        )
        return MethodOutput(
            [r.text for r in results], [r.weights for r in results], time.perf_counter() - start
        )

    return Method(name, run, over)


def arrow_method(name: str, top_k: int) -> Method:
    def run(ctx: EvalContext, items: Sequence[ZooExample]) -> MethodOutput:
        runner = ctx.arrow(top_k)
        start = time.perf_counter()
        answers = runner.generate([i.messages for i in items], ctx.max_new_tokens)
        return MethodOutput(answers, [None] * len(items), time.perf_counter() - start)

    return Method(name, run, "all")


def oracle_pair_method(grid: Sequence[float]) -> Method:
    """Best (w_task, w_language) on ``grid`` per table cell, chosen with the labels."""

    def run(ctx: EvalContext, items: Sequence[ZooExample]) -> MethodOutput:
        start = time.perf_counter()
        answers: list[str] = [""] * len(items)
        weights: list[FusionWeights | None] = [None] * len(items)
        chosen: dict[str, tuple[float, float]] = {}
        cells: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            cells.setdefault(cell_of(item), []).append(index)
        for cell, indices in cells.items():
            best: tuple[int, tuple[float, float], list] | None = None
            for w_task, w_lang in itertools.product(grid, grid):
                results = ctx.engine.generate_batch(
                    [items[i].messages for i in indices],
                    per_query=[_pair_weights(items[i], w_task, w_lang) for i in indices],
                    max_new_tokens=ctx.max_new_tokens,
                )
                correct = sum(is_correct(r.text, items[i]) for r, i in zip(results, indices, strict=True))
                if best is None or correct > best[0]:
                    best = (correct, (w_task, w_lang), results)
            assert best is not None
            chosen[cell] = best[1]
            for i, result in zip(indices, best[2], strict=True):
                answers[i], weights[i] = result.text, result.weights
        return MethodOutput(
            answers,
            weights,
            time.perf_counter() - start,
            notes={"grid": list(grid), "chosen": {c: list(w) for c, w in chosen.items()}},
        )

    return Method("oracle pair (grid, labels)", run, "pair")


def _pair_weights(item: ZooExample, w_task: float, w_lang: float) -> dict[str, Any]:
    task, lang = relevant_adapters(item)
    return {"mode": "oracle", "oracle_weights": {task: w_task, lang: w_lang}}


CALIBRATED_LOGO = {"logo_modules": "all", "logo_calibration": "content_free"}
"""Our LoGo variant: score averaged over every LoRA module, divided by the content-free score."""

RELEVANT_UNIT = {
    "mode": "qaflora",
    "policy": "relevant",
    "strength": "unit",
    "relevance": "output",
    "sure_base": "off",
    "fit_blocks": 0,
}
"""Relevance policy: adapters moving the next-token distribution by >= 0.5 nats (top 2), each at 1.0."""
RELEVANT_FIT = {
    "mode": "qaflora",
    "policy": "relevant",
    "strength": "fit",
    "fit_target": "logprobs",
    "relevance": "output",
    "sure_base": "off",
    "fit_blocks": 0,
}
"""The same plus the composition check (product-of-experts target on the log-probs)."""
RELEVANT_FIT_MIXED = {**RELEVANT_FIT, "fit_target": "mixed"}
"""Composition check aiming at the mean of the log-prob and the hidden-state sum of shifts."""
RELEVANT_DEPTH_GAIN = {**RELEVANT_FIT_MIXED, "relevance": "depth_gain"}
"""The same with relevance measured as the drift an adapter adds with depth (the default until
2026-12-02)."""
RELEVANT_SURE_BASE = {**RELEVANT_DEPTH_GAIN, "sure_base": 0.98, "sure_after_first": False}
"""The same where only language adapters can override a base sure of its next token."""
RELEVANT_SURE_FIRST = {**RELEVANT_SURE_BASE, "sure_after_first": True}
"""The same one step on (nor a base with the strongest kept adapter): the default until 2026-12-02."""
RELEVANT_BLOCKS = {**RELEVANT_SURE_FIRST, "fit_blocks": 4}
"""The same with the composition check also trying each kept adapter off in one of 4 layer blocks:
the default."""


def policy_methods(with_pair: bool) -> list[Method]:
    """The policy="relevant" rows (benchmarks/POLICY.md), over the whole catalog."""
    methods = [
        engine_method("relevant adapters, unit strength", "all", lambda i: dict(RELEVANT_UNIT)),
        engine_method("relevant adapters + composition check", "all", lambda i: dict(RELEVANT_FIT)),
        engine_method(
            "relevant adapters + composition check (mixed target)", "all", lambda i: dict(RELEVANT_FIT_MIXED)
        ),
        engine_method(
            "relevant adapters by depth gain + composition check (mixed target)",
            "all",
            lambda i: dict(RELEVANT_DEPTH_GAIN),
        ),
        engine_method(
            "relevant adapters by depth gain + composition check (mixed target) + sure base 0.98",
            "all",
            lambda i: dict(RELEVANT_SURE_BASE),
        ),
        engine_method(
            "relevant adapters by depth gain + composition check (mixed target) + sure base 0.98 after first",
            "all",
            lambda i: dict(RELEVANT_SURE_FIRST),
        ),
        engine_method(
            "relevant adapters by depth gain + composition check (mixed target) + sure base 0.98 after first"
            " + layer blocks 4 (default)",
            "all",
            lambda i: dict(RELEVANT_BLOCKS),
        ),
        engine_method(
            "relevant adapters by depth gain + composition check (mixed target) + sure base 0.95",
            "all",
            lambda i: {**RELEVANT_SURE_BASE, "sure_base": 0.95},
        ),
        engine_method(
            "relevant adapters by depth gain + composition check (log-prob target)",
            "all",
            lambda i: {**RELEVANT_DEPTH_GAIN, "fit_target": "logprobs"},
        ),
    ]
    if with_pair:
        methods.append(
            engine_method(
                "composition check over the labelled pair",
                "pair",
                lambda i: {**RELEVANT_FIT, "adapters": relevant_adapters(i), "relevance_floor": 0.0},
            )
        )
    return methods


def composite_methods(grid: Sequence[float], with_arrow: bool, top_k: int = 2) -> list[Method]:
    pair = relevant_adapters
    methods = [
        engine_method("base", "none", lambda i: {"mode": "base"}),
        engine_method("task adapter only", "one", lambda i: {"mode": "single", "adapters": pair(i)[:1]}),
        engine_method("language adapter only", "one", lambda i: {"mode": "single", "adapters": pair(i)[1:]}),
        engine_method("static pair (0.5/0.5)", "pair", lambda i: {"mode": "static", "adapters": pair(i)}),
        centroid_method("centroid pair", "pair"),
    ]
    if with_arrow:
        methods.append(arrow_method(f"Arrow (PEFT, top-{top_k}, all adapters)", top_k))
    methods += [
        engine_method("qa-FLoRA pair", "pair", lambda i: {"mode": "qaflora", "adapters": pair(i)}),
        engine_method(
            "qa-FLoRA pair, max-normalized",
            "pair",
            lambda i: {"mode": "qaflora", "adapters": pair(i), "normalize": "max"},
        ),
        engine_method("qa-FLoRA all adapters", "all", lambda i: {"mode": "qaflora"}),
        engine_method(
            "qa-FLoRA all adapters, max-normalized", "all", lambda i: {"mode": "qaflora", "normalize": "max"}
        ),
        *policy_methods(with_pair=True),
        engine_method(f"LoGo top-{top_k} + qa-FLoRA", "all", lambda i: {"mode": "qaflora", "top_k": top_k}),
        engine_method(
            f"LoGo top-{top_k} calibrated + qa-FLoRA",
            "all",
            lambda i: {"mode": "qaflora", "top_k": top_k, **CALIBRATED_LOGO},
        ),
        engine_method(
            f"LoGo top-{top_k} calibrated + qa-FLoRA, max-normalized",
            "all",
            lambda i: {"mode": "qaflora", "top_k": top_k, "normalize": "max", **CALIBRATED_LOGO},
        ),
        oracle_pair_method(grid),
        engine_method(
            "ablation: qa-FLoRA pair, mean token",
            "pair",
            lambda i: {"mode": "qaflora", "adapters": pair(i), "token": "mean"},
        ),
        engine_method(
            "ablation: qa-FLoRA pair, JS",
            "pair",
            lambda i: {"mode": "qaflora", "adapters": pair(i), "divergence": "js"},
        ),
        engine_method(
            "ablation: qa-FLoRA pair, cosine",
            "pair",
            lambda i: {"mode": "qaflora", "adapters": pair(i), "divergence": "cosine"},
        ),
        engine_method(
            "ablation: qa-FLoRA pair, Euclidean",
            "pair",
            lambda i: {"mode": "qaflora", "adapters": pair(i), "divergence": "euclidean"},
        ),
    ]
    return methods


def stream_methods(with_arrow: bool, ks: Sequence[int] = (1, 2)) -> list[Method]:
    methods = [
        engine_method("static over all", "all", lambda i: {"mode": "static"}),
        centroid_method("centroid over all", "all"),
        engine_method("qa-FLoRA over all", "all", lambda i: {"mode": "qaflora"}),
        engine_method(
            "qa-FLoRA over all, max-normalized", "all", lambda i: {"mode": "qaflora", "normalize": "max"}
        ),
        *policy_methods(with_pair=False),
    ]
    for k in ks:
        methods.append(
            engine_method(f"LoGo top-{k} (LoGo weights)", "all", lambda i, k=k: {"mode": "logo", "top_k": k})
        )
        methods.append(
            engine_method(f"LoGo top-{k} + qa-FLoRA", "all", lambda i, k=k: {"mode": "qaflora", "top_k": k})
        )
        methods.append(
            engine_method(
                f"LoGo top-{k} calibrated (LoGo weights)",
                "all",
                lambda i, k=k: {"mode": "logo", "top_k": k, **CALIBRATED_LOGO},
            )
        )
        methods.append(
            engine_method(
                f"LoGo top-{k} calibrated + qa-FLoRA",
                "all",
                lambda i, k=k: {"mode": "qaflora", "top_k": k, **CALIBRATED_LOGO},
            )
        )
    if with_arrow:
        methods.append(arrow_method(f"Arrow (PEFT, top-{max(ks)})", max(ks)))
    methods.append(
        engine_method(
            "oracle single adapter", "one", lambda i: {"mode": "single", "adapters": relevant_adapters(i)[:1]}
        )
    )
    return methods


def generic_methods() -> list[Method]:
    """Generic English (no adapter made for it): every method should answer like the base."""
    return [
        engine_method("base", "none", lambda i: {"mode": "base"}),
        engine_method("qa-FLoRA over all", "all", lambda i: {"mode": "qaflora"}),
        engine_method(
            "qa-FLoRA over all, max-normalized", "all", lambda i: {"mode": "qaflora", "normalize": "max"}
        ),
        *policy_methods(with_pair=False),
    ]
