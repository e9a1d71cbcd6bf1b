"""The catalog validates a user's adapter files before any tensor is loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from qaflora import AdapterCatalog, AdapterEntry
from qaflora.errors import (
    AdapterFormatError,
    AdapterMismatchError,
    AdapterNotFoundError,
    CatalogError,
)


def _copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_yaml_catalog_with_relative_paths(llama_zoo, tmp_path):
    target = _copy_adapter(llama_zoo.adapters["ad0"], tmp_path / "adapters" / "math")
    (tmp_path / "catalog.yaml").write_text(
        "adapters:\n"
        "  - name: math\n"
        "    path: adapters/math\n"
        "    description: arithmetic\n"
        "    kind: domain\n"
        "    languages: [en]\n"
    )
    catalog = AdapterCatalog.from_file(tmp_path / "catalog.yaml")
    assert catalog.names == ["math"]
    assert catalog["math"].path.resolve() == target.resolve()
    assert catalog["math"].languages == ["en"]
    assert set(catalog.validate_files()) == {"math"}


def test_json_catalog_round_trip(llama_zoo, tmp_path):
    catalog = llama_zoo.catalog()
    catalog.to_file(tmp_path / "catalog.json")
    again = AdapterCatalog.from_file(tmp_path / "catalog.json")
    assert again.names == catalog.names
    assert [a.path.resolve() for a in again.adapters] == [a.path.resolve() for a in catalog.adapters]


def test_disabled_adapters_are_not_loaded(llama_zoo):
    catalog = AdapterCatalog.build(
        [
            AdapterEntry(name="a", path=llama_zoo.adapters["ad0"]),
            AdapterEntry(name="b", path=llama_zoo.adapters["ad1"], enabled=False),
        ]
    )
    assert catalog.names == ["a"]


def test_duplicate_names_rejected(llama_zoo):
    with pytest.raises(CatalogError, match="duplicate adapter name"):
        AdapterCatalog.build(
            [
                AdapterEntry(name="a", path=llama_zoo.adapters["ad0"]),
                AdapterEntry(name="a", path=llama_zoo.adapters["ad1"]),
            ]
        )


def test_empty_catalog_rejected(tmp_path):
    with pytest.raises(CatalogError, match="no adapters"):
        AdapterCatalog.build([])
    (tmp_path / "c.yaml").write_text("adapters: []\n")
    with pytest.raises(CatalogError, match="no adapters"):
        AdapterCatalog.from_file(tmp_path / "c.yaml")


def test_catalog_file_errors(tmp_path):
    with pytest.raises(CatalogError, match="cannot read"):
        AdapterCatalog.from_file(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("adapters: [unclosed\n")
    with pytest.raises(CatalogError, match="not valid"):
        AdapterCatalog.from_file(tmp_path / "bad.yaml")
    (tmp_path / "nolist.yaml").write_text("something: 1\n")
    with pytest.raises(CatalogError, match="adapters"):
        AdapterCatalog.from_file(tmp_path / "nolist.yaml")


def test_missing_adapter_directory_names_the_adapter(tmp_path):
    catalog = AdapterCatalog.from_dirs({"ghost": tmp_path / "nowhere"})
    with pytest.raises(AdapterNotFoundError, match=r"'ghost'.*does not exist"):
        catalog.validate_files()


def test_missing_config_and_weights(llama_zoo, tmp_path):
    broken = _copy_adapter(llama_zoo.adapters["ad0"], tmp_path / "broken")
    (broken / "adapter_config.json").unlink()
    with pytest.raises(AdapterNotFoundError, match=r"adapter_config\.json missing"):
        AdapterCatalog.from_dirs({"broken": broken}).validate_files()

    no_weights = _copy_adapter(llama_zoo.adapters["ad0"], tmp_path / "no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterNotFoundError, match="no adapter weights"):
        AdapterCatalog.from_dirs({"no_weights": no_weights}).validate_files()


def test_corrupt_config_and_wrong_peft_type(llama_zoo, tmp_path):
    corrupt = _copy_adapter(llama_zoo.adapters["ad0"], tmp_path / "corrupt")
    (corrupt / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFormatError, match=r"'corrupt'.*unreadable"):
        AdapterCatalog.from_dirs({"corrupt": corrupt}).validate_files()

    ia3 = _copy_adapter(llama_zoo.adapters["ad0"], tmp_path / "ia3")
    config = json.loads((ia3 / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (ia3 / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match="only LORA"):
        AdapterCatalog.from_dirs({"ia3": ia3}).validate_files()


def test_adapters_for_different_bases_rejected(llama_zoo, tmp_path):
    other = _copy_adapter(llama_zoo.adapters["ad1"], tmp_path / "other")
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/another-model"
    (other / "adapter_config.json").write_text(json.dumps(config))
    catalog = AdapterCatalog.from_dirs({"a": llama_zoo.adapters["ad0"], "other": other})
    with pytest.raises(AdapterMismatchError, match=r"'other'.*another-model"):
        catalog.validate_files()


def test_entry_name_rules(tmp_path):
    with pytest.raises(ValueError):
        AdapterEntry(name="__base__", path=tmp_path)
    with pytest.raises(ValueError):
        AdapterEntry(name="has space", path=tmp_path)
