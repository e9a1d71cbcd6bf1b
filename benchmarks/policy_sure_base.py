"""How sure the base is where the relevance rule keeps an adapter: the data behind ``sure_base``.

For every query of a ``policy_features.py`` dump this applies the default relevance rule (depth
gain >= 0.5 nats, at most two; before the composition check) and records, for each adapter it
keeps, whether the query's labels ask for it and the base's own next-token probability (the
largest of row 0's output distribution). It then prints, per threshold, how many labelled and
how many unlabelled keeps a gate on those adapters would drop where the base is at least this
sure, for the language adapters (``lang_*``: why they are exempt) and for the others, and which
keeps ``sure_base`` (the others only) removes at the chosen threshold. The labels are used
only to count, never by the rule.

    python benchmarks/policy_features.py --n 100 --seed 7777778 --catalog DIR/catalog_32.yaml --out F.pt
    python benchmarks/policy_sure_base.py F.pt
"""

from __future__ import annotations

import argparse
import collections
import statistics
from pathlib import Path

import torch
from policy_features import Features
from qaflora.policy import depth_gain, select_relevant

THRESHOLDS = (0.8, 0.9, 0.95, 0.98)


def keeps(features: Features) -> list[tuple[str, str, bool, float]]:
    """(cell, adapter, labelled, base next-token probability) for every adapter the rule keeps."""
    out = []
    for q, cell in enumerate(features.cells):
        gain = depth_gain(features.kl[q, :, -1], features.kl[q])
        sure = float(features.lens[q, 0, -1].exp().max())
        for j in select_relevant(gain, 0.5, 2):
            name = features.names[j]
            out.append((cell, name, name in features.relevant[q], sure))
    return out


def second_keeps(features: Features, sure_base: float) -> list[tuple[float, bool]]:
    """(how sure the first kept adapter is alone, is the second labelled) for every query where
    the rule, after the base's gate at ``sure_base``, keeps a non-language adapter second."""
    out = []
    for q in range(len(features.cells)):
        gain = depth_gain(features.kl[q, :, -1], features.kl[q])
        if float(features.lens[q, 0, -1].exp().max()) >= sure_base:
            gain = torch.where(_is_language(features.names), gain, torch.zeros_like(gain))
        kept = select_relevant(gain, 0.5, 2)
        if len(kept) == 2 and not features.names[kept[1]].startswith("lang_"):
            first_sure = float(features.lens[q, 1 + kept[0], -1].exp().max())
            out.append((first_sure, features.names[kept[1]] in features.relevant[q]))
    return out


def _is_language(names: list[str]) -> torch.Tensor:
    return torch.tensor([name.startswith("lang_") for name in names])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--chosen", type=float, default=0.98)
    args = parser.parse_args()
    features = Features.load(args.features)
    kept = keeps(features)
    print(f"{args.features}: {len(features.cells)} queries, {len(features.names)} adapters")
    sure = features.lens[:, 0, -1].exp().amax(-1)
    by_cell: dict[str, list[float]] = collections.defaultdict(list)
    for q, cell in enumerate(features.cells):
        by_cell[cell].append(float(sure[q]))
    print(
        "base's next-token probability, median per cell: "
        + ", ".join(f"{cell} {statistics.median(values):.2f}" for cell, values in sorted(by_cell.items()))
    )
    header = " | ".join(f"a gate at >= {t} drops" for t in THRESHOLDS)
    print(f"| adapters | keeps, labelled / unlabelled | {header} |")
    print("|---|---|" + "---|" * len(THRESHOLDS))
    for group in ("language", "other"):
        rows = [k for k in kept if k[1].startswith("lang_") == (group == "language")]
        good = [k[3] for k in rows if k[2]]
        bad = [k[3] for k in rows if not k[2]]
        cells = [f"{sum(s >= t for s in good)} / {sum(s >= t for s in bad)}" for t in THRESHOLDS]
        print(f"| {group} | {len(good)} / {len(bad)} | " + " | ".join(cells) + " |")
    removed = collections.Counter(
        (cell, name)
        for cell, name, labelled, sure in kept
        if not labelled and sure >= args.chosen and not name.startswith("lang_")
    )
    lost = collections.Counter(
        (cell, name)
        for cell, name, labelled, sure in kept
        if labelled and sure >= args.chosen and not name.startswith("lang_")
    )
    print(f"unlabelled keeps the gate removes at {args.chosen}: {dict(removed.most_common())}")
    print(f"labelled non-language keeps it removes at {args.chosen}: {dict(lost.most_common())}")
    print("one step on (sure_after_first): second adapters dropped because the first is sure alone")
    print("| threshold | labelled dropped | unlabelled dropped |")
    print("|---|---|---|")
    seconds = second_keeps(features, args.chosen)
    for t in THRESHOLDS:
        labelled = sum(sure >= t for sure, is_labelled in seconds if is_labelled)
        unlabelled = sum(sure >= t for sure, is_labelled in seconds if not is_labelled)
        print(f"| {t} | {labelled} | {unlabelled} |")


if __name__ == "__main__":
    main()
