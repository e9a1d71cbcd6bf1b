"""Which adapters the default policy keeps where it should not, per cell, in a large catalog.

`qaflora eval` says how often the default fusion is right; this says why it is wrong. For the
mixed single-domain stream and generic English (100 queries per cell, DEV seed unless
``--seed``), it generates with the default fusion over the whole catalog and counts, per cell,
the queries whose kept adapters are exactly the labelled ones (one adapter on the stream, none on
generic English), the answers right, and which unlabelled adapter was kept how often. The
32-adapter catalog comes from ``qaflora zoo distractors --out DIR``.

    python benchmarks/policy_failures.py --catalog DIR/catalog_32.yaml
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from policy_features import DEV_SEED
from qaflora.catalog import AdapterCatalog
from qaflora.engine import FusionEngine
from qaflora.evaluation.tasks import cell_of, relevant_adapters
from qaflora.zoo import shipped_catalog_path
from qaflora.zoo.world import eval_set, make_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, default=None, help="Catalog YAML (default: the shipped zoo).")
    parser.add_argument("--seed", type=int, default=DEV_SEED)
    parser.add_argument("--n", type=int, default=100, help="Queries per cell.")
    args = parser.parse_args()
    spec = AdapterCatalog.from_file(args.catalog or shipped_catalog_path())
    engine = FusionEngine.from_pretrained(spec.base_model, spec, progress=False, max_batch_size=64)
    queries = [*eval_set("single", args.n, args.seed), *make_examples(None, "en", args.n, args.seed)]
    results = engine.generate_batch([q.messages for q in queries], max_new_tokens=6)
    exact: collections.Counter[str] = collections.Counter()
    right: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    extra: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for query, result in zip(queries, results, strict=True):
        cell = cell_of(query)
        labelled = set(relevant_adapters(query)) if cell != "generic/en" else set()
        kept = set(result.weights.adapters)
        total[cell] += 1
        exact[cell] += kept == labelled
        right[cell] += result.text.strip() == query.answer
        for name in sorted(kept - labelled):
            extra[cell][name] += 1
    print(f"catalog {args.catalog or 'shipped'} ({len(engine.adapter_names)} adapters), seed {args.seed}")
    print("| cell | kept = labelled | right | unlabelled adapters kept (queries) |")
    print("|---|---|---|---|")
    for cell in sorted(total):
        kept_extra = ", ".join(f"{name} {count}" for name, count in extra[cell].most_common()) or "-"
        print(f"| {cell} | {exact[cell]}/{total[cell]} | {right[cell]}/{total[cell]} | {kept_extra} |")
    engine.close()


if __name__ == "__main__":
    main()
