"""qa-FLoRA weighing: per-layer divergences between the base and each adapter, batched.

For each query the batch holds one base row and one row per candidate adapter
(the adapter applied alone, at its own scale) — PEFT's mixed-batch inference,
expressed through the fused modules' per-row weights, so any number of queries
and adapters share ONE forward. Each decoder layer's output is read at the last
prompt token (or averaged over the prompt) and projected through the final
norm and LM head (logit lens); the divergence of each adapter row from its
query's base row gives the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import LoadedModel
from .batching import PaddedBatch, left_pad, pad_token_id
from .config import FusionConfig
from .divergence import divergences, non_finite_cells, normalize_per_layer
from .errors import DivergenceError
from .fused_lora import activate
from .prompting import EncodedPrompt


class LayerCapture:
    """Collects each decoder layer's output at the last token and/or averaged over real tokens."""

    def __init__(self, num_layers: int, attention_mask: torch.Tensor, need_mean: bool) -> None:
        self.last: list[torch.Tensor | None] = [None] * num_layers
        self.mean: list[torch.Tensor | None] = [None] * num_layers
        self._mask = attention_mask.unsqueeze(-1) if need_mean else None

    def observe_layer(self, layer_index: int, hidden: torch.Tensor) -> None:
        self.last[layer_index] = hidden[:, -1, :]
        if self._mask is not None:
            mask = self._mask.to(hidden.dtype)
            self.mean[layer_index] = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def stacked(self, reduction: str) -> torch.Tensor:
        """``[rows, L, d]`` hidden states for ``reduction`` ("last" or "mean")."""
        source = self.mean if reduction == "mean" else self.last
        if any(h is None for h in source):
            raise RuntimeError("a decoder layer did not report its output; was the model modified?")
        return torch.stack(source, dim=1)  # type: ignore[arg-type]


def install_layer_hooks(loaded: LoadedModel) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks that report layer outputs to the active context's layer observer.

    Installed once at load; they do nothing unless a request's context asks for
    captures, so generation pays one ContextVar read per layer.
    """
    from .fused_lora import current_context

    handles = []
    for index, layer in enumerate(loaded.anatomy.layers):

        def hook(_module, _args, output, index=index):
            context = current_context()
            if context is not None and context.layer_observer is not None:
                hidden = output[0] if isinstance(output, tuple) else output
                context.layer_observer.observe_layer(index, hidden)

        handles.append(layer.register_forward_hook(hook))
    return handles


@dataclass
class WeighItem:
    """One query to weigh: its prompt, candidate adapters (global indices) and options."""

    prompt: EncodedPrompt
    candidates: list[int]
    config: FusionConfig


@dataclass
class WeighOutcome:
    weights: torch.Tensor | None  # [k, L]
    divergences: torch.Tensor | None  # [k, L]
    error: Exception | None = None
    # policy="relevant" reads the last layer (the model's real output) of every row:
    last_logprobs: torch.Tensor | None = None  # [1+k, V], row 0 = base
    last_hidden: torch.Tensor | None = None  # [1+k, d] before the final norm
    layer_kl: torch.Tensor | None = None  # [k, L] KL(base || adapter) per layer (relevance="depth_gain")


def forward_rows(
    loaded: LoadedModel, batch: PaddedBatch, row_adapter: list[int | None], need_mean: bool
) -> LayerCapture:
    """One forward of ``batch``, row i applying only adapter ``row_adapter[i]``; capture layer outputs."""
    context = loaded.bank.row_context(row_adapter)
    capture = LayerCapture(loaded.anatomy.num_layers, batch.attention_mask, need_mean)
    context.layer_observer = capture
    with activate(context):
        loaded.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=1,
        )
    return capture


def weigh(loaded: LoadedModel, items: list[WeighItem], max_rows: int = 64) -> list[WeighOutcome]:
    """qa-FLoRA weights for several queries, in as few forwards as ``max_rows`` allows."""
    outcomes: list[WeighOutcome] = []
    group: list[WeighItem] = []
    rows = 0
    for item in items:
        needed = 1 + len(item.candidates)
        if group and rows + needed > max_rows:
            outcomes.extend(_weigh_group(loaded, group))
            group, rows = [], 0
        group.append(item)
        rows += needed
    if group:
        outcomes.extend(_weigh_group(loaded, group))
    return outcomes


def _weigh_group(loaded: LoadedModel, items: list[WeighItem]) -> list[WeighOutcome]:
    sequences: list[list[int]] = []
    row_adapter: list[int | None] = []
    for item in items:
        sequences.append(item.prompt.ids)
        row_adapter.append(None)
        for adapter in item.candidates:
            sequences.append(item.prompt.ids)
            row_adapter.append(adapter)
    batch = left_pad(sequences, pad_token_id(loaded.tokenizer), loaded.model.device)
    need_mean = any(item.config.token == "mean" for item in items)
    capture = forward_rows(loaded, batch, row_adapter, need_mean)

    outcomes = []
    start = 0
    for item in items:
        stop = start + 1 + len(item.candidates)
        hidden = capture.stacked(item.config.token)[start:stop]  # [1+k, L, d]
        start = stop
        outcomes.append(outcome_from_hidden(loaded, hidden, item))
    return outcomes


def outcome_from_hidden(loaded: LoadedModel, hidden: torch.Tensor, item: WeighItem) -> WeighOutcome:
    """Weights of one query from its layer outputs ``[1+k, L, d]`` (row 0 base, row j adapter j).

    The one entry point for callers that run the weighing rows themselves (the continuous
    batcher runs them in cached chunks, :mod:`qaflora.reuse`).
    """
    try:
        return _weights_from_hidden(loaded, hidden, item)
    except DivergenceError as exc:
        return WeighOutcome(None, None, exc)


def _weights_from_hidden(loaded: LoadedModel, hidden: torch.Tensor, item: WeighItem) -> WeighOutcome:
    """Logit lens per layer (bounded memory: one layer's [1+k, V] at a time) -> weights."""
    config = item.config
    per_layer = []
    kl_per_layer = []  # the depth gain of policy="relevant" is in nats of KL whatever the divergence
    want_kl = config.policy == "relevant" and config.relevance == "depth_gain" and config.divergence != "kl"
    logprobs = None
    for layer in range(hidden.shape[1]):
        logits = loaded.anatomy.lens_logits(hidden[:, layer, :]) / config.lens_temperature
        logprobs = torch.log_softmax(logits, dim=-1)  # [1+k, V]
        per_layer.append(divergences(logprobs[0:1], logprobs[1:].unsqueeze(1), config.divergence)[:, 0])
        if want_kl:
            kl_per_layer.append(divergences(logprobs[0:1], logprobs[1:].unsqueeze(1), "kl")[:, 0])
    div = torch.stack(per_layer, dim=1)  # [k, L]
    bad_rows, bad_layers = non_finite_cells(div)
    if bad_rows:
        names = [loaded.bank.adapter_names[item.candidates[r]] for r in bad_rows]
        raise DivergenceError(names, bad_layers)
    if config.policy == "relevant":
        # The policy decides the weights later (qaflora.policy); it needs the model's real output.
        layer_kl = torch.stack(kl_per_layer, dim=1) if want_kl else div
        last_hidden = hidden[:, -1, :]
        return WeighOutcome(None, div, last_logprobs=logprobs, last_hidden=last_hidden, layer_kl=layer_kl)
    return WeighOutcome(normalize_per_layer(div, config.uniform_below, config.normalize), div)
