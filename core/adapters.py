"""Load a base model and every catalog adapter into one model with fused LoRA modules.

PEFT is the loader: it knows every model family's module names, GPT-2's
``Conv1D`` orientation, ``rank_pattern``/``alpha_pattern`` and rsLoRA scaling.
All enabled adapters go into ONE ``PeftModel`` (no copy of the base per
adapter). We then lift each PEFT ``lora.Linear`` into a :class:`FusedLoraLinear`
that holds the stacked factors of all its adapters, and drop PEFT's wrappers:
the resulting model is the base model plus modules that are inert unless a
request activates them.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .architecture import ModelAnatomy, locate
from .base_identity import ModelRecord, Verdict, claimed_base_record, compare, loaded_base_record
from .catalog import AdapterCatalog, AdapterEntry
from .errors import (
    AdapterFormatError,
    AdapterMismatchError,
    BaseModelMismatchWarning,
    UnsupportedAdapterError,
)
from .fused_lora import AdapterBank, FusedLoraLinear
from .hf_quiet import ignore_library_internal_deprecations, quiet_transformers

logger = logging.getLogger(__name__)

# adapter_config.json features the fused path cannot express, with the reason.
_UNSUPPORTED_FEATURES: dict[str, str] = {
    "use_dora": "DoRA adapters rescale the base weight per adapter and cannot be fused additively",
    "lora_bias": "LoRA biases are not supported",
    "modules_to_save": "modules_to_save replaces whole modules per adapter and cannot be fused",
    "trainable_token_indices": "trainable tokens (embedding edits) cannot be fused per layer",
    "target_parameters": "LoRA on raw parameters (target_parameters) is not supported",
}


@dataclass
class LoadedModel:
    """A base model with fused adapters, and what the engine needs to drive it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    anatomy: ModelAnatomy
    bank: AdapterBank
    entries: list[AdapterEntry]
    base_path: str


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on CPU; bfloat16 on CUDA where supported (fp16 otherwise), unless told."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def load_base(
    base_path: str | Path, *, device: torch.device, dtype: torch.dtype, progress: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    with quiet_transformers():  # one bar per weight file is noise next to our adapter bar
        model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype)
    model.to(device)
    model.eval()
    return model, tokenizer


def check_peft_config(entry: AdapterEntry, config: dict[str, Any]) -> None:
    """Reject adapter features the fused forward would silently get wrong."""
    for key, reason in _UNSUPPORTED_FEATURES.items():
        if config.get(key):
            raise UnsupportedAdapterError(entry.name, f"{key} is set: {reason}")


def _expected_modules(entry: AdapterEntry) -> set[str]:
    """Module paths that carry LoRA factors in the adapter's weight file."""
    path = entry.weights_file()
    if path.suffix != ".safetensors":
        state = torch.load(path, map_location="cpu", weights_only=True)
        keys = list(state)
    else:
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
        except Exception as exc:  # safetensors raises its own error types
            raise AdapterFormatError(entry.name, f"corrupt weight file {path.name}: {exc}") from exc
    if any("lora_embedding" in k for k in keys):
        raise UnsupportedAdapterError(entry.name, "LoRA on embedding layers is not supported")
    return {k.split(".lora_A.")[0] for k in keys if ".lora_A." in k}


def check_base_identity(
    entry: AdapterEntry,
    config: dict[str, Any],
    loaded: ModelRecord,
    *,
    strict: bool,
    verdicts: dict[str, Verdict] | None = None,
) -> Verdict | None:
    """Compare the base the adapter names with the loaded one (see :mod:`qaflora.base_identity`).

    A mismatch warns (a WARNING log record and a :class:`BaseModelMismatchWarning`), or raises
    :class:`AdapterMismatchError` when ``strict``: matching tensor shapes do not make two models
    the same, and an adapter on the wrong base answers wrongly without any error.
    """
    claimed = config.get("base_model_name_or_path")
    if not claimed:
        return None
    cache = verdicts if verdicts is not None else {}
    key = f"{claimed}\0{entry.path}"
    if key not in cache:
        cache[key] = compare(claimed_base_record(str(claimed), entry.path), loaded)
    verdict = cache[key]
    if verdict.matches:
        return verdict
    cause = f"it was trained for base {claimed!r} but the loaded base is {loaded.summary()}: {verdict.reason}"
    if strict:
        raise AdapterMismatchError(entry.name, cause)
    message = (
        f"adapter {entry.name!r}: {cause}. Its tensor shapes fit, so it is loaded; if this is "
        "not the same model its answers will be wrong (strict_base=True makes this an error)"
    )
    logger.warning(message)
    warnings.warn(message, BaseModelMismatchWarning, stacklevel=_first_caller_outside_package())
    return verdict


def attach_adapters(
    base: PreTrainedModel,
    catalog: AdapterCatalog,
    *,
    progress: bool = True,
    base_path: str | Path | None = None,
    strict_base: bool = False,
) -> tuple[PeftModel, list[AdapterEntry]]:
    """Load every enabled adapter into one PeftModel, validating each against the base.

    ``base_path`` is where the base was loaded from (default: what its config recorded); it is
    compared with each adapter's ``base_model_name_or_path`` (:func:`check_base_identity`).
    """
    configs = catalog.validate_files()
    entries = catalog.enabled
    loaded_record = loaded_base_record(
        base_path if base_path is not None else (getattr(base.config, "_name_or_path", "") or ""),
        base.config.to_dict(),
    )
    verdicts: dict[str, Verdict] = {}
    peft_model: PeftModel | None = None
    for entry in tqdm(entries, desc="loading adapters", disable=not progress, leave=False):
        config = configs[entry.name]
        check_peft_config(entry, config)
        expected = _expected_modules(entry)
        if not expected:
            raise AdapterFormatError(entry.name, "weight file holds no lora_A/lora_B tensors")
        try:
            with ignore_library_internal_deprecations():
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(
                        base, str(entry.path), adapter_name=entry.name, low_cpu_mem_usage=True
                    )
                else:
                    peft_model.load_adapter(str(entry.path), adapter_name=entry.name, low_cpu_mem_usage=True)
        except (RuntimeError, ValueError, KeyError) as exc:
            message = str(exc)
            if "size mismatch" in message or "shape" in message:
                raise AdapterMismatchError(
                    entry.name, f"tensor shapes do not match the base model: {_first_lines(message)}"
                ) from exc
            if "not found in the base model" in message or "Target module" in message:
                raise AdapterMismatchError(
                    entry.name, f"its target modules do not exist in the base model: {_first_lines(message)}"
                ) from exc
            raise AdapterFormatError(entry.name, _first_lines(message)) from exc
        loaded = sum(1 for m in peft_model.modules() if isinstance(m, LoraLayer) and entry.name in m.lora_A)
        if loaded != len(expected):
            raise AdapterMismatchError(
                entry.name,
                f"its weight file has LoRA factors for {len(expected)} modules but {loaded} "
                "modules of the base model received them (module names differ from the base)",
            )
        # Shapes fit (checked above, a hard error); now: is it the base the adapter was made for?
        check_base_identity(entry, config, loaded_record, strict=strict_base, verdicts=verdicts)
    assert peft_model is not None
    return peft_model, entries


def fuse(
    peft_model: PeftModel, entries: list[AdapterEntry], anatomy: ModelAnatomy
) -> tuple[PreTrainedModel, AdapterBank]:
    """Replace PEFT's LoRA layers by :class:`FusedLoraLinear` modules; return the plain model and bank."""
    model: PreTrainedModel = peft_model.base_model.model
    names = [e.name for e in entries]
    fused: list[FusedLoraLinear] = []
    for module_name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        adapters_here = [n for n in names if n in module.lora_A]
        if not isinstance(module, PeftLoraLinear):
            raise UnsupportedAdapterError(
                adapters_here[0] if adapters_here else "?",
                f"module {module_name} is a {type(module).__name__}; only linear LoRA layers are fused",
            )
        for name in adapters_here:
            if module.lora_variant.get(name) is not None or module.use_dora.get(name):
                raise UnsupportedAdapterError(name, f"uses a LoRA variant (e.g. DoRA) at {module_name}")
            if module.lora_bias.get(name):
                raise UnsupportedAdapterError(name, f"has a LoRA bias at {module_name}")
        a_parts, b_parts, owners = [], [], []
        base_layer = module.get_base_layer()
        weight_dtype = base_layer.weight.dtype
        for name in adapters_here:
            a = module.lora_A[name].weight.detach()
            b = module.lora_B[name].weight.detach()
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise AdapterFormatError(name, f"non-finite (NaN/inf) LoRA weights at {module_name}")
            a_parts.append(a.to(weight_dtype))
            # scale_j folded in (in fp32, before any down-cast), transposed once: [r, d_out]
            b_parts.append((b.float() * float(module.scaling[name])).T.to(weight_dtype))
            owners.append(torch.full((a.shape[0],), names.index(name), dtype=torch.long))
        device = base_layer.weight.device
        replacement = FusedLoraLinear(
            base_layer,
            slot=len(fused),
            name=module_name,
            layer_index=anatomy.layer_of(module_name),
            lora_a=torch.cat(a_parts).to(device),
            lora_b_t=torch.cat(b_parts).contiguous().to(device),
            row_adapter=torch.cat(owners).to(device),
        )
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
        del a_parts, b_parts
        for name in adapters_here:  # free PEFT's copies now: only the stacked factors remain
            module.lora_A[name].weight = None
            module.lora_B[name].weight = None
        fused.append(replacement)
    # Drop PEFT's bookkeeping so the model is a plain transformers model again.
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in model.__dict__:
            delattr(model, attr)
    bank = AdapterBank(fused, names, anatomy.num_layers)
    return model, bank


def load_fused_model(
    base_path: str | Path,
    catalog: AdapterCatalog,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
    strict_base: bool = False,
) -> LoadedModel:
    """Load base + adapters and return the fused model (see module docstring).

    ``strict_base``: raise :class:`AdapterMismatchError` when an adapter names another base
    model than the loaded one (default: warn); differing tensor shapes always raise.
    """
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    base, tokenizer = load_base(base_path, device=resolved_device, dtype=resolved_dtype, progress=progress)
    peft_model, entries = attach_adapters(
        base, catalog, progress=progress, base_path=base_path, strict_base=strict_base
    )
    anatomy = locate(peft_model.base_model.model)
    model, bank = fuse(peft_model, entries, anatomy)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        anatomy=locate(model),
        bank=bank,
        entries=entries,
        base_path=str(base_path),
    )


def _first_caller_outside_package() -> int:
    """``stacklevel`` that makes a warning point at the user's line, not at our loader's."""
    package_dir = str(Path(__file__).resolve().parent)
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package_dir):
        frame, level = frame.f_back, level + 1
    return level


def _first_lines(message: str, n: int = 3) -> str:
    return " ".join(message.strip().splitlines()[:n])
