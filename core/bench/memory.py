"""Peak memory with k adapters loaded vs the base model alone.

Each configuration loads in a fresh subprocess and reports its peak resident set size
(``ru_maxrss``), so one measurement cannot inherit another's allocations. Adapters are
loaded once into ONE model: memory should grow only by their LoRA factors.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from .common import bench_parser, bench_world, environment, print_table, write_json


def _status_kb(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def peak_rss_kb() -> int:
    """Peak resident set of THIS program image, in kB.

    ``ru_maxrss`` is not enough on Linux: it survives ``fork``+``exec``, so a child started by a
    parent that already holds models reports the parent's size. ``VmHWM`` belongs to the
    process's current address space and starts afresh at ``exec``.
    """
    peak = _status_kb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(shape: str, k: int, device: str) -> dict:
    """Run inside the subprocess: load, do one weighing + short generation, report peak RSS."""
    import torch

    world = bench_world(shape, max(k, 1))
    if k == 0:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(world.base)).to(device)
        with torch.inference_mode():
            model.generate(
                input_ids=torch.tensor([[1, 5, 6, 7]], device=device),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=0,
            )
        lora_bytes = 0
    else:
        from ..engine import FusionEngine

        engine = FusionEngine.from_pretrained(world.base, world.catalog(k), device=device, progress=False)
        engine.generate("Solve twelve plus seven", max_new_tokens=8)
        lora_bytes = engine.loaded.bank.memory_bytes()
    gc.collect()
    steady_kb = _status_kb("VmRSS") or 0  # while the model is still alive: what serving holds
    peak_kb = peak_rss_kb()
    gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    if k:
        engine.close()
    return {
        "k": k,
        "peak_rss_mb": peak_kb / 1024,
        "steady_rss_mb": steady_kb / 1024,
        "lora_mb": lora_bytes / 2**20,
        "gpu_peak_mb": gpu / 2**20,
    }


def run(shape: str, ks: list[int], device: str, console: Console) -> dict:
    bench_world(shape, max(ks))  # build the files once, outside the measured processes
    records = []
    for k in [0, *ks]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "qaflora.bench.memory",
                "--child",
                str(k),
                "--shape",
                shape,
                "--device",
                device,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        records.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = records[0]["peak_rss_mb"]
    base_steady = records[0]["steady_rss_mb"]
    for record in records:
        record["over_base_mb"] = record["peak_rss_mb"] - base
        record["ratio_to_base"] = record["peak_rss_mb"] / base
        record["steady_over_base_mb"] = record["steady_rss_mb"] - base_steady
    print_table(
        console,
        f"peak memory, fresh process per row ({shape}, {device})",
        [
            "k adapters",
            "peak RSS MB",
            "peak over base MB",
            "peak ratio",
            "steady RSS MB",
            "steady over base MB",
            "LoRA factors MB",
        ],
        [
            [
                r["k"],
                r["peak_rss_mb"],
                r["over_base_mb"],
                r["ratio_to_base"],
                r["steady_rss_mb"],
                r["steady_over_base_mb"],
                r["lora_mb"],
            ]
            for r in records
        ],
    )
    return {
        "suite": "memory",
        "info": {"shape": shape, "device": device, **environment()},
        "results": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=None)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.shape, args.child, args.device)))
        return 0
    write_json(args.json, run(args.shape, args.k, args.device, Console(width=160)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
