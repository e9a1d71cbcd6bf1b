"""Bad input raises a clear qaflora error naming the cause, and the engine stays usable."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import SHARES
from qaflora import AdapterCatalog, FusionEngine
from qaflora.errors import (
    AdapterFormatError,
    AdapterMismatchError,
    AdapterNotFoundError,
    ChatTemplateError,
    ConfigError,
    ContextLengthError,
    DivergenceError,
    EmptyPromptError,
    EngineClosedError,
    QaFloraError,
    UnknownAdapterError,
    UnsupportedAdapterError,
)
from qaflora.testing import build_tiny_model, make_random_adapter
from safetensors.torch import load_file, save_file


def _load(zoo, extra: dict | None = None, names: list[str] | None = None) -> FusionEngine:
    dirs = {n: p for n, p in zoo.adapters.items() if names is None or n in names}
    dirs.update(extra or {})
    return FusionEngine.from_pretrained(
        zoo.base, AdapterCatalog.from_dirs(dirs), config=SHARES, progress=False
    )


def test_missing_adapter_files(llama_zoo, tmp_path):
    with pytest.raises(AdapterNotFoundError, match="'gone'"):
        _load(llama_zoo, {"gone": tmp_path / "gone"}, names=["ad0"])


def test_corrupt_weight_file(llama_zoo, tmp_path):
    corrupt = shutil.copytree(llama_zoo.adapters["ad0"], tmp_path / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(AdapterFormatError, match="'corrupt'.*corrupt weight file"):
        _load(llama_zoo, {"corrupt": corrupt}, names=["ad0"])


def test_adapter_for_another_base_shape_mismatch(llama_zoo, tmp_path):
    # same directory name as the real base, so only the tensor shapes can tell them apart
    other_base = build_tiny_model("llama", tmp_path / "other" / "base", hidden=96)
    foreign = make_random_adapter(other_base, tmp_path / "foreign", seed=1)
    with pytest.raises(AdapterMismatchError, match="'foreign'.*shapes"):
        _load(llama_zoo, {"foreign": foreign}, names=["ad0"])


def test_adapter_with_modules_the_base_lacks(llama_zoo, gpt2_zoo):
    # PEFT >= 0.19 refuses the load ("target modules ... not found"); PEFT 0.18 loads nothing and
    # our module count catches it ("module names differ"): either way, an error naming the cause.
    with pytest.raises(AdapterMismatchError, match="'gpt2_adapter'.*(target modules|module names differ)"):
        _load(llama_zoo, {"gpt2_adapter": gpt2_zoo.adapters["ad0"]}, names=["ad0"])


def test_rank_mismatch_between_config_and_weights(llama_zoo, tmp_path):
    liar = shutil.copytree(llama_zoo.adapters["ad1"], tmp_path / "liar")
    config = json.loads((liar / "adapter_config.json").read_text())
    config["r"] = 8  # the weights have rank 4
    (liar / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterMismatchError, match="'liar'"):
        _load(llama_zoo, {"liar": liar}, names=["ad0"])


def test_dora_adapter_is_refused(llama_zoo, tmp_path):
    dora = shutil.copytree(llama_zoo.adapters["ad1"], tmp_path / "dora")
    config = json.loads((dora / "adapter_config.json").read_text())
    config["use_dora"] = True
    (dora / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedAdapterError, match="'dora'.*DoRA"):
        _load(llama_zoo, {"dora": dora}, names=["ad0"])


def test_prompt_errors_leave_engine_usable(llama_engine):
    with pytest.raises(EmptyPromptError):
        llama_engine.generate("   ")
    with pytest.raises(EmptyPromptError):
        llama_engine.generate([{"role": "user", "content": ""}])
    with pytest.raises(EmptyPromptError):
        llama_engine.fusion_weights("")
    with pytest.raises(ContextLengthError, match="context window is 256"):
        llama_engine.generate("word " * 400)
    with pytest.raises(ChatTemplateError, match="robot"):
        llama_engine.generate([{"role": "robot", "content": "beep"}])
    with pytest.raises(ChatTemplateError, match="non-text"):
        llama_engine.generate([{"role": "user", "content": [{"type": "image"}]}])
    assert llama_engine.generate("hello", max_new_tokens=2).usage.completion_tokens >= 1


def test_long_prompt_generation_is_clamped_to_context(llama_engine):
    prompt_tokens = len(llama_engine.encode("word " * 40).ids)
    room = llama_engine.context_window - prompt_tokens
    assert 0 < room < 200
    result = llama_engine.generate("word " * 40, max_new_tokens=500, mode="base")
    assert result.usage.completion_tokens <= room


def test_option_errors_leave_engine_usable(llama_engine):
    with pytest.raises(ConfigError, match="mode"):
        llama_engine.generate("hi", mode="telepathy")
    with pytest.raises(ConfigError, match="unknown option"):
        llama_engine.generate("hi", temprature=0.5)
    with pytest.raises(UnknownAdapterError, match="nope"):
        llama_engine.generate("hi", adapters=["ad0", "nope"])
    with pytest.raises(UnknownAdapterError, match="nope"):
        llama_engine.fusion_weights("hi", mode="oracle", oracle_weights={"nope": 1.0})
    with pytest.raises(ConfigError, match="layers"):
        llama_engine.generate("hi", mode="oracle", oracle_weights={"ad0": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="single"):
        llama_engine.generate("hi", mode="single")
    with pytest.raises(ConfigError):
        llama_engine.generate("hi", max_new_tokens=0)
    assert isinstance(ConfigError("x"), QaFloraError) and isinstance(ConfigError("x"), ValueError)
    assert llama_engine.fusion_weights("hi").matrix.shape[0] == 3


def _edited_adapter(src, dst, factor_name: str, value: float | None = None, scale: float = 1.0):
    edited = shutil.copytree(src, dst)
    tensors = load_file(str(edited / "adapter_model.safetensors"))
    key = next(k for k in tensors if factor_name in k and "layers.1." in k)
    tensors[key] = torch.full_like(tensors[key], value) if value is not None else tensors[key] * scale
    save_file(tensors, str(edited / "adapter_model.safetensors"))
    return edited


def test_non_finite_adapter_weights_are_refused_at_load(llama_zoo, tmp_path):
    broken = _edited_adapter(llama_zoo.adapters["ad1"], tmp_path / "broken", "lora_B", value=float("nan"))
    with pytest.raises(AdapterFormatError, match="'broken'.*non-finite"):
        _load(llama_zoo, {"broken": broken}, names=["ad0"])


def _poisoned_adapter(src, dst):
    """Finite weights so large that the adapter's own rows overflow to inf/NaN (as fp16 overflow does)."""
    return _edited_adapter(src, dst, "lora_A", value=3e38)


def test_nan_divergence_names_the_adapter_and_engine_recovers(llama_zoo, tmp_path):
    poisoned = _poisoned_adapter(llama_zoo.adapters["ad1"], tmp_path / "poisoned")
    engine = _load(llama_zoo, {"poisoned": poisoned}, names=["ad0"])
    try:
        with pytest.raises(DivergenceError, match="'poisoned'") as info:
            engine.fusion_weights("Solve 12 plus 7.")
        assert info.value.adapters == ["poisoned"]
        with pytest.raises(DivergenceError):
            engine.generate("Solve 12 plus 7.", max_new_tokens=3)
        # the engine keeps working for requests that avoid the broken adapter
        ok = engine.generate("Solve 12 plus 7.", max_new_tokens=3, adapters=["ad0"])
        assert ok.adapters == ["ad0"] and torch.isfinite(ok.weights.matrix).all()
        # and a batch mixing a failing and a working request fails only the former
        results = []
        for query, adapters in (("a", None), ("b", ["ad0"])):
            try:
                results.append(engine.generate(query, max_new_tokens=2, adapters=adapters))
            except DivergenceError as exc:
                results.append(exc)
        assert isinstance(results[0], DivergenceError) and not isinstance(results[1], Exception)
    finally:
        engine.close()


def test_closed_engine_refuses_requests(llama_zoo):
    engine = _load(llama_zoo, names=["ad0"])
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.generate("hi")
    with pytest.raises(EngineClosedError):
        engine.fusion_weights("hi")
