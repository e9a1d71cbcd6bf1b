"""Weighing cost vs catalog size: qa-FLoRA over every adapter vs LoGo top-k + qa-FLoRA.

qa-FLoRA needs one forward row per candidate, so its cost grows with the catalog (the
paper's stated limitation). LoGo preselection costs one base forward whatever the
catalog size, then qa-FLoRA weighs only the k survivors.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..engine import FusionEngine
from .common import (
    BENCH_FUSION,
    bench_parser,
    bench_world,
    count_parameters,
    environment,
    median_seconds,
    print_table,
    prompt_of_tokens,
    write_json,
)


def run(
    shape: str,
    sizes: list[int],
    ks: list[int],
    prompt_tokens: int,
    repeats: int,
    device: str,
    console: Console,
    plot: Path | None,
) -> dict:
    world = bench_world(shape, max(sizes))
    records = []
    params = 0
    for size in sizes:
        engine = FusionEngine.from_pretrained(
            world.base, world.catalog(size), config=BENCH_FUSION, device=device, progress=False
        )
        params = count_parameters(engine.model)
        prompt = prompt_of_tokens(engine.tokenizer, prompt_tokens)
        sync = engine.device.type == "cuda"
        record = {
            "catalog": size,
            "base_prefill_ms": 1e3
            * median_seconds(
                lambda e=engine, p=prompt: e.fusion_weights(p, formatted=True, mode="logo", top_k=1),
                repeats,
                sync=sync,
            ),
            "qaflora_all_ms": 1e3
            * median_seconds(
                lambda e=engine, p=prompt: e.fusion_weights(p, formatted=True), repeats, sync=sync
            ),
        }
        for k in ks:
            record[f"logo_k{k}_ms"] = 1e3 * median_seconds(
                lambda e=engine, p=prompt, k=k: e.fusion_weights(p, formatted=True, top_k=k),
                repeats,
                sync=sync,
            )
            record[f"speedup_k{k}"] = record["qaflora_all_ms"] / record[f"logo_k{k}_ms"]
        records.append(record)
        engine.close()
    info = {
        **world.describe(),
        "params": params,
        "prompt_tokens": prompt_tokens,
        "device": device,
        "repeats": repeats,
        **environment(),
    }
    columns = ["catalog", "LoGo pass only ms", "qa-FLoRA all ms"]
    for k in ks:
        columns += [f"LoGo k={k} + qa-FLoRA ms", f"speed-up k={k}"]
    rows = [
        [
            r["catalog"],
            r["base_prefill_ms"],
            r["qaflora_all_ms"],
            *[v for k in ks for v in (r[f"logo_k{k}_ms"], r[f"speedup_k{k}"])],
        ]
        for r in records
    ]
    print_table(
        console,
        f"weighing time vs catalog size ({params / 1e6:.1f} M params, r={world.rank}, "
        f"{prompt_tokens}-token prompt, {device}; medians of {repeats})",
        columns,
        rows,
    )
    if plot is not None:
        _plot(records, ks, plot, f"{shape}, {params / 1e6:.1f} M params, {device}")
        console.print(f"plot saved to {plot}")
    return {"suite": "scaling", "info": info, "results": records}


def _plot(records: list[dict], ks: list[int], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["catalog"] for r in records]
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.plot(sizes, [r["qaflora_all_ms"] for r in records], "o-", label="qa-FLoRA over all adapters")
    for k in ks:
        axis.plot(sizes, [r[f"logo_k{k}_ms"] for r in records], "s-", label=f"LoGo top-{k} + qa-FLoRA")
    axis.plot(sizes, [r["base_prefill_ms"] for r in records], ":", color="gray", label="LoGo pass alone")
    axis.set_xlabel("adapters in the catalog")
    axis.set_ylabel("time to weigh one query (ms)")
    axis.set_xscale("log", base=2)
    axis.set_xticks(sizes, [str(s) for s in sizes])
    axis.set_title(f"Weighing cost vs catalog size\n{subtitle}", fontsize=10)
    axis.legend()
    axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    payload = run(
        args.shape,
        args.sizes,
        args.k,
        args.prompt_tokens,
        args.repeats,
        args.device,
        Console(width=160),
        args.plot,
    )
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
