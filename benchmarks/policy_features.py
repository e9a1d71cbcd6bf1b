"""Dump what a fusion policy can see, per query, so rules can be designed offline.

For every query of a set (composite, single-domain, generic English; ``qaflora.zoo.world``)
this runs the weighing pass over the WHOLE catalog (row 0 = base, row j = base + adapter j
at scale 1) and stores the per-layer logit-lens log-probabilities of every row, the
per-layer divergences the engine computes from them (KL, JS), the same for the content-free
reference prompt ("N/A" in the chat template), and the labels (relevant adapters, answer
token). ``FusedProbe`` then scores any per-layer weight matrix on the stored queries with one
batched fused forward: the zoo's answers are ONE token, so the argmax of the next-token
distribution is the answer (exact match additionally needs the end-of-sequence token next;
``policy_search.py`` checks this first-token proxy against real generation).

    python benchmarks/policy_features.py --n 50 --seed 7777778 --out /tmp/policy_dev.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from qaflora.batching import left_pad, pad_token_id
from qaflora.catalog import AdapterCatalog
from qaflora.divergence import divergences
from qaflora.engine import FusionEngine
from qaflora.evaluation.tasks import cell_of, relevant_adapters
from qaflora.policy import fused_next_logprobs
from qaflora.weighing import forward_rows
from qaflora.zoo import shipped_catalog_path
from qaflora.zoo.world import ZooExample, eval_set, make_examples
from tqdm.auto import tqdm

DEV_SEED = 7_777_778


def query_set(n: int, seed: int) -> list[ZooExample]:
    """Composite cells, the mixed single-domain stream and generic English, ``n`` per cell."""
    return [
        *eval_set("composite", n, seed),
        *eval_set("single", n, seed),
        *make_examples(None, "en", n, seed),
    ]


def load_engine(catalog: Path | None = None) -> FusionEngine:
    path = Path(catalog) if catalog else shipped_catalog_path()
    spec = AdapterCatalog.from_file(path)
    return FusionEngine.from_pretrained(spec.base_model, spec, progress=False, max_batch_size=64)


@torch.inference_mode()
def lens_rows(engine: FusionEngine, prompts: Sequence[list[int]], chunk: int = 8) -> torch.Tensor:
    """Logit-lens log-probs ``[Q, 1+N, L, V]`` of base + every adapter alone, per query."""
    loaded = engine.loaded
    n = len(engine.adapter_names)
    out = []
    for start in range(0, len(prompts), chunk):
        group = prompts[start : start + chunk]
        sequences, row_adapter = [], []
        for ids in group:
            sequences += [ids] * (1 + n)
            row_adapter += [None, *range(n)]
        batch = left_pad(sequences, pad_token_id(loaded.tokenizer), loaded.model.device)
        hidden = forward_rows(loaded, batch, row_adapter, need_mean=False).stacked("last")  # [R, L, d]
        logprobs = torch.log_softmax(loaded.anatomy.lens_logits(hidden), dim=-1)  # [R, L, V]
        out.append(logprobs.view(len(group), 1 + n, *logprobs.shape[1:]).float().cpu())
    return torch.cat(out)


def divergences_of(lens: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """``[Q, N, L]`` divergence of each adapter row from its query's base row, per layer."""
    return torch.stack([divergences(q[0], q[1:], kind) for q in lens])  # type: ignore[arg-type]


@dataclass
class Features:
    names: list[str]
    messages: list[list[dict[str, str]]]
    cells: list[str]
    relevant: list[list[str]]
    answer_ids: torch.Tensor  # [Q]
    prompts: list[list[int]]
    lens: torch.Tensor  # [Q, 1+N, L, V] log-probs (float16 on disk)
    kl: torch.Tensor  # [Q, N, L]
    js: torch.Tensor  # [Q, N, L]
    cf_lens: torch.Tensor  # [1+N, L, V]
    cf_kl: torch.Tensor  # [N, L]
    cf_js: torch.Tensor  # [N, L]

    def save(self, path: Path) -> None:
        data = dict(self.__dict__)
        data["lens"] = self.lens.half()
        torch.save(data, path)

    @classmethod
    def load(cls, path: Path) -> Features:
        data = torch.load(path, weights_only=False)
        data["lens"] = data["lens"].float()
        return cls(**data)

    def mask(self, prefix: str) -> list[int]:
        """Indices of queries whose cell starts with ``prefix`` ('' = all)."""
        return [i for i, c in enumerate(self.cells) if c.startswith(prefix)]

    def relevant_matrix(self) -> torch.Tensor:
        """``[Q, N]`` 1 where the adapter is one the query needs (labels; evaluation only)."""
        out = torch.zeros(len(self.cells), len(self.names))
        for q, needed in enumerate(self.relevant):
            for name in needed:
                out[q, self.names.index(name)] = 1.0
        return out


def collect(engine: FusionEngine, examples: Sequence[ZooExample]) -> Features:
    prompts = [engine.encode(ex.messages).ids for ex in examples]
    answer_ids = torch.tensor(
        [engine.tokenizer(ex.answer, add_special_tokens=False)["input_ids"][0] for ex in examples]
    )
    lens = torch.cat([lens_rows(engine, prompts[i : i + 64]) for i in tqdm(range(0, len(prompts), 64))])
    cf_lens = lens_rows(engine, [engine.content_free_prompt.ids])[0]
    return Features(
        names=engine.adapter_names,
        messages=[ex.messages for ex in examples],
        cells=[_cell(ex) for ex in examples],
        relevant=[relevant_adapters(ex) for ex in examples],
        answer_ids=answer_ids,
        prompts=prompts,
        lens=lens,
        kl=divergences_of(lens, "kl"),
        js=divergences_of(lens, "js"),
        cf_lens=cf_lens,
        cf_kl=divergences(cf_lens[0], cf_lens[1:], "kl"),
        cf_js=divergences(cf_lens[0], cf_lens[1:], "js"),
    )


def _cell(ex: ZooExample) -> str:
    kind = (
        "composite"
        if ex.domain and ex.language != "en"
        else ("generic_en" if not ex.domain and ex.language == "en" else "single")
    )
    return f"{kind}:{cell_of(ex)}"


class FusedProbe:
    """Next-token log-probs of stored queries under any per-layer weights, batched."""

    def __init__(self, engine: FusionEngine, prompts: Sequence[list[int]]) -> None:
        self.engine = engine
        self.prompts = list(prompts)

    @torch.inference_mode()
    def logprobs(
        self, weights: torch.Tensor, rows: Sequence[int] | None = None, chunk: int = 128
    ) -> torch.Tensor:
        """``weights``: ``[Q, N, L]`` (rows of the stored queries) -> ``[Q, V]`` final log-probs."""
        loaded = self.engine.loaded
        rows = list(range(len(self.prompts))) if rows is None else list(rows)
        n = weights.shape[1]
        out = []
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            w = weights[start : start + len(part)].to(torch.float32)
            out.append(fused_next_logprobs(loaded, [self.prompts[r] for r in part], list(range(n)), w))
        return torch.cat(out)

    def correct(
        self, weights: torch.Tensor, answer_ids: torch.Tensor, rows: Sequence[int] | None = None
    ) -> torch.Tensor:
        """``[Q]`` bool: the argmax next token is the answer (first-token proxy of exact match)."""
        return self.logprobs(weights, rows).argmax(-1) == answer_ids


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, default=None)
    parser.add_argument("--n", type=int, default=50, help="queries per cell")
    parser.add_argument("--seed", type=int, default=DEV_SEED)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    engine = load_engine(args.catalog)
    try:
        features = collect(engine, query_set(args.n, args.seed))
    finally:
        engine.close()
    features.save(args.out)
    print(f"{len(features.cells)} queries, {len(features.names)} adapters -> {args.out}")


if __name__ == "__main__":
    main()
