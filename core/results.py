"""What the engine returns: fusion weights, generation results, usage and timings.

These are pydantic models because they cross the boundary to users, LangChain
``response_metadata`` and LlamaIndex ``additional_kwargs``: ``to_dict()`` gives
plain JSON-serialisable data for traces.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length"]


class FusionWeights(BaseModel):
    """Per-layer fusion weights of one query.

    ``matrix[j, l]`` is the weight of ``adapters[j]`` at decoder layer ``l``; in
    ``static``/``logo`` modes and ``qaflora`` with ``policy="shares", normalize="sum"`` each
    column sums to 1 (``policy="relevant"``: each kept adapter at its strength). ``divergences``
    holds the raw per-layer divergences when the mode computed them, and
    ``selection_scores`` the LoGo signal of every candidate when preselection ran.
    ``relevance`` (``policy="relevant"``) holds the next-token drift, KL(base || base+adapter)
    in nats, of every weighed candidate, kept or not: why each adapter was or was not used.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    adapters: list[str]
    matrix: torch.Tensor
    mode: str
    divergences: torch.Tensor | None = None
    selection_scores: dict[str, float] | None = None
    relevance: dict[str, float] | None = None

    @property
    def num_layers(self) -> int:
        return int(self.matrix.shape[1]) if self.matrix.dim() == 2 else 0

    def mean(self) -> dict[str, float]:
        """Mean weight of each adapter over layers."""
        if not self.adapters:
            return {}
        means = self.matrix.float().mean(dim=1)
        return {name: float(v) for name, v in zip(self.adapters, means, strict=True)}

    def ranked(self) -> list[tuple[str, float]]:
        """Adapters sorted by mean weight, strongest first."""
        return sorted(self.mean().items(), key=lambda item: -item[1])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionWeights:
        """Rebuild from :meth:`to_dict` output (e.g. a LangChain ``response_metadata["fusion"]``)."""
        divergences = data.get("divergences")
        return cls(
            adapters=list(data["adapters"]),
            matrix=torch.tensor(data["matrix"], dtype=torch.float32).reshape(len(data["adapters"]), -1),
            mode=data["mode"],
            divergences=None if divergences is None else torch.tensor(divergences, dtype=torch.float32),
            selection_scores=data.get("selection_scores"),
            relevance=data.get("relevance"),
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mode": self.mode,
            "adapters": list(self.adapters),
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix.float().tolist()],
            "mean": {k: round(v, 6) for k, v in self.mean().items()},
        }
        if self.divergences is not None:
            data["divergences"] = [[float(v) for v in row] for row in self.divergences.float().tolist()]
        if self.selection_scores is not None:
            data["selection_scores"] = dict(self.selection_scores)
        if self.relevance is not None:
            data["relevance"] = dict(self.relevance)
        return data


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {**self.model_dump(), "total_tokens": self.total_tokens}


class Timings(BaseModel):
    """Seconds spent per stage. Stages shared by a batch are reported for the batch."""

    preselect: float = 0.0
    weigh: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0
    queued: float = 0.0
    batch_size: int = 1
    first_token: float = 0.0  # seconds from submission to the first generated token (time to first token)

    @property
    def total(self) -> float:
        return self.preselect + self.weigh + self.prefill + self.decode

    def to_dict(self) -> dict[str, float]:
        return {**self.model_dump(), "total": self.total}


class FusionResult(BaseModel):
    """One generated answer and why it came out that way."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    text: str
    weights: FusionWeights
    usage: Usage
    timings: Timings
    finish_reason: FinishReason
    model_name: str
    token_ids: list[int] = Field(default_factory=list)

    @property
    def adapters(self) -> list[str]:
        """The adapters that took part (after preselection)."""
        return list(self.weights.adapters)

    def metadata(self) -> dict[str, Any]:
        """JSON-ready metadata for tracing integrations."""
        return {
            "model_name": self.model_name,
            "finish_reason": self.finish_reason,
            "adapters": self.adapters,
            "fusion": self.weights.to_dict(),
            "usage": self.usage.to_dict(),
            "timings": self.timings.to_dict(),
        }


class EngineLoad(BaseModel):
    """Requests an engine holds at one moment: waiting for a batch, and being generated."""

    model_config = ConfigDict(frozen=True)

    queued: int
    running: int

    @property
    def idle(self) -> bool:
        return self.queued == 0 and self.running == 0


class StreamEvent(BaseModel):
    """A piece of streamed text; the last event of a stream also carries the full result."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    text: str
    result: FusionResult | None = None


class SchedulerState(BaseModel):
    """A cheap snapshot of the engine's worker, for metrics, health checks and tests.

    ``running_rows``: requests decoding now; ``queued_jobs``: submitted, not yet admitted;
    ``kv_bytes``: the running batch's KV cache; ``cached_bytes`` / ``cached_blocks``: the
    prefix cache (``cache_hit_blocks``: blocks reused so far); ``conversations``: weight plans
    remembered for ``conversation_weights="once"``; ``steps``: decode steps run so far;
    ``prefill_tokens_run`` / ``prefill_tokens_reused``: prompt tokens the answers' prefills
    computed / took from the cache, ``weigh_tokens_*`` the same for the weighing pass's rows.
    """

    scheduling: str
    running_rows: int = 0
    queued_jobs: int = 0
    kv_bytes: int = 0
    cached_bytes: int = 0
    cached_blocks: int = 0
    cache_limit_bytes: int = 0
    cache_hit_blocks: int = 0
    conversations: int = 0
    steps: int = 0
    admitted: int = 0
    finished: int = 0
    prefill_tokens_run: int = 0
    prefill_tokens_reused: int = 0
    weigh_tokens_run: int = 0
    weigh_tokens_reused: int = 0
