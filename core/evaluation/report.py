"""Markdown tables for ``qaflora eval``."""

from __future__ import annotations

from collections.abc import Sequence

from .runner import MethodScore


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def accuracy_table(scores: Sequence[MethodScore], title: str) -> str:
    """One row per method; a "same as base" column when the run compared answers with the base's."""
    cells = sorted({cell for s in scores for cell in s.accuracy_by_cell})
    compared = any("same_as_reference" in s.notes for s in scores)
    header = [
        "method",
        "candidates",
        *cells,
        "avg",
        "routing",
        *(["same as base"] if compared else []),
        "ms/query",
    ]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in scores:
        row = [
            s.name,
            s.over,
            *[_pct(s.accuracy_by_cell.get(c)) for c in cells],
            _pct(s.accuracy),
            _pct(s.routing),
            *([_pct(s.notes.get("same_as_reference"))] if compared else []),
            f"{1e3 * s.seconds_per_query:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def recall_table(recall: dict[str, dict[int, float]]) -> str:
    ks = sorted(next(iter(recall.values())))
    lines = [
        "### LoGo selection recall@k (relevant adapters among the k best LoGo scores)",
        "",
        "| queries | " + " | ".join(f"recall@{k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for name, values in recall.items():
        lines.append(f"| {name} | " + " | ".join(_pct(values[k]) for k in ks) + " |")
    return "\n".join(lines) + "\n"
