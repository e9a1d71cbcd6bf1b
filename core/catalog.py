"""The adapter catalog: which LoRA adapters exist, where, and what they are for.

The catalog is the boundary between a user's files and the engine, so it checks
everything that can be checked without loading a model (names unique, paths
exist, each directory is a PEFT LoRA adapter, all claim the same base). Checks
that need the base model (tensor shapes) happen in :mod:`qaflora.adapters` at
load time. Either way a broken adapter fails loudly at load, never as a wrong
answer later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import AdapterFormatError, AdapterMismatchError, AdapterNotFoundError, CatalogError

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterEntry(BaseModel):
    """One adapter of the catalog."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    path: Path
    description: str = ""
    kind: str = "domain"
    languages: list[str] = Field(default_factory=list)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith("__"):
            raise ValueError(f"adapter names starting with '__' are reserved: {value!r}")
        return value

    @property
    def config_file(self) -> Path:
        return self.path / ADAPTER_CONFIG

    def weights_file(self) -> Path:
        for name in WEIGHT_FILES:
            candidate = self.path / name
            if candidate.is_file():
                return candidate
        raise AdapterNotFoundError(
            self.name, f"no adapter weights ({' or '.join(WEIGHT_FILES)}) in {self.path}"
        )

    def read_peft_config(self) -> dict[str, Any]:
        """Read and sanity-check ``adapter_config.json``; raise naming this adapter."""
        if not self.path.is_dir():
            raise AdapterNotFoundError(self.name, f"adapter directory {self.path} does not exist")
        if not self.config_file.is_file():
            raise AdapterNotFoundError(self.name, f"{ADAPTER_CONFIG} missing in {self.path}")
        try:
            config = json.loads(self.config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterFormatError(self.name, f"unreadable {ADAPTER_CONFIG}: {exc}") from exc
        if not isinstance(config, dict):
            raise AdapterFormatError(self.name, f"{ADAPTER_CONFIG} is not a JSON object")
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type != "LORA":
            raise AdapterFormatError(
                self.name, f"peft_type is {config.get('peft_type')!r}, only LORA adapters are fused"
            )
        self.weights_file()
        return config


class AdapterCatalog(BaseModel):
    """A validated collection of adapters for one base model.

    Build it in Python (``AdapterCatalog(adapters=[AdapterEntry(...)])``) or read it
    with :meth:`from_file` from YAML/JSON with a top-level ``adapters:`` list; relative
    paths in a file are resolved against the file's directory, so a catalog can be
    shipped next to its adapters.
    """

    model_config = ConfigDict(extra="forbid")

    adapters: list[AdapterEntry]
    base_model: Path | None = Field(
        default=None, description="Optional path of the base model the adapters belong to."
    )

    @field_validator("adapters")
    @classmethod
    def _unique_non_empty(cls, adapters: list[AdapterEntry]) -> list[AdapterEntry]:
        if not adapters:
            raise ValueError("the catalog has no adapters")
        seen: set[str] = set()
        duplicates = sorted({a.name for a in adapters if a.name in seen or seen.add(a.name)})
        if duplicates:
            raise ValueError(f"duplicate adapter name(s): {duplicates}")
        return adapters

    @classmethod
    def build(cls, adapters: Iterable[AdapterEntry | dict[str, Any]], **kwargs: Any) -> AdapterCatalog:
        """Construct and validate, raising :class:`CatalogError` instead of pydantic's error."""
        try:
            return cls(adapters=list(adapters), **kwargs)
        except ValidationError as exc:
            raise CatalogError(_pydantic_message(exc)) from exc

    @classmethod
    def from_dirs(cls, dirs: dict[str, str | Path], **entry_fields: Any) -> AdapterCatalog:
        """Shortcut: ``{name: adapter_dir}`` -> catalog (all ``kind="domain"`` unless given)."""
        return cls.build(AdapterEntry(name=n, path=Path(p), **entry_fields) for n, p in dirs.items())

    @classmethod
    def from_file(cls, path: str | Path) -> AdapterCatalog:
        """Read a YAML (``.yaml``/``.yml``) or JSON catalog file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"cannot read catalog file {path}: {exc}") from exc
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise CatalogError(f"catalog file {path} is not valid {path.suffix[1:]}: {exc}") from exc
        if not isinstance(data, dict) or "adapters" not in data:
            raise CatalogError(f"catalog file {path} needs a top-level 'adapters:' list")
        root = path.parent.resolve()
        entries = data.get("adapters") or []
        if not isinstance(entries, list):
            raise CatalogError(f"'adapters' in {path} must be a list")
        for entry in entries:
            if isinstance(entry, dict) and "path" in entry:
                entry["path"] = _resolve(root, entry["path"])
        if data.get("base_model") is not None:
            data["base_model"] = _resolve(root, data["base_model"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise CatalogError(f"invalid catalog {path}: {_pydantic_message(exc)}") from exc

    def to_file(self, path: str | Path) -> None:
        """Write the catalog as YAML or JSON, with paths relative to the file where possible."""
        path = Path(path)
        root = path.parent.resolve()
        data = self.model_dump(mode="json")
        for entry in data["adapters"]:
            entry["path"] = _relative(root, Path(entry["path"]))
        if data.get("base_model"):
            data["base_model"] = _relative(root, Path(data["base_model"]))
        else:
            data.pop("base_model", None)
        text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)

    @property
    def enabled(self) -> list[AdapterEntry]:
        return [a for a in self.adapters if a.enabled]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.enabled]

    def __getitem__(self, name: str) -> AdapterEntry:
        for entry in self.adapters:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def validate_files(self) -> dict[str, dict[str, Any]]:
        """Check every enabled adapter on disk; return their PEFT configs by name.

        Also checks that all adapters claim the same ``base_model_name_or_path``
        (where they set one): mixing adapters of different bases is caught here,
        before any tensor is loaded.
        """
        if not self.enabled:
            raise CatalogError("every adapter of the catalog is disabled")
        configs = {entry.name: entry.read_peft_config() for entry in self.enabled}
        claimed = {
            name: _base_id(cfg["base_model_name_or_path"])
            for name, cfg in configs.items()
            if cfg.get("base_model_name_or_path")
        }
        if len(set(claimed.values())) > 1:
            reference_name, reference = next(iter(claimed.items()))
            for name, base in claimed.items():
                if base != reference:
                    raise AdapterMismatchError(
                        name,
                        f"trained for base {base!r} but adapter {reference_name!r} was trained "
                        f"for {reference!r}; all adapters of a catalog must share one base",
                    )
        return configs


def _resolve(root: Path, value: Any) -> Any:
    """A path from a catalog file, made absolute against the file's directory.

    Anything but a string is returned as is, for pydantic to reject with a message.
    """
    if not isinstance(value, str | Path):
        return value
    try:
        candidate = Path(value).expanduser()
    except RuntimeError as exc:  # "~someone/..." for a user that does not exist
        raise CatalogError(f"cannot resolve path {str(value)!r}: {exc}") from exc
    return candidate if candidate.is_absolute() else (root / candidate)


def _relative(root: Path, value: Path) -> str:
    try:
        return str(value.resolve().relative_to(root))
    except ValueError:
        return str(value)


def _base_id(name: str) -> str:
    """Compare base names by their last path component: local copies of one hub model match."""
    return Path(str(name).rstrip("/")).name


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error["loc"])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    return "; ".join(parts)
