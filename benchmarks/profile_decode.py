"""Where does a fused decode step spend its time? ``torch.profiler`` on base vs fused decode.

Explains the decode ratio of ``qaflora bench --suite decode``: it profiles ``--tokens`` greedy
decode steps of the same prompt with no adapter and with k stacked adapters, and prints the
operators with the largest self CPU time for each, plus the extra time per token and how much
of it the LoRA matmuls account for. Run it with ``OMP_NUM_THREADS=1`` and without to see the
effect of intra-op threads on small matmuls.

    python benchmarks/profile_decode.py --k 4 --tokens 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from qaflora import FusionEngine
from qaflora.bench.common import SHAPES, bench_world, prompt_of_tokens
from torch.profiler import ProfilerActivity, profile


def profile_decode(engine: FusionEngine, prompt: str, tokens: int, **fusion) -> tuple[float, list[dict]]:
    """Decode seconds per token and the top operators by self CPU time for one generate call."""
    engine.generate(prompt, formatted=True, max_new_tokens=tokens, ignore_eos=True, **fusion)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = engine.generate(prompt, formatted=True, max_new_tokens=tokens, ignore_eos=True, **fusion)
    per_token = result.timings.decode / max(result.usage.completion_tokens - 1, 1)
    rows = [
        {
            "op": event.key,
            "calls": event.count,
            "self_ms": event.self_cpu_time_total / 1e3,
        }
        for event in prof.key_averages()
    ]
    rows.sort(key=lambda r: -r["self_ms"])
    return per_token, rows


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    world = bench_world(args.shape, args.k)
    engine = FusionEngine.from_pretrained(world.base, world.catalog(args.k), progress=False)
    prompt = prompt_of_tokens(engine.tokenizer, 64)
    report = {"threads": torch.get_num_threads(), "k": args.k, "tokens": args.tokens}
    try:
        with torch.inference_mode():
            for label, fusion in (("base", {"mode": "base"}), ("fused", {"mode": "static"})):
                per_token, rows = profile_decode(engine, prompt, args.tokens, **fusion)
                report[label] = {"ms_per_token": per_token * 1e3, "top_ops": rows[: args.top]}
    finally:
        engine.close()

    print(f"threads={report['threads']}  k={args.k}  shape={args.shape}")
    for label in ("base", "fused"):
        print(f"\n{label}: {report[label]['ms_per_token']:.2f} ms per decode token")
        print(f"  {'operator':<28}{'calls':>8}{'self ms':>10}")
        for row in report[label]["top_ops"]:
            print(f"  {row['op']:<28}{row['calls']:>8}{row['self_ms']:>10.1f}")
    extra = report["fused"]["ms_per_token"] - report["base"]["ms_per_token"]
    ratio = report["base"]["ms_per_token"] / report["fused"]["ms_per_token"]
    print(f"\nfused/base tokens/s = {ratio:.3f}; extra {extra:.2f} ms per token")
    report["fused_over_base"] = ratio
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
