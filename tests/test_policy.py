"""policy="relevant": the math of relevance and strength, and its path through the engine.

Tiny random models here; the decisions on the shipped demo zoo are pinned in
``test_policy_zoo.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from qaflora.config import FusionConfig
from qaflora.divergence import divergences, normalize_per_layer
from qaflora.errors import ConfigError
from qaflora.policy import (
    best_strengths,
    block_candidates,
    call_target,
    depth_gain,
    layer_blocks,
    next_token_kl,
    product_of_experts,
    select_relevant,
    select_with_hint,
    strength_grid,
)

QUERY = "Solve 12 plus 7 and answer in Russian."


# ----------------------------------------------------------------------------- pure math


def test_select_relevant_keeps_what_reaches_the_floor_strongest_first():
    drift = torch.tensor([0.3, 5.0, 0.6, 2.0, 0.1])
    assert select_relevant(drift, floor=0.5, max_relevant=2) == [1, 3]
    assert select_relevant(drift, floor=0.5, max_relevant=5) == [1, 3, 2]
    assert select_relevant(drift, floor=10.0, max_relevant=2) == []  # nothing relevant: the base alone
    assert select_relevant(torch.tensor([1.0, 1.0, 1.0]), floor=0.5, max_relevant=2) == [0, 1]  # ties: index


def test_select_relevant_never_counts_non_finite_drift():
    drift = torch.tensor([float("nan"), float("inf"), 0.7, -float("inf")])
    assert select_relevant(drift, floor=0.5, max_relevant=3) == [2]


def test_select_with_hint_keeps_the_hinted_first_and_lets_the_drift_choose_the_rest():
    drift = torch.tensor([0.3, 5.0, 0.6, 2.0, 0.1])
    assert select_with_hint(drift, floor=0.5, max_relevant=2, hinted=[4]) == [4, 1]
    assert select_with_hint(drift, floor=0.5, max_relevant=3, hinted=[1]) == [1, 3, 2]  # never twice
    assert select_with_hint(drift, floor=10.0, max_relevant=2, hinted=[0]) == [0]  # under the floor: kept
    assert select_with_hint(drift, floor=0.5, max_relevant=1, hinted=[0, 4]) == [0]  # within max_relevant
    assert select_with_hint(drift, floor=0.5, max_relevant=2, hinted=[]) == select_relevant(drift, 0.5, 2)
    assert select_with_hint(drift, floor=0.5, max_relevant=1, hinted=[0, 3]) == [3]  # more hinted: strongest


@pytest.mark.parametrize("n", [1, 2, 3])
def test_strength_grid_covers_every_combination_but_all_zero(n):
    grid = (0.0, 1.0, 1.5, 2.0, 3.0)
    combos = strength_grid(n, grid)
    assert combos.shape == (len(grid) ** n - 1, n)
    assert (combos.sum(1) > 0).all()
    assert len({tuple(row) for row in combos.tolist()}) == combos.shape[0]
    torch.testing.assert_close(combos[0], torch.ones(n))  # trained strength first: it wins ties


def test_strength_grid_holds_fixed_adapters_at_one_even_off_the_grid():
    combos = strength_grid(2, (0.0, 2.0, 3.0), fixed=[0])
    assert (combos[:, 0] == 1.0).all()
    assert sorted(combos[:, 1].tolist()) == [0.0, 2.0, 3.0]  # the free one may also be dropped
    assert strength_grid(2, (0.0, 1.0), fixed=[0, 1]).tolist() == [[1.0, 1.0]]


def test_product_of_experts_adds_every_shift_in_log_space():
    base = torch.log_softmax(torch.randn(50), -1)
    adapters = torch.log_softmax(torch.randn(2, 50), -1)
    expected = torch.log_softmax(adapters[0] + adapters[1] - base, -1)
    torch.testing.assert_close(product_of_experts(base, adapters), expected)
    # one expert: its own distribution; an expert equal to the base: no change
    torch.testing.assert_close(product_of_experts(base, adapters[:1]), adapters[0])
    torch.testing.assert_close(product_of_experts(base, base.unsqueeze(0)), base)


def test_product_of_experts_stays_finite_with_extreme_log_probs():
    base = torch.log_softmax(torch.tensor([80.0, -80.0, 0.0, 0.0]), -1)
    adapters = torch.log_softmax(torch.tensor([[-80.0, 80.0, 0.0, 0.0], [0.0, 0.0, 90.0, -90.0]]), -1)
    target = product_of_experts(base, adapters)
    assert torch.isfinite(target).all()
    assert math.isclose(float(target.exp().sum()), 1.0, rel_tol=1e-5)


def test_best_strengths_maximises_the_target_tokens_probability_first_row_wins_ties():
    target = torch.log_softmax(torch.tensor([0.0, 5.0, 0.0]), -1)  # token 1
    candidates = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.0], [0.0, 4.0, 0.0], [0.0, 2.0, 0.0]]), -1)
    assert best_strengths(candidates, target) == 1
    assert best_strengths(candidates[[1, 1]], target) == 0


def test_next_token_kl_is_the_engines_kl():
    base = torch.log_softmax(torch.randn(30), -1)
    adapters = torch.log_softmax(torch.randn(4, 30), -1)
    expected = divergences(base.view(1, -1), adapters.view(4, 1, -1), "kl")[:, 0]
    torch.testing.assert_close(next_token_kl(base, adapters), expected)


@pytest.mark.parametrize(
    "bad",
    [{"fit_grid": ()}, {"fit_grid": (0.0,)}, {"fit_grid": (1.0, -1.0)}, {"fit_grid": (1.0, float("inf"))}],
)
def test_bad_fit_grid_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="fit_grid"):
        FusionConfig().merged(**bad)


def test_depth_gain_is_the_output_drift_above_the_quietest_earlier_layer():
    output = torch.tensor([5.0, 2.0, 0.3])
    layers = torch.tensor([[0.1, 1.5, 2.5, 5.0], [1.9, 2.0, 1.8, 2.0], [0.5, 0.4, 0.6, 0.3]])
    torch.testing.assert_close(depth_gain(output, layers), torch.tensor([4.9, 0.2, 0.0]))
    torch.testing.assert_close(depth_gain(output, layers[:, :1]), output)  # one layer: nothing earlier


def test_relevant_policy_needs_the_last_token():
    with pytest.raises(ConfigError, match="token='last'"):
        FusionConfig().merged(policy="relevant", token="mean")


# ----------------------------------------------------------------------------- through the engine


def test_relevant_policy_is_the_default_and_the_paper_is_one_option_away(llama_engine):
    default = FusionConfig()
    assert (default.policy, default.strength, default.fit_target) == ("relevant", "fit", "mixed")
    assert default.relevance == "depth_gain"
    assert default.normalize == "sum"  # what policy="shares" uses: the paper's shares
    weights = llama_engine.fusion_weights(QUERY, policy="shares")
    expected = normalize_per_layer(weights.divergences, 1e-9, "sum")
    torch.testing.assert_close(weights.matrix, expected)
    torch.testing.assert_close(weights.matrix.sum(0), torch.ones(llama_engine.num_layers))
    assert weights.relevance is None


def test_no_relevant_adapter_answers_exactly_like_the_base(llama_engine):
    for strength in ("unit", "fit"):
        weights = llama_engine.fusion_weights(
            QUERY, policy="relevant", strength=strength, relevance_floor=1e9
        )
        assert weights.adapters == [] and weights.matrix.shape == (0, llama_engine.num_layers)
        assert set(weights.relevance) == set(llama_engine.adapter_names)
        fused = llama_engine.generate(
            QUERY,
            policy="relevant",
            strength=strength,
            relevance_floor=1e9,
            max_new_tokens=8,
            ignore_eos=True,
        )
        base = llama_engine.generate(QUERY, mode="base", max_new_tokens=8, ignore_eos=True)
        assert fused.token_ids == base.token_ids


def test_unit_strength_keeps_the_adapters_above_the_floor_at_one_in_every_layer(llama_engine):
    drift = llama_engine.fusion_weights(QUERY, policy="relevant", strength="unit", relevance_floor=0.0)
    ranked = sorted(drift.relevance, key=lambda n: -drift.relevance[n])
    floor = (drift.relevance[ranked[0]] + drift.relevance[ranked[1]]) / 2  # only the strongest reaches it
    weights = llama_engine.fusion_weights(
        QUERY, policy="relevant", strength="unit", relevance_floor=floor, max_relevant=3
    )
    assert weights.adapters == ranked[:1]
    torch.testing.assert_close(weights.matrix, torch.ones(1, llama_engine.num_layers))
    assert weights.divergences.shape == (1, llama_engine.num_layers)
    capped = llama_engine.fusion_weights(QUERY, policy="relevant", strength="unit", relevance_floor=0.0)
    assert capped.adapters == ranked[:2]  # max_relevant=2 by default


def test_relevance_is_the_kl_of_the_models_own_next_token_distribution(llama_engine):
    weights = llama_engine.fusion_weights(QUERY, policy="relevant", relevance="output", relevance_floor=0.0)
    base = torch.log_softmax(llama_engine.next_token_logits(QUERY, mode="base")[0], -1)
    for name, drift in weights.relevance.items():
        adapter = torch.log_softmax(
            llama_engine.next_token_logits(QUERY, mode="single", adapters=[name])[0], -1
        )
        assert drift == pytest.approx(float(next_token_kl(base, adapter.unsqueeze(0))[0]), rel=1e-3, abs=1e-5)


def test_depth_gain_relevance_subtracts_the_earlier_layers_drift_of_the_same_pass(llama_engine):
    output = llama_engine.fusion_weights(QUERY, policy="relevant", relevance="output", relevance_floor=0.0)
    gain = llama_engine.fusion_weights(QUERY, policy="relevant", relevance_floor=0.0)  # the default
    shares = llama_engine.fusion_weights(QUERY, policy="shares")
    for row, name in enumerate(shares.adapters):
        earlier = float(shares.divergences[row, :-1].min())
        expected = max(output.relevance[name] - earlier, 0.0)
        assert gain.relevance[name] == pytest.approx(expected, rel=1e-3, abs=1e-5)
    # the gain is in nats of KL whatever divergence the weighing pass reports
    with_js = llama_engine.fusion_weights(QUERY, policy="relevant", relevance_floor=0.0, divergence="js")
    for name, value in gain.relevance.items():
        assert with_js.relevance[name] == pytest.approx(value, rel=1e-3, abs=1e-5)
    floor = max(gain.relevance.values()) + 1.0
    nothing = llama_engine.fusion_weights(
        QUERY, policy="relevant", relevance="depth_gain", relevance_floor=floor
    )
    assert nothing.adapters == []  # no gain reaches the floor: the base answers


def test_composition_check_picks_what_a_naive_search_picks(llama_engine):
    """The batched check against the obvious loop: one fused forward per candidate strength."""
    grid = (0.0, 1.0, 2.0)
    options = {"policy": "relevant", "strength": "fit", "relevance_floor": 0.0, "fit_grid": grid}
    weights = llama_engine.fusion_weights(QUERY, **options)
    kept = sorted(weights.relevance, key=lambda n: -weights.relevance[n])[:2]

    def logprobs(**mode) -> torch.Tensor:
        return torch.log_softmax(llama_engine.next_token_logits(QUERY, **mode)[0], -1)

    target = product_of_experts(
        logprobs(mode="base"), torch.stack([logprobs(mode="single", adapters=[n]) for n in kept])
    )
    token = int(target.argmax())
    scores = {
        tuple(s): float(logprobs(mode="oracle", oracle_weights=dict(zip(kept, s, strict=True)))[token])
        for s in strength_grid(2, grid).tolist()
    }
    chosen = tuple(
        dict(zip(weights.adapters, weights.matrix[:, 0].tolist(), strict=True)).get(n, 0.0) for n in kept
    )
    assert chosen in scores
    assert scores[chosen] == pytest.approx(max(scores.values()), abs=1e-4)
    assert set(weights.matrix.flatten().tolist()) <= set(grid) - {0.0}  # dropped adapters leave the matrix


def test_layer_blocks_split_the_layers_contiguously():
    assert layer_blocks(4, 4) == [[0], [1], [2], [3]]
    assert layer_blocks(6, 4) == [[0, 1], [2, 3], [4], [5]]
    assert layer_blocks(2, 4) == [[0], [1]]  # fewer layers than blocks: one per layer
    assert layer_blocks(5, 0) == []


def test_block_candidates_keep_the_uniform_first_and_turn_one_adapter_off_in_one_block():
    combos = strength_grid(2, (0.0, 1.0, 2.0))  # 8 combinations
    grid = block_candidates(combos, num_layers=3, blocks=4)
    assert grid.shape[1:] == (2, 3)
    torch.testing.assert_close(grid[: len(combos)], combos.unsqueeze(-1).expand(-1, -1, 3))
    nonzero = int((combos > 0).sum())  # each positive strength, turned off in each of 3 blocks
    assert len(grid) == len(combos) + 3 * nonzero
    for candidate in grid[len(combos) :]:
        uniform = candidate.max(dim=1).values
        off = candidate == 0
        assert int((off & (uniform.unsqueeze(1) > 0)).sum()) == 1  # exactly one layer of one adapter off
        assert bool((candidate.max(dim=1).values > 0).any())
    assert len({tuple(c.flatten().tolist()) for c in grid}) == len(grid)  # no duplicates
    fixed = block_candidates(strength_grid(2, (0.0, 2.0), fixed=[0]), 3, 4, fixed=[0])
    assert bool((fixed[:, 0] == 1.0).all())  # a hinted adapter is never turned off
    assert block_candidates(combos, 3, 0).shape == (len(combos), 2, 3)  # 0 blocks: uniform only
    assert block_candidates(combos, 1, 4).shape == (len(combos), 2, 1)  # one layer: nothing to split


def test_block_check_picks_what_a_naive_search_picks(llama_engine):
    """With fit_blocks the check scores per-layer candidates; the same loop over fused forwards agrees."""
    grid = (0.0, 1.0, 2.0)
    options = {"policy": "relevant", "strength": "fit", "relevance_floor": 0.0, "fit_grid": grid}
    weights = llama_engine.fusion_weights(QUERY, **options, fit_blocks=4)
    kept = sorted(weights.relevance, key=lambda n: -weights.relevance[n])[:2]
    layers = llama_engine.num_layers

    def logprobs(**mode) -> torch.Tensor:
        return torch.log_softmax(llama_engine.next_token_logits(QUERY, **mode)[0], -1)

    target = product_of_experts(
        logprobs(mode="base"), torch.stack([logprobs(mode="single", adapters=[n]) for n in kept])
    )
    token = int(target.argmax())
    candidates = block_candidates(strength_grid(2, grid), layers, 4)
    scores = [
        float(
            logprobs(
                mode="oracle",
                oracle_weights={n: c[j].tolist() for j, n in enumerate(kept) if bool((c[j] > 0).any())},
            )[token]
        )
        for c in candidates
    ]
    rows = {n: weights.matrix[weights.adapters.index(n)] for n in weights.adapters}
    chosen = torch.stack([rows.get(n, torch.zeros(layers)) for n in kept])
    index = next(i for i, c in enumerate(candidates) if torch.equal(c, chosen))
    assert scores[index] == pytest.approx(max(scores), abs=1e-4)
    uniform = llama_engine.fusion_weights(QUERY, **options, fit_blocks=0)
    uniform_score = max(scores[: len(strength_grid(2, grid))])
    assert scores[index] >= uniform_score - 1e-4  # the blocks never do worse on the check's own aim
    assert torch.equal(uniform.matrix, uniform.matrix[:, :1].expand(-1, layers))


@pytest.mark.parametrize("blocks", [0, 4])
def test_composition_checks_of_a_batch_equal_one_by_one(llama_engine, blocks):
    queries = [QUERY, "hello there", "what is 3 + 4 ?", "translate cat"]
    options = {"policy": "relevant", "strength": "fit", "relevance_floor": 0.0, "fit_blocks": blocks}
    together = llama_engine.fusion_weights_batch(queries, **options)
    for query, batched in zip(queries, together, strict=True):
        alone = llama_engine.fusion_weights(query, **options)
        assert alone.adapters == batched.adapters
        torch.testing.assert_close(alone.matrix, batched.matrix)
        assert torch.isfinite(batched.matrix).all()


def test_relevant_weights_travel_through_generation_and_metadata(llama_engine):
    result = llama_engine.generate(QUERY, policy="relevant", relevance_floor=0.0, max_new_tokens=4)
    again = type(result.weights).from_dict(result.weights.to_dict())
    assert again.relevance == pytest.approx(result.weights.relevance)
    assert again.adapters == result.weights.adapters


# ----------------------------------------------------------------------------- tools_hint

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
    },
}


@pytest.fixture(scope="module")
def tools_engine(long_zoo):
    """The tiny long-context Llama (tools take room), ``ad0`` catalogued ``kind="tools"`` and
    ``ad1`` ``kind="reading"``: the kinds the policy's hints read."""
    from qaflora import FusionEngine

    catalog = long_zoo.catalog(kinds={"ad0": "tools", "ad1": "reading"})
    engine = FusionEngine.from_pretrained(long_zoo.base, catalog, progress=False)
    yield engine
    engine.close()


def test_tools_hint_keeps_the_tool_adapter_at_one_only_when_the_request_offers_tools(tools_engine):
    quiet = {"relevance_floor": 1e9, "max_new_tokens": 6, "ignore_eos": True}  # no drift reaches it
    offered = tools_engine.generate(QUERY, tools=[TOOL], **quiet)
    assert offered.weights.adapters == ["ad0"]
    torch.testing.assert_close(offered.weights.matrix, torch.ones(1, tools_engine.num_layers))
    alone = tools_engine.generate(QUERY, tools=[TOOL], mode="oracle", oracle_weights={"ad0": 1.0}, **quiet)
    assert offered.token_ids == alone.token_ids  # it runs exactly as the adapter at its trained strength
    assert tools_engine.generate(QUERY, **quiet).weights.adapters == []  # no tools offered: the base
    unhinted = tools_engine.generate(QUERY, tools=[TOOL], tools_hint=False, **quiet)
    assert unhinted.weights.adapters == []


def test_the_composition_check_never_drops_the_hinted_adapter(tools_engine):
    options = {"relevance_floor": 0.0, "max_new_tokens": 1, "fit_grid": (0.0, 2.0, 3.0)}  # no 1.0
    result = tools_engine.generate(QUERY, tools=[TOOL], **options)
    weights = result.weights
    assert weights.adapters[0] == "ad0" and len(weights.adapters) <= 2
    torch.testing.assert_close(weights.matrix[0], torch.ones(tools_engine.num_layers))
    assert set(weights.relevance) == {"ad0", "ad1"}


def test_a_catalog_without_tool_adapters_is_unaffected_by_the_hint(long_engine):
    options = {"policy": "relevant", "relevance_floor": 0.0, "max_new_tokens": 4, "ignore_eos": True}
    hinted = long_engine.generate(QUERY, tools=[TOOL], **options)
    plain = long_engine.generate(QUERY, tools=[TOOL], tools_hint=False, **options)
    assert hinted.weights.adapters == plain.weights.adapters
    torch.testing.assert_close(hinted.weights.matrix, plain.weights.matrix)
    assert hinted.token_ids == plain.token_ids


def test_language_place_weighs_the_strongest_language_first(long_zoo):
    """With one place, the adapter the catalog marks ``kind="language"`` takes it whether or not
    its drift is the largest; a catalog that marks no language is unaffected."""
    from qaflora import FusionEngine

    one_place = {"policy": "relevant", "relevance_floor": 0.0, "max_relevant": 1, "strength": "unit"}
    for kinds in ({"ad0": "language"}, {"ad1": "language"}, {}):
        catalog = long_zoo.catalog(kinds=kinds)
        with FusionEngine.from_pretrained(long_zoo.base, catalog, progress=False) as engine:
            placed = engine.fusion_weights(QUERY, **one_place, sure_base="off")
            free = engine.fusion_weights(QUERY, **one_place, sure_base="off", language_place=False)
            assert free.adapters == [max(free.relevance, key=free.relevance.__getitem__)]
            assert placed.adapters == (list(kinds) or free.adapters), (kinds, free.relevance)


# ----------------------------------------------------------------------------- hint_kinds


def test_hint_kinds_keep_the_adapters_of_the_named_kind_at_one(tools_engine):
    quiet = {"relevance_floor": 1e9, "max_new_tokens": 6, "ignore_eos": True}  # no drift reaches it
    hinted = tools_engine.generate(QUERY, hint_kinds=("reading",), **quiet)
    assert hinted.weights.adapters == ["ad1"]
    torch.testing.assert_close(hinted.weights.matrix, torch.ones(1, tools_engine.num_layers))
    alone = tools_engine.generate(QUERY, mode="oracle", oracle_weights={"ad1": 1.0}, **quiet)
    assert hinted.token_ids == alone.token_ids
    assert tools_engine.generate(QUERY, **quiet).weights.adapters == []  # no hint: the base
    both = tools_engine.generate(QUERY, tools=[TOOL], hint_kinds=("reading",), **quiet)
    assert sorted(both.weights.adapters) == ["ad0", "ad1"]  # the tools hint and the caller's, together
    no_such_kind = tools_engine.generate(QUERY, hint_kinds=("vision",), **quiet)
    assert no_such_kind.weights.adapters == []


def test_hint_kinds_leave_the_rest_to_the_drift_and_the_check_keeps_the_hinted(tools_engine):
    options = {"relevance_floor": 0.0, "max_new_tokens": 1, "fit_grid": (0.0, 2.0, 3.0)}  # no 1.0
    weights = tools_engine.generate(QUERY, hint_kinds=("reading",), **options).weights
    assert weights.adapters[0] == "ad1" and len(weights.adapters) <= 2
    torch.testing.assert_close(weights.matrix[0], torch.ones(tools_engine.num_layers))


# ----------------------------------------------------------------------------- call_target


def test_call_target_aims_at_the_call_only_when_the_tool_adapter_would_open_one():
    target = torch.log_softmax(torch.tensor([0.0, 3.0, 1.0, 0.5]), dim=-1)  # the mix answers token 1
    calling = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0, 4.0]), dim=-1)  # tool adapter: token 3
    aimed = call_target(target, calling, call_token=3)
    assert int(aimed.argmax()) == 3 and torch.isinf(aimed[[0, 1, 2]]).all()
    candidates = torch.log_softmax(torch.tensor([[0.0, 5.0, 0.0, 1.0], [0.0, 1.0, 0.0, 2.0]]), dim=-1)
    assert best_strengths(candidates, target) == 0 and best_strengths(candidates, aimed) == 1
    assert call_target(target, calling, call_token=2) is target  # it would not call: unchanged
    assert call_target(target, calling, call_token=None) is target  # no call token in the vocabulary


def test_call_open_token_is_the_first_token_of_the_tool_call_tag(tools_engine):
    from qaflora.planning import call_open_token
    from qaflora.toolcalls import OPEN_TAG

    tokenizer = tools_engine.tokenizer
    token = call_open_token(tokenizer)
    assert token == tokenizer.encode(OPEN_TAG, add_special_tokens=False)[0]
    assert OPEN_TAG.startswith(tokenizer.decode([token]).strip())


@pytest.fixture(scope="module")
def language_engine(long_zoo):
    """The tiny long-context Llama with ``ad0`` catalogued ``kind="language"`` (``ad1`` a domain)."""
    from qaflora import FusionEngine

    engine = FusionEngine.from_pretrained(
        long_zoo.base, long_zoo.catalog(kinds={"ad0": "language"}), progress=False
    )
    yield engine
    engine.close()


def _logprobs(*sure: float, vocab: int = 8) -> torch.Tensor:
    """One row per value: a next-token distribution whose largest probability is that value."""
    rows = torch.full((len(sure), vocab), 0.0)
    for i, p in enumerate(sure):
        rows[i] = (1.0 - p) / (vocab - 1)
        rows[i, i % vocab] = p
    return rows.log()


def test_a_sure_base_lets_only_language_adapters_count(language_engine, long_engine):
    from qaflora.planning import drift_where_base_is_sure

    loaded, drift = language_engine.loaded, torch.tensor([2.0, 3.0])
    gated = drift_where_base_is_sure(loaded, drift, _logprobs(0.99)[0], [0, 1], 0.98)
    assert gated.tolist() == [2.0, 0.0]  # the domain adapter no longer counts; the language one does
    unsure = drift_where_base_is_sure(loaded, drift, _logprobs(0.9)[0], [0, 1], 0.98)
    assert unsure.tolist() == [2.0, 3.0]
    # a catalog that marks no language adapter is left as it is
    plain = drift_where_base_is_sure(long_engine.loaded, drift, _logprobs(0.99)[0], [0, 1], 0.98)
    assert plain.tolist() == [2.0, 3.0]


def test_after_a_sure_first_adapter_only_language_or_hinted_ones_join_it(language_engine, long_engine):
    from qaflora.planning import drop_after_a_sure_adapter

    loaded = language_engine.loaded
    # rows: base, ad0 (language), ad1 (domain); kept in drift order
    sure_domain_first = _logprobs(0.5, 0.5, 0.99)
    assert drop_after_a_sure_adapter(loaded, [1, 0], sure_domain_first, [0, 1], [], 0.98) == [1, 0]
    sure_language_first = _logprobs(0.5, 0.99, 0.5)
    assert drop_after_a_sure_adapter(loaded, [0, 1], sure_language_first, [0, 1], [], 0.98) == [0]
    assert drop_after_a_sure_adapter(loaded, [0, 1], sure_language_first, [0, 1], [1], 0.98) == [0, 1]
    unsure = _logprobs(0.5, 0.9, 0.5)
    assert drop_after_a_sure_adapter(loaded, [0, 1], unsure, [0, 1], [], 0.98) == [0, 1]
    unmarked = long_engine.loaded  # no kind="language" in its catalog: nothing to go by
    assert drop_after_a_sure_adapter(unmarked, [0, 1], sure_language_first, [0, 1], [], 0.98) == [0, 1]


def test_sure_base_is_a_probability_or_off():
    assert FusionConfig().sure_base == 0.98 and FusionConfig().sure_after_first
    assert FusionConfig(sure_base="off").sure_base == "off"
    for bad in (0.0, 1.5, "of"):
        with pytest.raises(ConfigError):
            FusionConfig().merged(sure_base=bad)
