"""Find the parts of a Hugging Face causal LM that qa-FLoRA needs, for any architecture.

The logit lens needs three things: the stack of decoder layers (to read each
layer's output), the final norm and the LM head (to project those outputs onto
the vocabulary). Names differ per family (``model.layers`` / ``transformer.h``,
``norm`` / ``ln_f`` / ``final_layernorm``), so we locate them structurally: the
decoder stack is the ``ModuleList`` whose length is the config's number of
hidden layers, the head is ``get_output_embeddings()``, and the final norm is the
norm-like child of the decoder that comes after the stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "final_norm")


@dataclass(frozen=True)
class ModelAnatomy:
    """Where the decoder layers, final norm and LM head of a causal LM live."""

    layers: nn.ModuleList
    layers_prefix: str
    final_norm: nn.Module | None
    lm_head: nn.Module
    logit_softcap: float | None
    context_window: int | None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_of(self, module_name: str) -> int | None:
        """Index of the decoder layer containing the module called ``module_name``."""
        prefix = self.layers_prefix + "."
        if not module_name.startswith(prefix):
            return None
        return int(module_name[len(prefix) :].split(".", 1)[0])

    def lens_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logit lens: final norm + LM head (+ soft-capping where the model has it), in float32."""
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        logits = self.lm_head(hidden).float()
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def locate(model: PreTrainedModel) -> ModelAnatomy:
    """Return the :class:`ModelAnatomy` of ``model`` or raise a ``TypeError`` saying what is missing."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    num_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]
    if num_layers is not None:
        matching = [(n, m) for n, m in candidates if len(m) == num_layers]
        candidates = matching or candidates
    if not candidates:
        raise TypeError(f"{type(model).__name__}: no stack of decoder layers (nn.ModuleList) found")
    layers_prefix, layers = max(candidates, key=lambda item: (len(item[1]), -item[0].count(".")))

    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise TypeError(f"{type(model).__name__} has no output embeddings (LM head)")

    final_norm = _final_norm(model, layers_prefix)
    context = (
        getattr(config, "max_position_embeddings", None)
        or getattr(config, "n_positions", None)
        or getattr(config, "seq_length", None)
    )
    softcap = getattr(config, "final_logit_softcapping", None)
    return ModelAnatomy(
        layers=layers,
        layers_prefix=layers_prefix,
        final_norm=final_norm,
        lm_head=lm_head,
        logit_softcap=float(softcap) if softcap else None,
        context_window=int(context) if context else None,
    )


def _final_norm(model: nn.Module, layers_prefix: str) -> nn.Module | None:
    """The norm applied after the decoder stack: a sibling of the stack, by name or by kind."""
    parent_name = layers_prefix.rsplit(".", 1)[0] if "." in layers_prefix else ""
    parent = model.get_submodule(parent_name) if parent_name else model
    for name in _FINAL_NORM_NAMES:
        module = getattr(parent, name, None)
        if isinstance(module, nn.Module):
            return module
    norms = [m for n, m in parent.named_children() if "norm" in type(m).__name__.lower()]
    return norms[-1] if norms else None
