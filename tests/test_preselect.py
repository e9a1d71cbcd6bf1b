"""LoGo preselection: one base pass scores every adapter; equals a naive per-adapter computation."""

from __future__ import annotations

import pytest
import torch
from qaflora.preselect import logo_score, probe_modules
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def naive_logo_scores(zoo, engine, prompt_ids: list[int], signal: str, which: str) -> dict[str, float]:
    """Per adapter: read its raw factors from disk and project the base's module input at the last token."""
    base = AutoModelForCausalLM.from_pretrained(str(zoo.base)).eval()
    slots = probe_modules(engine.loaded, which)
    module_names = [m.module_name for m in engine.loaded.bank.modules if m.slot in slots]
    inputs: dict[str, torch.Tensor] = {}
    handles = [
        base.get_submodule(name).register_forward_hook(
            lambda _m, args, _o, name=name: inputs.__setitem__(name, args[0][:, -1].detach())
        )
        for name in module_names
    ]
    with torch.no_grad():
        base(input_ids=torch.tensor([prompt_ids]))
    for handle in handles:
        handle.remove()
    scores = {}
    for adapter, path in zoo.adapters.items():
        tensors = load_file(str(path / "adapter_model.safetensors"))
        per_module = []
        for name in module_names:
            a = tensors[f"base_model.model.{name}.lora_A.weight"]
            b = tensors[f"base_model.model.{name}.lora_B.weight"]
            output = (inputs[name] @ a.T) @ b.T * (8.0 / a.shape[0])
            per_module.append(logo_score(output, signal)[0])
        scores[adapter] = float(torch.stack(per_module).mean())
    return scores


@pytest.mark.parametrize("signal", ["norm", "entropy"])
@pytest.mark.parametrize("which", ["last", "all"])
def test_logo_pass_equals_naive_per_adapter_signal(llama_zoo, llama_engine, signal, which):
    query = "Solve 12 plus 7 and answer in Russian."
    weights = llama_engine.fusion_weights(query, mode="logo", logo_signal=signal, logo_modules=which)
    expected = naive_logo_scores(llama_zoo, llama_engine, llama_engine.encode(query).ids, signal, which)
    assert set(weights.selection_scores) == set(expected)
    for name, score in expected.items():
        assert weights.selection_scores[name] == pytest.approx(score, rel=1e-4)
    ranked = sorted(expected, key=lambda n: -expected[n])
    assert weights.adapters == ranked
    total = sum(expected.values())
    torch.testing.assert_close(weights.matrix[:, 0], torch.tensor([expected[n] / total for n in ranked]))
    torch.testing.assert_close(weights.matrix.sum(0), torch.ones(llama_engine.num_layers))


@pytest.mark.parametrize("signal", ["norm", "entropy"])
def test_calibrated_logo_divides_by_the_content_free_score(llama_zoo, llama_engine, signal):
    """Calibrated scores = naive score on the query / naive score on the content-free prompt."""
    query = "Solve 12 plus 7 and answer in Russian."
    weights = llama_engine.fusion_weights(
        query, mode="logo", logo_signal=signal, logo_modules="all", logo_calibration="content_free"
    )
    on_query = naive_logo_scores(llama_zoo, llama_engine, llama_engine.encode(query).ids, signal, "all")
    reference = naive_logo_scores(
        llama_zoo, llama_engine, llama_engine.content_free_prompt.ids, signal, "all"
    )
    for name in on_query:
        assert weights.selection_scores[name] == pytest.approx(on_query[name] / reference[name], rel=1e-4)
    # the reference row changes nothing for the other queries of a batch
    batch = llama_engine.fusion_weights_batch(
        [query, "What is the capital of France?"], mode="logo", logo_calibration="content_free"
    )
    alone = llama_engine.fusion_weights(query, mode="logo", logo_calibration="content_free")
    assert batch[0].selection_scores == pytest.approx(alone.selection_scores, rel=1e-4)


def test_top_k_preselects_before_qaflora(llama_engine):
    query = "What is the capital of France?"
    scores = llama_engine.fusion_weights(query, mode="logo").selection_scores
    strongest = sorted(scores, key=lambda n: -scores[n])[:2]
    weights = llama_engine.fusion_weights(query, top_k=2)
    assert weights.mode == "qaflora"
    assert weights.adapters == strongest
    assert weights.matrix.shape == (2, llama_engine.num_layers)
    torch.testing.assert_close(weights.matrix.sum(0), torch.ones(llama_engine.num_layers))
    assert weights.selection_scores == pytest.approx(scores)
    # the strongest random adapter (largest B) wins the norm signal
    assert strongest[0] == "ad2"
    # preselection off: all candidates are weighed
    assert len(llama_engine.fusion_weights(query, top_k=2, preselect="none").adapters) == 3
    # restricted candidates are respected by the preselection
    assert llama_engine.fusion_weights(query, top_k=1, adapters=["ad0", "ad1"]).adapters[0] in {"ad0", "ad1"}


def test_top_k_generation_uses_only_selected_adapters(llama_engine):
    result = llama_engine.generate("Solve 12 plus 7.", top_k=1, max_new_tokens=4)
    assert len(result.adapters) == 1
    assert result.timings.preselect > 0
    single = llama_engine.generate(
        "Solve 12 plus 7.", mode="single", adapters=result.adapters, max_new_tokens=4
    )
    assert result.token_ids == single.token_ids


def test_static_with_top_k(llama_engine):
    weights = llama_engine.fusion_weights("def add(a, b):", mode="static", top_k=2)
    assert len(weights.adapters) == 2
    torch.testing.assert_close(weights.matrix, torch.full((2, llama_engine.num_layers), 0.5))
