"""LoGo (LoRA on the Go, arXiv 2511.07129): pick the relevant adapters from one forward pass.

LoGo's signal for adapter i is its own projection output at the last token,
``o_i = scale_i * B_i A_i x_T`` at a LoRA module, scored by its L2 norm or by the
inverse entropy of ``softmax(o_i)``; the top-k adapters are kept and LoGo mixes
them with ``w_i = s_i / sum_j s_j``. The official implementation reads one
module (the query projection of the last decoder layer); ``logo_modules="all"``
averages the score over every LoRA module instead.

``logo_calibration="content_free"`` (ours, not in the paper) divides each adapter's
score by its score on a content-free prompt, the trick of contextual calibration
("Calibrate Before Use", Zhao et al. 2021). Why: an adapter's output norm mixes how
relevant it is with how large its weights are; an adapter with large factors wins
every query. The reference row rides in the same forward as the queries (one row
more), so nothing is cached between queries.

Cost: ONE base forward over the prompt per query (rows of several queries
batched), plus, at the observed modules and only at the last token, one masked
matmul giving every adapter's output. No forward row per adapter, so the cost
barely grows with the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import LoadedModel
from .batching import left_pad, pad_token_id
from .config import LogoCalibration, LogoModules, LogoSignal
from .fused_lora import ForwardContext, FusedLoraLinear, activate
from .prompting import EncodedPrompt


def logo_score(outputs: torch.Tensor, signal: LogoSignal) -> torch.Tensor:
    """Score ``[..., n_adapters, d]`` projection outputs -> ``[..., n_adapters]``."""
    outputs = outputs.float()
    if signal == "norm":
        return outputs.norm(dim=-1)
    probs = torch.softmax(outputs, dim=-1)
    entropy = -(probs * torch.log(probs + 1e-8)).sum(dim=-1)
    return 1.0 / (entropy + 1e-6)


class LogoProbe:
    """Module observer accumulating LoGo scores of every adapter at the observed modules."""

    def __init__(self, modules: set[int], num_adapters: int, signal: LogoSignal) -> None:
        self.modules = modules
        self.num_adapters = num_adapters
        self.signal = signal
        self.total: torch.Tensor | None = None  # [rows, n_adapters]
        self.count: torch.Tensor | None = None  # [n_adapters]: modules where each adapter exists

    def observe(self, module: FusedLoraLinear, x: torch.Tensor) -> None:
        if module.slot not in self.modules:
            return
        last = x[:, -1, :] if x.dim() == 3 else x
        scores = logo_score(module.adapter_delta(last, self.num_adapters), self.signal)  # [rows, N]
        present = torch.zeros(self.num_adapters, device=scores.device)
        present[module.row_adapter.unique()] = 1.0
        scores = scores * present
        self.total = scores if self.total is None else self.total + scores
        self.count = present if self.count is None else self.count + present

    def scores(self) -> torch.Tensor:
        if self.total is None or self.count is None:
            raise RuntimeError("LoGo probe observed no LoRA module")
        return self.total / self.count.clamp_min(1.0)


def probe_modules(loaded: LoadedModel, which: LogoModules) -> set[int]:
    """Slots LoGo reads: the first LoRA module of the last adapted layer, or all of them."""
    modules = loaded.bank.modules
    if which == "all":
        return {m.slot for m in modules}
    in_layers = [m for m in modules if m.layer_index is not None]
    if not in_layers:
        return {modules[-1].slot}
    last_layer = max(m.layer_index for m in in_layers)  # type: ignore[type-var]
    return {next(m.slot for m in in_layers if m.layer_index == last_layer)}


@dataclass
class SelectItem:
    prompt: EncodedPrompt
    candidates: list[int]
    top_k: int
    signal: LogoSignal
    modules: LogoModules
    calibration: LogoCalibration = "none"


CONTENT_FREE_TEXT = "N/A"
"""The user message of the content-free reference prompt (as in contextual calibration)."""


@dataclass
class Selection:
    selected: list[int]  # global indices, strongest first
    scores: dict[int, float]  # LoGo score of every candidate


def select(
    loaded: LoadedModel, items: list[SelectItem], content_free: EncodedPrompt | None = None
) -> list[Selection]:
    """Top-k adapters of each query by LoGo signal, from one batched base forward per option group.

    ``content_free``: the encoded reference prompt, needed by items with
    ``calibration="content_free"``.
    """
    results: list[Selection | None] = [None] * len(items)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault((item.signal, item.modules, item.calibration), []).append(index)
    for (signal, modules, calibration), indices in groups.items():
        prompts = [items[i].prompt for i in indices]
        if calibration == "content_free":
            if content_free is None:
                raise ValueError("logo_calibration='content_free' needs the content-free reference prompt")
            scores = _scores(loaded, [content_free, *prompts], signal, modules)  # type: ignore[arg-type]
            scores = scores[1:] / scores[:1].clamp_min(torch.finfo(scores.dtype).tiny)
        else:
            scores = _scores(loaded, prompts, signal, modules)  # type: ignore[arg-type]
        for row, index in enumerate(indices):
            item = items[index]
            candidate_scores = {c: float(scores[row, c]) for c in item.candidates}
            ranked = sorted(item.candidates, key=lambda c: -candidate_scores[c])
            results[index] = Selection(ranked[: item.top_k], candidate_scores)
    return results  # type: ignore[return-value]


def _scores(
    loaded: LoadedModel, prompts: list[EncodedPrompt], signal: LogoSignal, modules: LogoModules
) -> torch.Tensor:
    batch = left_pad([p.ids for p in prompts], pad_token_id(loaded.tokenizer), loaded.model.device)
    probe = LogoProbe(probe_modules(loaded, modules), len(loaded.bank.adapter_names), signal)
    context = ForwardContext(slots=[], module_observer=probe)
    with activate(context):
        loaded.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=1,
        )
    return probe.scores()
