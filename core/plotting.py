"""Show fusion weights to a person: a shaded text table for terminals, a heatmap PNG for papers.

The qa-FLoRA paper's layer analysis is a heatmap of weights (adapters x layers);
people read patterns there (language adapters early, task adapters late)
faster than in a list of numbers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.table import Table
from rich.text import Text

from .results import FusionWeights

_SHADES = " ░▒▓█"


def weights_table(weights: FusionWeights, title: str | None = None) -> Table:
    """A rich table: one row per adapter, one column per layer, cells shaded by weight."""
    table = Table(title=title, show_lines=False, pad_edge=False)
    table.add_column("adapter", style="bold")
    for layer in range(weights.num_layers):
        table.add_column(f"L{layer}", justify="right")
    table.add_column("mean", justify="right", style="bold")
    matrix = weights.matrix.float()
    peak = float(matrix.max()) if matrix.numel() else 1.0
    for name, row in zip(weights.adapters, matrix, strict=True):
        cells = [_cell(float(v), peak) for v in row]
        table.add_row(name, *cells, f"{float(row.mean()):.2f}")
    return table


def _cell(value: float, peak: float) -> Text:
    level = 0 if peak <= 0 else min(len(_SHADES) - 1, round(value / peak * (len(_SHADES) - 1)))
    return Text(f"{_SHADES[level]}{value:.2f}")


def plot_heatmap(
    weights: FusionWeights | Sequence[FusionWeights],
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
) -> Path:
    """Save heatmap(s) of adapters x layers to ``path`` (PNG); several weights become subplots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [weights] if isinstance(weights, FusionWeights) else list(weights)
    fig, axes = plt.subplots(
        len(items),
        1,
        figsize=(
            max(4.0, 0.6 * items[0].num_layers + 2.5),
            1.0 + 0.45 * sum(max(1, len(w.adapters)) for w in items) + 0.6 * len(items),
        ),
        squeeze=False,
        layout="constrained",  # leaves room for the suptitle, unlike tight_layout
    )
    for index, (item, axis) in enumerate(zip(items, axes[:, 0], strict=True)):
        matrix = item.matrix.float() if item.matrix.numel() else torch.zeros(1, item.num_layers)
        image = axis.imshow(
            matrix.numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-6, float(matrix.max()))
        )
        axis.set_yticks(range(len(item.adapters)), item.adapters)
        axis.set_xticks(range(item.num_layers), [str(i) for i in range(item.num_layers)])
        axis.set_xlabel("decoder layer")
        if titles is not None:
            axis.set_title(titles[index], fontsize=9)
        fig.colorbar(image, ax=axis, fraction=0.025)
    if suptitle:  # wrapped to the figure's width: a long title must not run off the image
        width_chars = max(int(fig.get_figwidth() * 9), 20)
        fig.suptitle(textwrap.fill(suptitle, width_chars), fontsize="medium")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
