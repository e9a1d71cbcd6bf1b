"""Shared benchmark plumbing: model shapes, timing, tables and JSON."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..catalog import AdapterCatalog
from ..config import FusionConfig
from ..testing import build_tiny_model, make_random_adapter

SHAPES: dict[str, dict[str, int]] = {
    # ~25 M parameters: the default CPU shape (DESIGN §5 used a 33.5 M random Llama, d=512, 8 layers)
    "cpu-small": {"hidden": 512, "layers": 8},
    # one Llama-2-7B decoder layer's width, few layers: for a GPU
    "7b-layer": {"hidden": 4096, "layers": 2},
    "tiny": {"hidden": 64, "layers": 3},
}


@dataclass
class BenchWorld:
    base: Path
    adapters: dict[str, Path]
    shape: str
    rank: int

    def catalog(self, k: int | None = None) -> AdapterCatalog:
        names = list(self.adapters)[: k or len(self.adapters)]
        return AdapterCatalog.from_dirs({n: self.adapters[n] for n in names})

    def describe(self) -> dict[str, Any]:
        config = json.loads((self.base / "config.json").read_text())
        return {
            "shape": self.shape,
            "hidden_size": config.get("hidden_size"),
            "layers": config.get("num_hidden_layers"),
            "vocab": config.get("vocab_size"),
            "lora_rank": self.rank,
            "adapters_built": len(self.adapters),
        }


BENCH_FUSION = FusionConfig(policy="shares")
"""The fusion every bench engine runs: qa-FLoRA shares, so every random adapter is active in every
layer. The measured cost is the engine's (weighing + k fused adapters); the default policy would
keep only the adapters that move the next token, which on random adapters is arbitrary."""


def bench_world(shape: str, n_adapters: int, rank: int = 16, root: Path | None = None) -> BenchWorld:
    """A random Llama of ``shape`` with ``n_adapters`` random rank-``rank`` adapters (cached on disk)."""
    dims = SHAPES[shape]
    root = root or Path(tempfile.gettempdir()) / f"qaflora-bench-{shape}-r{rank}"
    base = root / "base"
    if not (base / "config.json").exists():
        build_tiny_model("llama", base, hidden=dims["hidden"], layers=dims["layers"], context=2048)
    adapters = {}
    for i in range(n_adapters):
        path = root / f"adapter{i:02d}"
        if not (path / "adapter_model.safetensors").exists():
            make_random_adapter(base, path, seed=1000 + i, rank=rank, alpha=2.0 * rank)
        adapters[f"adapter{i:02d}"] = path
    return BenchWorld(base=base, adapters=adapters, shape=shape, rank=rank)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def median_seconds(fn: Callable[[], Any], repeats: int = 7, warmup: int = 2, sync: bool = False) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None off Linux."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def peak_extra_mb(fn: Callable[[], Any], device: str = "cpu") -> float | None:
    """Memory ``fn`` needs beyond what is already resident: its transient peak, in MB.

    On CUDA: the allocator's peak above the allocation before the call. On Linux CPU: the
    kernel's resident high-water mark, reset just before the call (``/proc/self/clear_refs``
    with ``5``), minus the resident size before it. ``None`` where neither is available.
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    clear_refs = Path("/proc/self/clear_refs")
    before = status_kb("VmRSS")
    if before is None or not clear_refs.exists():
        return None
    try:
        clear_refs.write_text("5")
    except OSError:
        return None
    fn()
    peak = status_kb("VmHWM")
    return None if peak is None else max(peak - before, 0) / 1024


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def prompt_of_tokens(tokenizer, n_tokens: int) -> str:
    """A plain-text prompt that encodes to exactly ``n_tokens`` tokens (with special tokens)."""
    words = ("Solve the sum of twelve and seven then answer in Russian please " * 64).split()
    text = ""
    for word in words:
        candidate = f"{text} {word}".strip()
        if len(tokenizer(candidate)["input_ids"]) > n_tokens:
            break
        text = candidate
    ids = tokenizer(text)["input_ids"]
    while len(ids) < n_tokens:  # pad with single characters to hit the count exactly
        text += " a"
        ids = tokenizer(text)["input_ids"]
    return text


def print_table(console: Console, title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))


def bench_parser(doc: str | None, *, repeats: int | None = 5) -> argparse.ArgumentParser:
    """The options every suite shares: shape, device, repeats, JSON output."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--device", default="cpu")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--json", type=Path, default=None, help="Write the results as JSON here.")
    return parser
