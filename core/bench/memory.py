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

from rich.console import Console

from .common import (
    BENCH_FUSION,
    bench_parser,
    bench_world,
    environment,
    peak_extra_mb,
    print_table,
    prompt_of_tokens,
    status_kb,
    write_json,
)


def peak_rss_kb() -> int:
    """Peak resident set of THIS program image, in kB.

    ``ru_maxrss`` is not enough on Linux: it survives ``fork``+``exec``, so a child started by a
    parent that already holds models reports the parent's size. ``VmHWM`` belongs to the
    process's current address space and starts afresh at ``exec``.
    """
    peak = status_kb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(shape: str, k: int, device: str, weigh: str | None = None) -> dict:
    """Run inside the subprocess: load, then either measure one weighing pass or generate.

    ``weigh``: None (load + short generation: the serving footprint), ``"all"`` (the transient
    memory of the FIRST qa-FLoRA weighing over all k adapters) or ``"logo"`` (the same for LoGo
    top-2 + qa-FLoRA). The weighing runs first in its process, so the allocator cannot serve
    it from memory an earlier call left behind.
    """
    import torch

    world = bench_world(shape, max(k, 1))
    record: dict = {"k": k}
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
        record["lora_mb"] = 0.0
    else:
        from ..engine import FusionEngine

        engine = FusionEngine.from_pretrained(
            world.base, world.catalog(k), config=BENCH_FUSION, device=device, progress=False
        )
        if weigh is not None:
            prompt = prompt_of_tokens(engine.tokenizer, 64)
            options = {"top_k": 2} if weigh == "logo" else {}
            record["weigh_extra_mb"] = peak_extra_mb(
                lambda: engine.fusion_weights(prompt, formatted=True, **options), device
            )
            engine.close()
            return record
        engine.generate("Solve twelve plus seven", max_new_tokens=8)
        record["lora_mb"] = engine.loaded.bank.memory_bytes() / 2**20
    gc.collect()
    record["steady_rss_mb"] = (status_kb("VmRSS") or 0) / 1024  # model alive: what serving holds
    record["peak_rss_mb"] = peak_rss_kb() / 1024
    record["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    if k:
        engine.close()
    return record


def _in_child(shape: str, k: int, device: str, weigh: str | None = None) -> dict:
    command = [sys.executable, "-m", "qaflora.bench.memory", "--child", str(k), "--shape", shape]
    command += ["--device", device] + (["--weigh", weigh] if weigh else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(shape: str, ks: list[int], device: str, console: Console) -> dict:
    bench_world(shape, max(ks))  # build the files once, outside the measured processes
    records = []
    for k in [0, *ks]:
        record = _in_child(shape, k, device)
        if k:
            record["weigh_all_extra_mb"] = _in_child(shape, k, device, "all")["weigh_extra_mb"]
            if k > 2:
                record["weigh_logo2_extra_mb"] = _in_child(shape, k, device, "logo")["weigh_extra_mb"]
        records.append(record)
    base = records[0]["peak_rss_mb"]
    base_steady = records[0]["steady_rss_mb"]
    for record in records:
        record["over_base_mb"] = record["peak_rss_mb"] - base
        record["ratio_to_base"] = record["peak_rss_mb"] / base
        record["steady_over_base_mb"] = record["steady_rss_mb"] - base_steady

    def cell(value: float | None) -> float | str:
        return "—" if value is None else value

    print_table(
        console,
        f"memory, fresh process per cell ({shape}, {device}; weighing: 64-token prompt)",
        [
            "k adapters",
            "peak RSS MB",
            "peak over base MB",
            "peak ratio",
            "steady RSS MB",
            "steady over base MB",
            "LoRA factors MB",
            "weigh all: extra MB",
            "weigh LoGo k=2: extra MB",
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
                cell(r.get("weigh_all_extra_mb")),
                cell(r.get("weigh_logo2_extra_mb")),
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
    parser.add_argument("--weigh", choices=["all", "logo"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.shape, args.child, args.device, args.weigh)))
        return 0
    write_json(args.json, run(args.shape, args.k, args.device, Console(width=160)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
