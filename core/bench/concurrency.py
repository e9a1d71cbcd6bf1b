"""Throughput of N concurrent requests, each with its own query and fusion weights, vs sequential.

Each request is a qa-FLoRA request over the same k adapters with a different prompt, so
every request has different per-layer weights. Sequential: ``engine.generate`` one after
another. Concurrent: N threads call ``engine.generate`` at once (what LangChain ``batch``
does); the engine's worker gathers them into shared batches.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console

from ..engine import FusionEngine
from .common import (
    BENCH_FUSION,
    bench_parser,
    bench_world,
    count_parameters,
    environment,
    print_table,
    write_json,
)

TOPICS = [
    "sum of twelve and seven",
    "capital of France",
    "reverse a list",
    "fever treatment",
    "sort numbers",
    "translate cat",
    "count to ten",
    "square of nine",
]


def prompts(n: int) -> list[str]:
    return [f"Question {i}: tell me about the {TOPICS[i % len(TOPICS)]} please." for i in range(n)]


def sequential(
    engine: FusionEngine, queries: list[str], tokens: int, adapters: list[str]
) -> tuple[float, int]:
    start = time.perf_counter()
    produced = 0
    for query in queries:
        produced += engine.generate(
            query, max_new_tokens=tokens, ignore_eos=True, adapters=adapters
        ).usage.completion_tokens
    return time.perf_counter() - start, produced


def concurrent(
    engine: FusionEngine, queries: list[str], tokens: int, adapters: list[str]
) -> tuple[float, int]:
    results: list[int] = [0] * len(queries)
    barrier = threading.Barrier(len(queries) + 1)

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = engine.generate(
            queries[i], max_new_tokens=tokens, ignore_eos=True, adapters=adapters
        ).usage.completion_tokens

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(queries))]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, sum(results)


def run(shape: str, ns: list[int], k: int, tokens: int, repeats: int, device: str, console: Console) -> dict:
    world = bench_world(shape, k)
    adapters = list(world.adapters)[:k]
    engine = FusionEngine.from_pretrained(
        world.base,
        world.catalog(),
        config=BENCH_FUSION,
        device=device,
        progress=False,
        max_batch_size=max(ns),
    )
    sequential(engine, prompts(2), tokens, adapters)  # warm-up
    records = []
    for n in ns:
        queries = prompts(n)
        seq = sorted(sequential(engine, queries, tokens, adapters) for _ in range(repeats))[repeats // 2]
        con = sorted(concurrent(engine, queries, tokens, adapters) for _ in range(repeats))[repeats // 2]
        records.append(
            {
                "n": n,
                "sequential_s": seq[0],
                "concurrent_s": con[0],
                "sequential_tok_s": seq[1] / seq[0],
                "concurrent_tok_s": con[1] / con[0],
                "throughput_ratio": (con[1] / con[0]) / (seq[1] / seq[0]),
            }
        )
    info = {
        **world.describe(),
        "params": count_parameters(engine.model),
        "k": k,
        "new_tokens": tokens,
        "device": str(engine.device),
        "repeats": repeats,
        **environment(),
    }
    engine.close()
    print_table(
        console,
        f"N concurrent qa-FLoRA requests ({info['params'] / 1e6:.1f} M params, k={k}, "
        f"{tokens} new tokens each, {info['device']}; medians of {repeats})",
        ["N", "sequential s", "concurrent s", "sequential tok/s", "concurrent tok/s", "ratio"],
        [
            [
                r["n"],
                r["sequential_s"],
                r["concurrent_s"],
                r["sequential_tok_s"],
                r["concurrent_tok_s"],
                r["throughput_ratio"],
            ]
            for r in records
        ],
    )
    return {"suite": "concurrency", "info": info, "results": records}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=3)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args(argv)
    payload = run(args.shape, args.n, args.k, args.tokens, args.repeats, args.device, Console(width=160))
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
