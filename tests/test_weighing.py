"""qa-FLoRA weights: shape, normalisation, and equality with a naive per-adapter PEFT loop."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARES
from peft import PeftModel
from qaflora import FusionEngine
from qaflora.divergence import divergences, normalize_per_layer
from qaflora.testing import make_random_adapter
from transformers import AutoModelForCausalLM

FINAL_NORM = {
    "llama": "model.norm",
    "mistral": "model.norm",
    "qwen2": "model.norm",
    "gemma": "model.norm",
    "phi3": "model.norm",
    "gpt2": "transformer.ln_f",
}


def naive_divergences(zoo, prompt_ids: list[int], kind: str = "kl") -> torch.Tensor:
    """The obvious implementation: set_adapter + forward per adapter, HF hidden states, logit lens."""
    base = AutoModelForCausalLM.from_pretrained(str(zoo.base))
    names = list(zoo.adapters)
    model = PeftModel.from_pretrained(base, str(zoo.adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(zoo.adapters[name]), adapter_name=name)
    model.eval()
    norm = base.get_submodule(FINAL_NORM[zoo.arch])
    head = base.get_output_embeddings()
    ids = torch.tensor([prompt_ids])

    def lens(out) -> torch.Tensor:  # [L, V] log-probs at the last token
        hidden = out.hidden_states
        rows = [head(norm(hidden[i][:, -1])) for i in range(1, len(hidden) - 1)]
        rows.append(out.logits[:, -1])  # the last layer's lens is the model's own output
        return torch.log_softmax(torch.cat(rows).float(), dim=-1)

    with torch.no_grad():
        with model.disable_adapter():
            base_lp = lens(model(input_ids=ids, output_hidden_states=True))
        rows = []
        for name in names:
            model.set_adapter(name)
            rows.append(lens(model(input_ids=ids, output_hidden_states=True)))
    return divergences(base_lp, torch.stack(rows), kind)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2"])
def test_batched_weighing_equals_naive_loop(zoo_factory, arch):
    zoo = zoo_factory(arch)
    engine = FusionEngine.from_pretrained(zoo.base, zoo.catalog(), config=SHARES, progress=False)
    try:
        query = [{"role": "user", "content": "Solve 12 plus 7 and answer in Russian."}]
        weights = engine.fusion_weights(query)
        assert weights.adapters == list(zoo.adapters)
        assert weights.matrix.shape == (3, engine.num_layers)
        torch.testing.assert_close(weights.matrix.sum(dim=0), torch.ones(engine.num_layers))
        assert (weights.matrix >= 0).all()
        expected = naive_divergences(zoo, engine.encode(query).ids)
        torch.testing.assert_close(weights.divergences, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(weights.matrix, normalize_per_layer(expected, 1e-9), rtol=1e-4, atol=1e-5)
        # the adapters differ in strength, so the weights are not uniform
        assert weights.matrix.std() > 1e-3
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["js", "cosine", "euclidean"])
def test_ablation_divergences_match_naive(llama_zoo, llama_engine, kind):
    query = "What treats a fever?"
    weights = llama_engine.fusion_weights(query, divergence=kind)
    expected = naive_divergences(llama_zoo, llama_engine.encode(query).ids, kind)
    torch.testing.assert_close(weights.divergences, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weights.matrix.sum(0), torch.ones(llama_engine.num_layers))


def test_mean_token_reduction_differs_from_last(llama_engine):
    query = "Translate to Spanish: the cat sleeps."
    last = llama_engine.fusion_weights(query, token="last")
    mean = llama_engine.fusion_weights(query, token="mean")
    torch.testing.assert_close(mean.matrix.sum(0), torch.ones(llama_engine.num_layers))
    assert not torch.allclose(last.divergences, mean.divergences)


def test_lens_temperature_changes_divergences(llama_engine):
    cold = llama_engine.fusion_weights("hello", lens_temperature=0.5)
    warm = llama_engine.fusion_weights("hello", lens_temperature=2.0)
    assert not torch.allclose(cold.divergences, warm.divergences)


def test_batch_of_queries_equals_one_by_one(llama_engine):
    queries = ["Solve 12 plus 7", "What is the capital of France? It is", "def add(a, b):"]
    together = llama_engine.fusion_weights_batch(queries)
    for query, weights in zip(queries, together, strict=True):
        alone = llama_engine.fusion_weights(query)
        torch.testing.assert_close(weights.matrix, alone.matrix, rtol=1e-4, atol=1e-5)


def test_uniform_fallback_when_divergences_vanish():
    div = torch.tensor([[0.0, 0.2, 1e-12], [0.0, 0.6, 1e-12]])
    weights = normalize_per_layer(div, uniform_below=1e-9)
    torch.testing.assert_close(weights[:, 0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(weights[:, 1], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(weights[:, 2], torch.tensor([0.5, 0.5]))
    assert torch.isfinite(weights).all()


def test_divergences_of_identical_distributions_are_zero():
    logprobs = torch.log_softmax(torch.randn(4, 50), dim=-1)
    for kind in ("kl", "js", "cosine", "euclidean"):
        div = divergences(logprobs, logprobs.unsqueeze(0).repeat(2, 1, 1), kind)
        assert torch.allclose(div, torch.zeros(2, 4), atol=1e-5), kind


def test_modes_have_expected_weights(llama_engine):
    layers = llama_engine.num_layers
    static = llama_engine.fusion_weights("hi", mode="static")
    torch.testing.assert_close(static.matrix, torch.full((3, layers), 1 / 3))
    base = llama_engine.fusion_weights("hi", mode="base")
    assert base.adapters == [] and base.matrix.shape == (0, layers)
    single = llama_engine.fusion_weights("hi", mode="single", adapters=["ad1"])
    assert single.adapters == ["ad1"]
    per_layer = [0.1 * (i + 1) for i in range(layers)]
    oracle = llama_engine.fusion_weights("hi", mode="oracle", oracle_weights={"ad2": per_layer, "ad0": 0.3})
    assert oracle.adapters == ["ad2", "ad0"]
    torch.testing.assert_close(oracle.matrix[0], torch.tensor(per_layer))
    torch.testing.assert_close(oracle.matrix[1], torch.full((layers,), 0.3))
    restricted = llama_engine.fusion_weights("hi", adapters=["ad2", "ad0"])
    assert restricted.adapters == ["ad2", "ad0"]
    as_dict = restricted.to_dict()
    assert set(as_dict["mean"]) == {"ad2", "ad0"} and len(as_dict["matrix"]) == 2


def test_max_normalization_keeps_shares_and_gives_the_strongest_full_weight(llama_engine):
    paper = llama_engine.fusion_weights("Solve 12 plus 7", normalize="sum")
    strong = llama_engine.fusion_weights("Solve 12 plus 7", normalize="max")
    torch.testing.assert_close(strong.matrix.max(dim=0).values, torch.ones(llama_engine.num_layers))
    torch.testing.assert_close(strong.matrix / strong.matrix.sum(0), paper.matrix, rtol=1e-5, atol=1e-6)
    flat = normalize_per_layer(torch.zeros(3, 2), 1e-9, "max")
    torch.testing.assert_close(flat, torch.ones(3, 2))


def test_mixed_ranks_and_targets_equal_naive_loop(tmp_path, llama_zoo):
    """Adapters of different ranks, one of them on attention only: the padded per-adapter path."""
    adapters = {
        "r2_attn": make_random_adapter(
            llama_zoo.base, tmp_path / "r2", seed=7, rank=2, targets=["q_proj", "v_proj"], strength=2.0
        ),
        "r8_all": make_random_adapter(llama_zoo.base, tmp_path / "r8", seed=8, rank=8, strength=1.5),
    }
    zoo = type(llama_zoo)(arch="llama", base=llama_zoo.base, adapters=adapters)
    engine = FusionEngine.from_pretrained(zoo.base, zoo.catalog(), config=SHARES, progress=False)
    try:
        query = "Solve 12 plus 7 and answer in Russian."
        weights = engine.fusion_weights(query)
        expected = naive_divergences(zoo, engine.encode(query).ids)
        torch.testing.assert_close(weights.divergences, expected, rtol=1e-4, atol=1e-6)
        # a weighing pass leaves the engine able to generate with a subset (stacked copy path)
        alone = engine.generate(query, mode="single", adapters=["r2_attn"], max_new_tokens=3)
        assert alone.usage.completion_tokens >= 1
    finally:
        engine.close()
