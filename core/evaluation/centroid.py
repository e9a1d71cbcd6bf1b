"""The centroid-similarity baseline: weights from query-embedding similarity to per-adapter centroids.

The paper's training-free baseline needs a few domain samples per adapter (its weakness:
qa-FLoRA needs none). Embedding = the base model's last-layer hidden state, mean-pooled over
the prompt; each adapter's centroid is the mean embedding of samples of what it was trained
on; a query's weights are its cosine similarities to the candidates' centroids, clipped at 0
and normalised to sum to 1.
"""

from __future__ import annotations

import torch

from ..engine import FusionEngine
from ..fused_lora import activate
from ..zoo.skills import TASKS
from ..zoo.world import ZooExample, make_examples

CENTROID_SEED = 4242


def _samples_for(adapter: str, n: int) -> list[ZooExample]:
    if adapter in TASKS:
        return make_examples(adapter, "en", n, CENTROID_SEED)
    if adapter.startswith("lang_"):
        return make_examples(None, adapter.removeprefix("lang_"), n, CENTROID_SEED)
    raise ValueError(f"no training distribution known for adapter {adapter!r}")


class CentroidRouter:
    def __init__(self, engine: FusionEngine, samples_per_adapter: int = 16) -> None:
        self.engine = engine
        self.centroids: dict[str, torch.Tensor] = {}
        for adapter in engine.adapter_names:
            try:
                samples = _samples_for(adapter, samples_per_adapter)
            except ValueError:
                continue
            self.centroids[adapter] = self.embed([s.messages for s in samples]).mean(0)

    @torch.inference_mode()
    def embed(self, queries: list) -> torch.Tensor:
        """Mean-pooled last hidden state of the base model (no adapter), one row per query."""
        rows = []
        for query in queries:
            ids = torch.tensor([self.engine.encode(query).ids], device=self.engine.device)
            with activate(None):
                out = self.engine.model(
                    input_ids=ids, output_hidden_states=True, use_cache=False, logits_to_keep=1
                )
            rows.append(out.hidden_states[-1][0].float().mean(0).cpu())
        return torch.stack(rows)

    def weights(self, query, candidates: list[str]) -> dict[str, float]:
        embedding = self.embed([query])[0]
        sims = {
            name: max(
                0.0, float(torch.nn.functional.cosine_similarity(embedding, self.centroids[name], dim=0))
            )
            for name in candidates
        }
        total = sum(sims.values())
        if total <= 0:
            return {name: 1.0 / len(candidates) for name in candidates}
        return {name: value / total for name, value in sims.items()}
