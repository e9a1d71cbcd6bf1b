"""How well does each per-adapter drift measure tell needed adapters from distractors? (dev seed)

Reads a features file of ``policy_features.py`` made over a large catalog (the zoo plus the
``sub_*``/``noise_*`` distractors of ``qaflora zoo distractors``) and reports, per kind of query:

* the median drift of the needed adapters and of the strongest distractor, and the share of
  queries where every needed adapter drifts more than every distractor ("separated"), for the
  next-token KL(base || base+adapter) (``relevance="output"``), the KL gained with depth (the
  default, ``relevance="depth_gain"``) and alternatives (reverse KL, KL only where the adapter
  changes the top token, content-free calibration);
* the recall of the needed adapters among the top-k adapters whose KL reaches 0.5 nats.

    python benchmarks/policy_features.py --n 50 --seed 7777778 --catalog catalog_32.yaml --out F.pt
    python benchmarks/policy_drift_separation.py F.pt
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

KINDS = ("composite", "single", "generic_en")


def measures(data: dict) -> dict[str, torch.Tensor]:
    """``[Q, N]`` drift of every adapter under each measure, from the last layer's log-probs."""
    last = data["lens"][:, :, -1].float()  # [Q, 1+N, V]
    base, adapters = last[:, :1], last[:, 1:]
    p, q = base.exp(), adapters.exp()
    kl = (p * (base - adapters)).sum(-1)
    reverse = (q * (adapters - base)).sum(-1)
    changes = adapters.argmax(-1) != base.argmax(-1)
    return {
        "KL(base||adapter) (relevance='output')": kl,
        "reverse KL": reverse,
        "KL where the top token changes": kl * changes,
        "KL minus content-free KL": kl - data["cf_kl"][:, -1].float(),
        # relevance="depth_gain" (the default): the output KL minus the least KL of earlier layers
        "KL gained with depth (the default)": (kl - data["kl"][:, :, :-1].float().amin(-1)).clamp_min(0.0),
    }


def separation(data: dict, drift: torch.Tensor) -> dict[str, dict[str, float]]:
    names = data["names"]
    distractors = [i for i, n in enumerate(names) if n.startswith(("noise_", "sub_"))]
    out = {}
    for kind in KINDS:
        queries = [i for i, c in enumerate(data["cells"]) if c.startswith(kind)]
        strongest = [float(drift[i, distractors].max()) for i in queries]
        needed = [[float(drift[i, names.index(n)]) for n in data["relevant"][i]] for i in queries]
        row = {"strongest distractor, median": round(statistics.median(strongest), 2)}
        if any(needed):
            row["needed adapters, median"] = round(statistics.median(v for vs in needed for v in vs), 2)
            separated = [min(vs) > s for vs, s in zip(needed, strongest, strict=True) if vs]
            row["separated %"] = round(100 * sum(separated) / len(separated), 1)
        out[kind] = row
    return out


def recall_at(data: dict, kl: torch.Tensor, k: int, floor: float = 0.5) -> dict[str, float]:
    names = data["names"]
    out = {}
    for kind in KINDS:
        queries = [i for i, c in enumerate(data["cells"]) if c.startswith(kind)]
        hits = 0
        for i in queries:
            kept = [j for j in kl[i].argsort(descending=True).tolist() if kl[i, j] >= floor][:k]
            hits += set(data["relevant"][i]) <= {names[j] for j in kept}
        out[kind] = round(100 * hits / len(queries), 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("features", type=Path, help="output of policy_features.py")
    args = parser.parse_args(argv)
    data = torch.load(args.features, weights_only=False)
    drifts = measures(data)
    for name, drift in drifts.items():
        print(name, separation(data, drift))
    for name in ("KL(base||adapter) (relevance='output')", "KL gained with depth (the default)"):
        for k in (2, 3, 4):
            print(
                f"{name}: recall of the needed adapters in the top {k} >= 0.5 nats",
                recall_at(data, drifts[name], k),
            )


if __name__ == "__main__":
    main()
