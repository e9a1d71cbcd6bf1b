"""From a query and its FusionConfig to the adapters and per-layer weights it generates with.

One function, :func:`plan_batch`, serves both the direct ``fusion_weights`` call
and the batching worker, so a query gets the same weights whichever way it
came in. Preselection and weighing are batched across the queries given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .adapters import LoadedModel
from .config import FusionConfig
from .errors import ConfigError, UnknownAdapterError
from .policy import (
    StrengthQuery,
    best_strengths,
    block_candidates,
    call_target,
    depth_gain,
    fit_target,
    layer_matrix,
    next_token_kl,
    score_strengths,
    select_relevant,
    select_with_hint,
    strength_grid,
)
from .preselect import SelectItem, select
from .prompting import EncodedPrompt
from .results import FusionWeights
from .toolcalls import OPEN_TAG
from .weighing import WeighItem, WeighOutcome, weigh


@dataclass
class PlanItem:
    prompt: EncodedPrompt
    config: FusionConfig


@dataclass
class Plan:
    """The fusion decision for one query: global adapter indices and their weights [k, L]."""

    adapters: list[int]
    weights: FusionWeights
    preselect_s: float = 0.0
    weigh_s: float = 0.0
    error: Exception | None = None


def candidates_of(loaded: LoadedModel, config: FusionConfig) -> list[int]:
    """Global indices of the adapters a config allows, validating names."""
    names = loaded.bank.adapter_names
    if config.adapters is None:
        return list(range(len(names)))
    unknown = [n for n in config.adapters if n not in names]
    if unknown:
        raise UnknownAdapterError(unknown, names)
    return [names.index(n) for n in config.adapters]


def oracle_matrix(loaded: LoadedModel, config: FusionConfig) -> tuple[list[int], torch.Tensor]:
    """Caller-given weights: a float per adapter (all layers) or one float per layer."""
    assert config.oracle_weights is not None
    names = loaded.bank.adapter_names
    num_layers = loaded.anatomy.num_layers
    unknown = [n for n in config.oracle_weights if n not in names]
    if unknown:
        raise UnknownAdapterError(unknown, names)
    adapters, rows = [], []
    for name, value in config.oracle_weights.items():
        if isinstance(value, list):
            if len(value) != num_layers:
                raise ConfigError(
                    f"oracle weights for {name!r} have {len(value)} entries; "
                    f"the model has {num_layers} layers"
                )
            row = torch.tensor(value, dtype=torch.float32)
        else:
            row = torch.full((num_layers,), float(value))
        if not torch.isfinite(row).all():
            raise ConfigError(f"oracle weights for {name!r} are not finite")
        adapters.append(names.index(name))
        rows.append(row)
    return adapters, torch.stack(rows)


def validate_config(loaded: LoadedModel, config: FusionConfig) -> None:
    """Raise now (in the caller's thread) for names or shapes the plan would reject later."""
    candidates_of(loaded, config)
    if config.mode == "oracle":
        oracle_matrix(loaded, config)


def plan_batch(
    loaded: LoadedModel,
    items: list[PlanItem],
    content_free: EncodedPrompt | None = None,
    weigher: Callable[[LoadedModel, list[WeighItem]], list[WeighOutcome]] = weigh,
) -> list[Plan]:
    """Plans for several queries; an error in one query is returned in its Plan, not raised.

    ``content_free``: the reference prompt of calibrated LoGo preselection.
    ``weigher``: runs the qa-FLoRA weighing pass (the continuous batcher passes one that
    reuses the KV of a conversation's earlier turns).
    """
    num_layers = loaded.anatomy.num_layers
    names = loaded.bank.adapter_names
    plans: list[Plan | None] = [None] * len(items)
    candidates: list[list[int]] = []
    for index, item in enumerate(items):
        try:
            candidates.append(candidates_of(loaded, item.config))
        except Exception as exc:
            candidates.append([])
            plans[index] = _failed(exc, num_layers, item.config.mode)

    # Stage 1: LoGo preselection, for modes that choose among candidates.
    selection_scores: dict[int, dict[int, float]] = {}
    to_select = [
        i
        for i, item in enumerate(items)
        if plans[i] is None and _wants_selection(item.config, len(candidates[i]))
    ]
    preselect_s = 0.0
    if to_select:
        start = time.perf_counter()
        selections = select(
            loaded,
            [
                SelectItem(
                    prompt=items[i].prompt,
                    candidates=candidates[i],
                    top_k=items[i].config.top_k or len(candidates[i]),
                    signal=items[i].config.logo_signal,
                    modules=items[i].config.logo_modules,
                    calibration=items[i].config.logo_calibration,
                )
                for i in to_select
            ],
            content_free,
        )
        preselect_s = time.perf_counter() - start
        for i, selection in zip(to_select, selections, strict=True):
            candidates[i] = selection.selected
            selection_scores[i] = selection.scores

    # Stage 2: qa-FLoRA weighing, batched over every query in qaflora mode.
    to_weigh = [i for i, item in enumerate(items) if plans[i] is None and item.config.mode == "qaflora"]
    weigh_s = 0.0
    outcomes = {}
    decided: dict[int, RelevantDecision] = {}
    if to_weigh:
        start = time.perf_counter()
        results = weigher(
            loaded, [WeighItem(items[i].prompt, candidates[i], items[i].config) for i in to_weigh]
        )
        outcomes = dict(zip(to_weigh, results, strict=True))
        # Stage 3: the policy="relevant" decision (and its composition check, batched).
        decided = _decide_relevant(loaded, items, outcomes, candidates)
        weigh_s = time.perf_counter() - start

    for index, item in enumerate(items):
        if plans[index] is not None:
            continue
        config = item.config
        chosen = candidates[index]
        divergences = None
        relevance = None
        try:
            if config.mode == "base":
                chosen, matrix = [], torch.zeros(0, num_layers)
            elif config.mode == "single":
                matrix = torch.ones(1, num_layers)
            elif config.mode == "static":
                matrix = torch.full((len(chosen), num_layers), 1.0 / len(chosen))
            elif config.mode == "oracle":
                chosen, matrix = oracle_matrix(loaded, config)
            elif config.mode == "logo":
                scores = torch.tensor([selection_scores[index][c] for c in chosen])
                total = scores.sum()
                shares = scores / total if total > 0 else torch.full_like(scores, 1.0 / len(chosen))
                matrix = shares.unsqueeze(1).expand(-1, num_layers).clone()
            else:  # qaflora
                outcome = outcomes[index]
                if outcome.error is not None:
                    raise outcome.error
                divergences = outcome.divergences
                if config.policy == "relevant":
                    decision = decided[index]
                    relevance = {names[c]: d for c, d in zip(chosen, decision.drift, strict=True)}
                    chosen = [chosen[j] for j in decision.kept]
                    matrix = decision.weights.clone()
                    divergences = divergences[decision.kept] if decision.kept else divergences[:0]
                else:
                    matrix = outcome.weights
        except Exception as exc:
            plans[index] = _failed(exc, num_layers, config.mode)
            continue
        scores = selection_scores.get(index)
        weights = FusionWeights(
            adapters=[names[c] for c in chosen],
            matrix=matrix.detach().float().cpu(),
            mode=config.mode,
            divergences=None if divergences is None else divergences.detach().float().cpu(),
            selection_scores=None if scores is None else {names[c]: s for c, s in scores.items()},
            relevance=relevance,
        )
        plans[index] = Plan(
            adapters=list(chosen),
            weights=weights,
            preselect_s=preselect_s if index in selection_scores else 0.0,
            weigh_s=weigh_s if index in outcomes else 0.0,
        )
    return plans  # type: ignore[return-value]


@dataclass
class RelevantDecision:
    """policy="relevant" for one query: drift of every candidate, the kept ones and their strengths."""

    drift: list[float]  # next-token KL of every candidate (weighing order)
    kept: list[int]  # positions in the candidate list, strongest first
    weights: torch.Tensor  # [len(kept), L]: each kept adapter's strength per layer


def _decide_relevant(
    loaded: LoadedModel,
    items: list[PlanItem],
    outcomes: dict[int, WeighOutcome],
    candidates: list[list[int]],
) -> dict[int, RelevantDecision]:
    """Relevance and strength of every policy="relevant" query; composition checks share forwards."""
    decisions: dict[int, RelevantDecision] = {}
    checks: list[tuple[int, list[int], torch.Tensor, torch.Tensor]] = []  # (query, kept, grid, target)
    for index, outcome in outcomes.items():
        config = items[index].config
        if outcome.error is not None or config.policy != "relevant":
            continue
        assert outcome.last_logprobs is not None and outcome.last_hidden is not None
        drift = next_token_kl(outcome.last_logprobs[0], outcome.last_logprobs[1:])
        if config.relevance == "depth_gain":
            assert outcome.layer_kl is not None
            drift = depth_gain(drift, outcome.layer_kl)
        hinted = hinted_adapters(loaded, items[index], candidates[index])
        selectable = drift
        if config.sure_base != "off":
            selectable = drift_where_base_is_sure(
                loaded, drift, outcome.last_logprobs[0], candidates[index], config.sure_base
            )
        if config.language_place:
            placed = hinted + language_in_place(loaded, selectable, candidates[index], hinted, config)
            kept = select_with_hint(selectable, config.relevance_floor, config.max_relevant, placed)
            # hinted first as ever; the placed language keeps its drift's rank among the others
            rest = sorted((k for k in kept if k not in hinted), key=lambda k: (-float(selectable[k]), k))
            kept = [k for k in kept if k in hinted] + rest
        else:
            kept = select_with_hint(selectable, config.relevance_floor, config.max_relevant, hinted)
        if config.sure_base != "off" and config.sure_after_first:
            kept = drop_after_a_sure_adapter(
                loaded, kept, outcome.last_logprobs, candidates[index], hinted, config.sure_base
            )
        ones = layer_matrix([1.0] * len(kept), loaded.anatomy.num_layers)
        decisions[index] = RelevantDecision(drift.tolist(), kept, ones)
        if config.strength == "fit" and len(kept) >= 2:
            rows = [0] + [1 + k for k in kept]
            target = fit_target(
                loaded,
                outcome.last_logprobs[0],
                outcome.last_logprobs[[1 + k for k in kept]],
                outcome.last_hidden[0],
                outcome.last_hidden[rows[1:]],
                config.fit_target,
            )
            tools = [k for k in kept if k in hinted and loaded.entries[candidates[index][k]].kind == "tools"]
            if tools and config.call_target and items[index].prompt.offers_tools:
                tools_row = outcome.last_logprobs[1 + tools[0]]
                target = call_target(target, tools_row, call_open_token(loaded.tokenizer))
            fixed = [j for j, k in enumerate(kept) if k in hinted]  # hinted adapters stay at 1.0
            combos = strength_grid(len(kept), config.fit_grid, fixed)
            grid = block_candidates(combos, loaded.anatomy.num_layers, config.fit_blocks, fixed)
            checks.append((index, kept, grid, target))
    if checks:
        scored = score_strengths(
            loaded,
            [
                StrengthQuery(items[i].prompt.ids, [candidates[i][k] for k in kept], grid)
                for i, kept, grid, _ in checks
            ],
        )
        for (index, kept, grid, target), logprobs in zip(checks, scored, strict=True):
            chosen = grid[best_strengths(logprobs, target)]  # [len(kept), L]
            used = [j for j in range(len(kept)) if bool((chosen[j] > 0).any())]
            decision = decisions[index]
            decision.kept = [kept[j] for j in used]
            decision.weights = chosen[used].clone()
    return decisions


def language_in_place(
    loaded: LoadedModel, drift: torch.Tensor, candidates: list[int], hinted: list[int], config: FusionConfig
) -> list[int]:
    """The strongest language adapter whose drift reaches the floor, when the hints leave a place
    (``language_place``): ``[position]`` in ``candidates``, or ``[]``."""
    if len(hinted) >= config.max_relevant:
        return []
    languages = [loaded.entries[c].kind == "language" and j not in hinted for j, c in enumerate(candidates)]
    only = torch.tensor(languages, device=drift.device)
    return select_relevant(torch.where(only, drift, float("-inf")), config.relevance_floor, 1)


def drift_where_base_is_sure(
    loaded: LoadedModel, drift: torch.Tensor, base_logprobs: torch.Tensor, candidates: list[int], sure: float
) -> torch.Tensor:
    """``drift`` with every non-language adapter zeroed where the base is sure of its next token.

    A catalog that marks no adapter ``kind="language"`` gets ``drift`` back unchanged: without
    that hint a language adapter cannot be told from a skill. Hinted adapters are kept by
    :func:`select_with_hint` whatever their drift, so the gate does not touch them.
    """
    if not marks_languages(loaded) or not is_sure(base_logprobs, sure):
        return drift
    kinds = [loaded.entries[c].kind for c in candidates]
    keep = torch.tensor([kind == "language" for kind in kinds], device=drift.device)
    return torch.where(keep, drift, torch.zeros_like(drift))


def is_sure(logprobs: torch.Tensor, sure: float) -> bool:
    """Whether a next-token distribution (log-probs ``[V]``) gives its top token at least ``sure``."""
    return float(logprobs.float().max().exp()) >= sure


def marks_languages(loaded: LoadedModel) -> bool:
    """Whether the catalog marks any adapter ``kind="language"`` (the hint the sure-base rules read)."""
    return any(entry.kind == "language" for entry in loaded.entries)


def drop_after_a_sure_adapter(
    loaded: LoadedModel,
    kept: list[int],
    logprobs: torch.Tensor,
    candidates: list[int],
    hinted: list[int],
    sure: float,
) -> list[int]:
    """``kept`` without the non-language, non-hinted adapters after a first one that is sure alone.

    The same reasoning as :func:`drift_where_base_is_sure`, one step on: where the base with
    the strongest kept adapter (row ``1 + kept[0]`` of the weighing pass) already gives its next
    token at least ``sure``, a further skill has nothing to add; a language adapter may still
    rewrite the answer. Catalogs without ``kind="language"`` are unchanged.
    """
    if len(kept) < 2 or not marks_languages(loaded):
        return kept
    if not is_sure(logprobs[1 + kept[0]], sure):
        return kept
    kinds = [loaded.entries[c].kind for c in candidates]
    return [kept[0]] + [k for k in kept[1:] if kinds[k] == "language" or k in hinted]


def call_open_token(tokenizer: Any) -> int | None:
    """The first token of a tool call (``<tool_call>``) in this tokenizer; None if it has none."""
    ids = tokenizer.encode(OPEN_TAG, add_special_tokens=False)
    return int(ids[0]) if ids else None


def hinted_adapters(loaded: LoadedModel, item: PlanItem, candidates: list[int]) -> list[int]:
    """Positions in ``candidates`` of the adapters a hint keeps for this query, catalog order.

    Two hints, both read from the catalog's ``kind`` (a catalog without those kinds changes
    nothing). ``tools_hint``: a request that offers tools is usually answered by a tool call, and
    base and tool adapter agree on the call's first token (``<tool_call>``); they part only at its
    arguments, after the one position the weighing pass reads, so the adapter's drift there stays
    under the floor and the base writes the call (benchmarks/ZOO.md, "Draft C"). ``hint_kinds``:
    the caller knows the request's use (a query engine that put retrieved context in the prompt
    asks for ``reading``); a reading adapter trained on English passages hardly moves the next
    token of a passage in another language, though the answer needs it (benchmarks/POLICY.md).
    """
    kinds = set(item.config.hint_kinds)
    if item.config.tools_hint and item.prompt.offers_tools:
        kinds.add("tools")
    if not kinds:
        return []
    return [j for j, c in enumerate(candidates) if loaded.entries[c].kind in kinds]


def _wants_selection(config: FusionConfig, n_candidates: int) -> bool:
    if config.mode == "logo":
        return True
    if config.mode in ("qaflora", "static"):
        return config.preselect == "logo" and config.top_k is not None and n_candidates > config.top_k
    return False


def _failed(exc: Exception, num_layers: int, mode: str) -> Plan:
    empty = FusionWeights(adapters=[], matrix=torch.zeros(0, num_layers), mode=mode)
    return Plan(adapters=[], weights=empty, error=exc)
