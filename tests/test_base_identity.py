"""Adapters that name another base than the loaded one: a warning (or an error with strict_base).

The real case behind it: a Llama-3-8B LoRA fits Mistral-7B's tensor shapes exactly, loads, and
answers wrongly. Here: tiny Llama and Mistral bases of the same shapes, real PEFT adapters.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from qaflora import AdapterCatalog, FusionEngine
from qaflora.adapters import load_fused_model
from qaflora.errors import AdapterMismatchError, BaseModelMismatchWarning
from qaflora.testing import build_tiny_model, make_random_adapter
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Two same-shaped families, and two Llamas of different weights in folders named alike."""
    root = tmp_path_factory.mktemp("bases")
    return {
        "llama": build_tiny_model("llama", root / "a" / "base", seed=0),
        "mistral": build_tiny_model("mistral", root / "m" / "base", seed=0),
        "other_llama": build_tiny_model("llama", root / "b" / "base", seed=1),
    }


@pytest.fixture(scope="module")
def llama_adapter(bases, tmp_path_factory) -> Path:
    return make_random_adapter(bases["llama"], tmp_path_factory.mktemp("adapters") / "ad", seed=7)


def _claiming(adapter: Path, claimed: str, out: Path) -> Path:
    """A copy of ``adapter`` whose adapter_config.json names ``claimed`` as its base."""
    shutil.copytree(adapter, out)
    config_path = out / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = claimed
    config_path.write_text(json.dumps(config))
    return out


def _load(base: Path, adapter: Path, **kwargs):
    return load_fused_model(base, AdapterCatalog.from_dirs({"ad": adapter}), progress=False, **kwargs)


def _mismatch_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, BaseModelMismatchWarning)]


def test_adapter_of_another_family_with_the_same_shapes_warns_naming_both(bases, llama_adapter, caplog):
    with caplog.at_level(logging.WARNING, logger="qaflora"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loaded = _load(bases["mistral"], llama_adapter)
    messages = _mismatch_warnings(record)
    assert len(messages) == 1
    assert str(bases["llama"]) in messages[0] and str(bases["mistral"]) in messages[0]
    assert "model_type 'llama' vs 'mistral'" in messages[0]
    # the warning points at the caller's line, not at our loader
    assert Path(record[0].filename).resolve() == Path(__file__).resolve()
    logged = [r for r in caplog.records if r.levelno == logging.WARNING and "'ad'" in r.getMessage()]
    assert len(logged) == 1 and "model_type" in logged[0].getMessage()
    # shapes fit, so the adapter is loaded and usable
    assert loaded.bank.adapter_names == ["ad"]


def test_strict_base_turns_the_mismatch_into_an_error(bases, llama_adapter):
    with pytest.raises(AdapterMismatchError) as caught:
        FusionEngine.from_pretrained(
            bases["mistral"],
            AdapterCatalog.from_dirs({"ad": llama_adapter}),
            progress=False,
            strict_base=True,
        )
    assert caught.value.adapter == "ad"
    assert str(bases["llama"]) in str(caught.value) and str(bases["mistral"]) in str(caught.value)


def test_two_bases_in_folders_of_the_same_name_are_told_apart_by_their_weights(bases, llama_adapter):
    assert bases["llama"].name == bases["other_llama"].name
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _load(bases["other_llama"], llama_adapter)
    messages = _mismatch_warnings(record)
    assert len(messages) == 1 and "different weights" in messages[0]
    with pytest.raises(AdapterMismatchError, match="different weights"):
        _load(bases["other_llama"], llama_adapter, strict_base=True)


def test_the_right_base_and_its_copies_load_silently(bases, llama_adapter, tmp_path):
    copy = shutil.copytree(bases["llama"], tmp_path / "copy-elsewhere")
    # a copy saved in another dtype is still the same model (values equal up to fp16 rounding)
    half = tmp_path / "fp16-copy"
    AutoModelForCausalLM.from_pretrained(str(bases["llama"]), dtype=torch.float16).save_pretrained(half)
    shutil.copy(bases["llama"] / "tokenizer.json", half)
    shutil.copy(bases["llama"] / "tokenizer_config.json", half)
    for base in (bases["llama"], copy, half):
        with warnings.catch_warnings():
            warnings.simplefilter("error", BaseModelMismatchWarning)
            _load(base, llama_adapter, strict_base=True)


def test_a_base_known_only_by_name_is_compared_by_name(bases, llama_adapter, tmp_path):
    foreign = _claiming(llama_adapter, "meta-llama/Meta-Llama-3-8B", tmp_path / "foreign")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _load(bases["llama"], foreign)
    messages = _mismatch_warnings(record)
    assert len(messages) == 1
    assert "meta-llama/Meta-Llama-3-8B" in messages[0] and "not on this machine" in messages[0]
    # a local copy of a hub model keeps the folder name: that matches
    same_name = _claiming(llama_adapter, "some-org/base", tmp_path / "same-name")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseModelMismatchWarning)
        _load(bases["llama"], same_name, strict_base=True)


def test_a_hub_id_in_the_local_cache_is_compared_by_its_config(bases, llama_adapter, tmp_path, monkeypatch):
    """The claimed hub model is in the Hugging Face cache (offline): its config.json is read."""
    repo = tmp_path / "hub" / "models--some-org--tiny-llama"  # the cache's own layout
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    shutil.copy(bases["llama"] / "config.json", snapshot / "config.json")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    claimed = _claiming(llama_adapter, "some-org/tiny-llama", tmp_path / "claims-hub-id")
    with pytest.raises(AdapterMismatchError, match="model_type 'llama' vs 'mistral'"):
        _load(bases["mistral"], claimed, strict_base=True)
    with warnings.catch_warnings():  # same config, no weights in the cache: the config is the evidence
        warnings.simplefilter("error", BaseModelMismatchWarning)
        _load(bases["llama"], claimed, strict_base=True)


def test_shipped_zoo_adapters_match_their_base():
    from qaflora.zoo import shipped_catalog_path

    catalog_path = shipped_catalog_path()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseModelMismatchWarning)
        load_fused_model(
            Path(catalog_path).parent / "base",
            AdapterCatalog.from_file(catalog_path),
            progress=False,
            strict_base=True,
        )
