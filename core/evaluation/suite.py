"""The whole ``qaflora eval`` run: both tables, recall@k, heatmaps, JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..catalog import AdapterCatalog
from ..engine import FusionEngine
from ..plotting import plot_heatmap
from ..zoo.world import (
    DEFAULT_EVAL_SEED,
    SHIPPED_WORLD_SEED,
    WORLD,
    WORLD_SEED,
    WORLD_SEED_VARIABLE,
    WORLD_VARIABLE,
    eval_set,
    generic_questions,
)
from .methods import CALIBRATED_LOGO, EvalContext, Method, composite_methods, generic_methods, stream_methods
from .report import accuracy_table, recall_table
from .runner import mean_weights_by_cell, run_methods, selection_recall


def check_world(catalog_path: Path) -> None:
    """Refuse a zoo built in another world than this process's (``QAFLORA_ZOO_WORLD_SEED``)."""
    info_path = catalog_path.parent / "build_info.json"
    if not info_path.is_file():
        return
    info = json.loads(info_path.read_text())
    built_in = info.get("world_seed", SHIPPED_WORLD_SEED)
    if built_in != WORLD_SEED:
        raise ValueError(
            f"{catalog_path} was built in world {built_in}, this process's world is {WORLD_SEED}: "
            f"run with {WORLD_SEED_VARIABLE}={built_in}"
        )
    kind = info.get("world", "qa")
    if kind != WORLD:
        raise ValueError(
            f"{catalog_path} was built in the {kind!r} world, this process's is {WORLD!r}: "
            f"run with {WORLD_VARIABLE}={kind}"
        )


def run_eval(
    catalog_path: Path,
    *,
    n_per_cell: int = 100,
    seed: int = DEFAULT_EVAL_SEED,
    max_new_tokens: int = 6,
    grid: tuple[float, ...] = (0.5, 1.0, 1.5),
    with_arrow: bool = True,
    tables: tuple[str, ...] = ("composite", "stream", "generic"),
    plot_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    methods: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Run the tables; ``methods``: only the rows whose name contains one of these strings
    (the recall tables and heatmaps then run only when their rows did)."""

    def chosen(rows: list[Method]) -> list[Method]:
        if not methods:
            return rows
        return [m for m in rows if any(part in m.name for part in methods)]

    check_world(Path(catalog_path))
    catalog = AdapterCatalog.from_file(catalog_path)
    if catalog.base_model is None:
        raise ValueError(f"{catalog_path} names no base_model")
    engine = FusionEngine.from_pretrained(
        catalog.base_model, catalog, device=device, progress=progress, max_batch_size=32
    )
    ctx = EvalContext(
        engine=engine,
        base_path=catalog.base_model,
        adapter_paths={a.name: a.path for a in catalog.enabled},
        max_new_tokens=max_new_tokens,
        device=device,
    )
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "catalog": str(catalog_path),
        "n_per_cell": n_per_cell,
        "seed": seed,
        "adapters": engine.adapter_names,
        "max_new_tokens": max_new_tokens,
    }
    markdown = []
    recall = {}
    try:
        if "composite" in tables:
            items = eval_set("composite", n_per_cell, seed)
            scores, weights = run_methods(chosen(composite_methods(grid, with_arrow)), ctx, items, progress)
            payload["composite"] = [s.__dict__ for s in scores]
            markdown.append(
                accuracy_table(
                    scores,
                    f"Composite queries (task asked and answered in a "
                    f"non-English language; {n_per_cell} per cell)",
                )
            )
            if not methods:
                recall["composite"] = selection_recall(ctx, items, (1, 2, 3, 4))
                recall["composite, calibrated"] = selection_recall(
                    ctx, items, (1, 2, 3, 4), **CALIBRATED_LOGO
                )
            if plot_dir is not None and not methods:
                _plot(
                    items,
                    weights["qa-FLoRA all adapters"],
                    plot_dir / "composite_qaflora_all.png",
                    "qa-FLoRA weights over all adapters, mean per composite cell",
                )
                _plot(
                    items,
                    weights["qa-FLoRA pair"],
                    plot_dir / "composite_qaflora_pair.png",
                    "qa-FLoRA weights over the relevant pair, mean per composite cell",
                )
        if "stream" in tables:
            items = eval_set("single", n_per_cell, seed)
            scores, weights = run_methods(chosen(stream_methods(with_arrow)), ctx, items, progress)
            payload["stream"] = [s.__dict__ for s in scores]
            markdown.append(
                accuracy_table(
                    scores, f"Mixed stream of single-domain queries, whole catalog ({n_per_cell} per cell)"
                )
            )
            if not methods:
                recall["single"] = selection_recall(ctx, items, (1, 2, 3, 4))
                recall["single, calibrated"] = selection_recall(ctx, items, (1, 2, 3, 4), **CALIBRATED_LOGO)
            if plot_dir is not None and not methods:
                _plot(
                    items,
                    weights["qa-FLoRA over all"],
                    plot_dir / "single_qaflora_all.png",
                    "qa-FLoRA weights over all adapters, mean per single-domain cell",
                )
        if "generic" in tables:
            items = generic_questions("en", n_per_cell, seed)
            rows = generic_methods()
            rows = [rows[0], *chosen(rows[1:])]  # the base is the reference: always run
            scores, _ = run_methods(rows, ctx, items, progress, reference="base")
            payload["generic"] = [s.__dict__ for s in scores]
            markdown.append(
                accuracy_table(
                    scores,
                    f"Generic English ({n_per_cell} queries; no adapter is made for them: "
                    f"'same as base' = share of answers identical to the base's)",
                )
            )
    finally:
        engine.close()
    if recall:
        markdown.append(recall_table({f"{k} queries": v for k, v in recall.items()}))
        payload["logo_recall"] = recall
    payload["seconds"] = time.perf_counter() - started
    payload["markdown"] = "\n".join(markdown)
    return payload


def _plot(items, weights, path: Path, title: str) -> None:
    cells = mean_weights_by_cell(items, weights)
    names = sorted(cells)
    plot_heatmap([cells[c] for c in names], path, titles=names, suptitle=title)


def write_json(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
