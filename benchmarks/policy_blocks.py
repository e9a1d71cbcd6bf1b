"""The composition check over the labelled pair: the same strength in every layer vs per block.

Offline data behind ``fit_blocks`` (benchmarks/POLICY.md, "Strengths by depth"). For the
composite queries of a features file (``policy_features.py``) it runs the check over the two
adapters each query needs (labels: this isolates strength from relevance) with the
product-of-experts target on the log-probs, once over the uniform strengths of ``fit_grid`` and
once with ``block_candidates`` added, and counts first-token hits (the zoo's answers are one
word; ``policy_search.py`` checks the proxy against real generation). Also printed: how often
the target itself is the answer (what any check can reach by aiming at it) and how often some
candidate of each family gives the answer (what a perfect aim would reach).

    python benchmarks/policy_blocks.py F.pt [--catalog C] [--n 50] [--blocks 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from policy_features import Features, FusedProbe, load_engine
from qaflora.config import FusionConfig
from qaflora.policy import block_candidates, product_of_experts, strength_grid
from tqdm.auto import tqdm

GRID = FusionConfig().fit_grid  # the engine's own grid, so the offline check is the real one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--catalog", type=Path, default=None, help="The catalog the features came from.")
    parser.add_argument("--n", type=int, default=50, help="Composite queries per cell.")
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()
    features = Features.load(args.features)
    engine = load_engine(args.catalog)
    layers = features.kl.shape[-1]
    combos = strength_grid(2, GRID)
    candidates = block_candidates(combos, layers, args.blocks)
    uniform = len(combos)
    print(f"{uniform} uniform candidates, {len(candidates)} with {args.blocks} blocks ({layers} layers)")
    print("| cell | queries | uniform check | block check | target is the answer | any uniform | any block |")
    print("|---|---|---|---|---|---|---|")
    cells = sorted({c for c in features.cells if c.startswith("composite:")})
    for cell in cells:
        queries = [q for q, c in enumerate(features.cells) if c == cell][: args.n]
        counts = dict.fromkeys(("uniform", "blocks", "target", "any_uniform", "any_blocks"), 0)
        for q in tqdm(queries, desc=cell, leave=False):
            needed = [features.names.index(n) for n in features.relevant[q]]
            base = features.lens[q, 0, -1]
            target = int(product_of_experts(base, features.lens[q, [1 + i for i in needed], -1]).argmax())
            weights = torch.zeros(len(candidates), len(features.names), layers)
            weights[:, needed] = candidates
            probe = FusedProbe(engine, [features.prompts[q]] * len(candidates))
            logprobs = probe.logprobs(weights)
            top = logprobs.argmax(-1)
            answer = int(features.answer_ids[q])
            # the first candidate wins ties, as in qaflora.policy.best_strengths
            counts["uniform"] += int(top[int(logprobs[:uniform, target].argmax())]) == answer
            counts["blocks"] += int(top[int(logprobs[:, target].argmax())]) == answer
            counts["target"] += target == answer
            counts["any_uniform"] += bool((top[:uniform] == answer).any())
            counts["any_blocks"] += bool((top == answer).any())
        n = len(queries)
        print(
            f"| {cell.split(':')[1]} | {n} | "
            + " | ".join(f"{100 * counts[k] / n:.0f} %" for k in counts)
            + " |"
        )
    engine.close()


if __name__ == "__main__":
    main()
