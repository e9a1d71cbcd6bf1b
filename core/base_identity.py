"""Is the loaded base the model an adapter was trained on? Evidence beyond tensor shapes.

Shapes are the hard check (PEFT refuses factors that do not fit), but they do not tell
models apart: a Llama-3-8B LoRA fits Mistral-7B's q/k/v/o and MLP shapes exactly, loads,
and answers wrongly. What an adapter says about its base is ``base_model_name_or_path`` in
``adapter_config.json``. We compare it with the loaded base, with the strongest evidence
available:

1. the claimed base is the loaded directory itself: match;
2. the claimed base can be found on this machine (a local directory, relative paths also
   against the adapter's directory, or a hub id in the Hugging Face cache): its
   ``config.json`` (``model_type``, layer count and sizes, vocabulary) must equal the loaded
   one's, and where both directories hold safetensors weights one sampled weight matrix must
   be equal too (up to the rounding of a dtype change), so two different models in folders
   of the same name are told apart;
3. otherwise only names can be compared: the claimed name must equal one of the names the
   loaded base answers to (the path it was loaded from, a hub id it was cached under, the
   ``_name_or_path`` its ``config.json`` records) in full or in the last path component, as a
   local copy of a hub model keeps the folder name.

A mismatch is reported by the caller (:func:`qaflora.adapters.attach_adapters`): a warning,
or :class:`~qaflora.errors.AdapterMismatchError` with ``strict_base=True``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

logger = logging.getLogger(__name__)

# config.json fields that define an architecture's identity (GPT-2 spells them n_*).
ARCHITECTURE_KEYS: tuple[str, ...] = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
)
# Weight sample: copies saved in another dtype round each value once or twice.
_DTYPE_RTOL = {torch.float32: 1e-6, torch.float16: 2.0**-9, torch.bfloat16: 2.0**-6}


@dataclass
class ModelRecord:
    """What we can learn about one model: its names, config and (maybe) weight files."""

    name: str
    directory: Path | None
    config: dict[str, Any] = field(default_factory=dict)
    aliases: set[str] = field(default_factory=set)

    def architecture(self) -> dict[str, Any]:
        return {k: self.config[k] for k in ARCHITECTURE_KEYS if k in self.config}

    def summary(self) -> str:
        parts = [f"{k} {v}" for k, v in self.architecture().items() if k in ("model_type", "vocab_size")]
        layers = self.config.get("num_hidden_layers", self.config.get("n_layer"))
        width = self.config.get("hidden_size", self.config.get("n_embd"))
        if layers is not None and width is not None:
            parts.append(f"{layers} layers of width {width}")
        return f"{self.name!r}" + (f" ({', '.join(parts)})" if parts else "")

    @cached_property
    def weight_index(self) -> dict[str, Path]:
        """Tensor name -> safetensors file, for a directory that holds safetensors weights."""
        if self.directory is None:
            return {}
        single = self.directory / "model.safetensors"
        if single.is_file():
            return dict.fromkeys(_tensor_names(single), single)
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError):
                return {}
            return {name: self.directory / file for name, file in weight_map.items()}
        return {}


@dataclass
class Verdict:
    """The outcome of one comparison: ``matches`` False comes with the reason."""

    matches: bool
    reason: str = ""
    evidence: str = ""  # "directory" | "config" | "weights" | "name"


def loaded_base_record(base_path: str | Path, config: dict[str, Any]) -> ModelRecord:
    """The loaded base: where it came from, its (loaded) config and the names it answers to."""
    name = str(base_path)
    directory = _local_model_dir(name, [])
    aliases = {name}
    if directory is not None:
        aliases.add(str(directory))
        recorded = _read_config(directory).get("_name_or_path")
        if recorded:
            aliases.add(str(recorded))
        cached_id = _hub_id_of_cache_dir(directory)
        if cached_id:
            aliases.add(cached_id)
    return ModelRecord(name=name, directory=directory, config=dict(config), aliases=aliases)


def claimed_base_record(claimed: str, adapter_dir: Path) -> ModelRecord:
    """The base an adapter names, resolved on this machine where possible."""
    directory = _local_model_dir(claimed, [adapter_dir])
    config = _read_config(directory) if directory is not None else {}
    return ModelRecord(name=claimed, directory=directory, config=config, aliases={claimed})


def compare(claimed: ModelRecord, loaded: ModelRecord) -> Verdict:
    """Does ``loaded`` look like the model ``claimed`` names? See the module docstring."""
    both_local = claimed.directory is not None and loaded.directory is not None
    if both_local and _same_path(claimed.directory, loaded.directory):  # type: ignore[arg-type]
        return Verdict(True, evidence="directory")
    if claimed.config:
        ours, theirs = loaded.architecture(), claimed.architecture()
        differing = [k for k in ARCHITECTURE_KEYS if k in ours and k in theirs and ours[k] != theirs[k]]
        if differing:
            details = ", ".join(f"{k} {theirs[k]!r} vs {ours[k]!r}" for k in differing)
            return Verdict(False, f"their configs differ ({details})", evidence="config")
        weights = _compare_weights(claimed, loaded)
        if weights is not None:
            return weights
        return Verdict(True, evidence="config")
    if _names_match(claimed.name, loaded.aliases):
        return Verdict(True, evidence="name")
    return Verdict(
        False,
        "the names differ and the adapter's base is not on this machine, so nothing else could be compared",
        evidence="name",
    )


# ---------------------------------------------------------------------------- helpers


def _local_model_dir(name: str, roots: list[Path]) -> Path | None:
    """A directory with a config.json for ``name``: a path (absolute, or relative to the
    working directory or one of ``roots``), or a hub id present in the Hugging Face cache."""
    if not name:
        return None
    candidate = Path(name).expanduser()
    options = [candidate] if candidate.is_absolute() else [candidate, *(root / candidate for root in roots)]
    for option in options:
        if (option / "config.json").is_file():
            return option.resolve()
    return _cached_hub_dir(name)


def _cached_hub_dir(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id, or no cache: nothing to compare against
        return None
    return Path(found).parent if isinstance(found, str) else None


def _hub_id_of_cache_dir(directory: Path) -> str | None:
    """``org/name`` for a Hugging Face cache snapshot (``models--org--name/snapshots/<rev>``)."""
    parts = directory.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--") :].replace("--", "/")
    return None


def _read_config(directory: Path) -> dict[str, Any]:
    try:
        value = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


def _names_match(claimed: str, aliases: set[str]) -> bool:
    def norm(value: str) -> str:
        return value.strip().rstrip("/").casefold()

    def last(value: str) -> str:
        return norm(value).rsplit("/", 1)[-1]

    return any(norm(claimed) == norm(a) or last(claimed) == last(a) for a in aliases if a)


def _tensor_names(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception:  # unreadable weights: no weight evidence, the config comparison stands
        return []


def _shapes(path: Path, names: set[str]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` in one safetensors file (read from its header, no tensor data)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in sorted(names)}
    except Exception:
        return {}


def _read_tensor(path: Path, name: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


def _compare_weights(claimed: ModelRecord, loaded: ModelRecord) -> Verdict | None:
    """Compare the smallest weight matrix both models store under one name; None if impossible.

    One matrix is enough to tell two models apart (a fine-tune or another training run changes
    every matrix), and reading the smallest keeps this cheap for multi-GB checkpoints.
    """
    theirs, ours = claimed.weight_index, loaded.weight_index
    common = set(theirs) & set(ours)
    candidates: list[tuple[int, str, tuple[int, ...]]] = []
    for file in sorted({ours[name] for name in common}):
        for name, shape in _shapes(file, {n for n in common if ours[n] == file}).items():
            if len(shape) == 2:
                candidates.append((shape[0] * shape[1], name, shape))
    if not candidates:
        return None
    _, name, shape = min(candidates)
    try:
        a = _read_tensor(theirs[name], name)
        b = _read_tensor(ours[name], name)
    except Exception as exc:
        logger.debug("could not read %s for the base identity check: %s", name, exc)
        return None
    if tuple(a.shape) != shape:
        return Verdict(False, f"their weight {name} has shape {tuple(a.shape)} vs {shape}", "weights")
    rtol = max(_DTYPE_RTOL.get(a.dtype, 1e-6), _DTYPE_RTOL.get(b.dtype, 1e-6))
    a32, b32 = a.float(), b.float()
    atol = rtol * float(a32.abs().max().clamp_min(1e-12)) * 1e-3
    if torch.allclose(a32, b32, rtol=rtol, atol=atol):
        return Verdict(True, evidence="weights")
    return Verdict(
        False,
        f"they have the same architecture but different weights (weight {name} differs)",
        evidence="weights",
    )
