"""The fused forward computes exactly W x + sum_j alpha_j^l scale_j B_j A_j x, checked against PEFT."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from qaflora import FusionEngine
from qaflora.fused_lora import FusedLoraLinear, activate
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def _peft_with_all(zoo) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(str(zoo.base))
    names = list(zoo.adapters)
    model = PeftModel.from_pretrained(base, str(zoo.adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(zoo.adapters[name]), adapter_name=name)
    model.eval()
    return model


def _layer_of(name: str) -> int:
    parts = name.split(".")
    return int(next(p for p in parts if p.isdigit()))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_module_matches_manual_reference(zoo_factory, arch):
    """One fused module vs. a hand-written W x + sum alpha * scale * B A x from the raw adapter files."""
    zoo = zoo_factory(arch)
    engine = FusionEngine.from_pretrained(zoo.base, zoo.catalog(), progress=False)
    try:
        bank = engine.loaded.bank
        module: FusedLoraLinear = next(m for m in bank.modules if m.layer_index == 1)
        key_prefix = "base_model.model." + module.module_name
        x = torch.randn(2, 5, module.lora_a.shape[1])
        alphas = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.0, 0.9]])  # per batch row, per adapter
        weights = alphas.unsqueeze(-1).expand(-1, -1, engine.num_layers).clone()
        with torch.no_grad(), activate(bank.context([0, 1, 2], weights)):
            fused = module(x)

        with torch.no_grad():
            expected = module.base_layer(x)
            for j, (_name, path) in enumerate(zoo.adapters.items()):
                tensors = load_file(str(path / "adapter_model.safetensors"))
                a = tensors[f"{key_prefix}.lora_A.weight"]
                b = tensors[f"{key_prefix}.lora_B.weight"]
                scale = 8.0 / a.shape[0]  # lora_alpha / r of make_random_adapter
                delta = (x @ a.T) @ b.T * scale
                expected = expected + alphas[:, j].view(-1, 1, 1) * delta
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(module(x), module.base_layer(x))  # inert without a request
    finally:
        engine.close()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_per_layer_weights_match_peft_multi_adapter_forward(zoo_factory, arch):
    """Fused logits with per-layer weights == PEFT's own multi-adapter loop with per-layer scaling."""
    zoo = zoo_factory(arch)
    engine = FusionEngine.from_pretrained(zoo.base, zoo.catalog(), progress=False)
    peft_model = _peft_with_all(zoo)
    names = list(zoo.adapters)
    layers = engine.num_layers
    generator = torch.Generator().manual_seed(0)
    per_layer = torch.rand(len(names), layers, generator=generator)
    oracle = {n: per_layer[j].tolist() for j, n in enumerate(names)}
    try:
        logits, weights = engine.next_token_logits("Solve 12 plus 7", mode="oracle", oracle_weights=oracle)
        assert weights.adapters == names
        for module_name, module in peft_model.named_modules():
            if isinstance(module, LoraLayer):
                layer = _layer_of(module_name)
                for j, name in enumerate(names):
                    module.scaling[name] = module.scaling[name] * float(per_layer[j, layer])
        peft_model.base_model.set_adapter(names)
        ids = torch.tensor([engine.encode("Solve 12 plus 7").ids])
        with torch.no_grad():
            reference = peft_model(input_ids=ids).logits[0, -1]
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    finally:
        engine.close()


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2"])
def test_static_single_adapter_equals_peft(zoo_factory, arch):
    zoo = zoo_factory(arch)
    engine = FusionEngine.from_pretrained(zoo.base, zoo.catalog(), progress=False)
    peft_model = _peft_with_all(zoo)
    try:
        prompt = "What is the capital of France?"
        ids = torch.tensor([engine.encode(prompt).ids])
        for name in zoo.adapters:
            logits, weights = engine.next_token_logits(prompt, mode="static", adapters=[name])
            assert weights.matrix.shape == (1, engine.num_layers)
            assert torch.allclose(weights.matrix, torch.ones(1, engine.num_layers))
            peft_model.set_adapter(name)
            with torch.no_grad():
                reference = peft_model(input_ids=ids).logits[0, -1]
            torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
        base_logits, _ = engine.next_token_logits(prompt, mode="base")
        with torch.no_grad(), peft_model.disable_adapter():
            reference = peft_model(input_ids=ids).logits[0, -1]
        torch.testing.assert_close(base_logits, reference, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(base_logits, logits, atol=1e-3), "adapters should change the output"
    finally:
        engine.close()


@pytest.mark.parametrize("isolate_rows", [False, True])
def test_uniform_weights_fold_into_b_and_drop_zero_weight_adapters(zoo_factory, isolate_rows):
    """One configuration for every row: weights folded into B (no per-row multiply), an adapter
    at weight 0 left out of the factors, so even an overflowing adapter at weight 0 adds nothing."""
    zoo = zoo_factory("llama")
    engine = FusionEngine.from_pretrained(zoo.base, zoo.catalog(), progress=False)
    try:
        bank = engine.loaded.bank
        module: FusedLoraLinear = next(m for m in bank.modules if m.layer_index == 1)
        x = torch.randn(2, 5, module.lora_a.shape[1])
        weights = torch.tensor([0.5, 0.0, 0.3]).view(1, 3, 1).expand(2, -1, engine.num_layers).clone()
        with torch.no_grad():
            context = bank.context([0, 1, 2], weights, isolate_rows=isolate_rows)
            slot = context.slots[module.slot]
            assert slot.w is None and slot.keep is None
            rank = int((module.row_adapter == 0).sum() + (module.row_adapter == 2).sum())
            assert slot.a.shape[0] == rank  # adapter 1's rank rows are not computed at all
            with activate(context):
                fused = module(x)
            expected = module.base_layer(x)
            for j, alpha in ((0, 0.5), (2, 0.3)):
                rows = module.row_adapter == j
                expected = expected + alpha * (x @ module.lora_a[rows].T) @ module.lora_b_t[rows]
            torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)

            saved = module.lora_a.clone()
            try:
                module.lora_a[module.row_adapter == 1] = float("inf")  # adapter 1 overflows
                bank._cache.clear()
                with activate(bank.context([0, 1, 2], weights, isolate_rows=isolate_rows)):
                    assert torch.isfinite(module(x)).all()
            finally:
                module.lora_a.copy_(saved)
                bank._cache.clear()
    finally:
        engine.close()
