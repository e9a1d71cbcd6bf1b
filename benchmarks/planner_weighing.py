"""Where the planner thread's time goes: per-request stage timings under 16 streams.

The serving suite (`qaflora bench --suite serving`) reports TTFT and tokens/s per scheduler;
this script prints the stages behind them (queued, weighing, prefill) for the continuous
scheduler with and without its planner thread (``plan_ahead``), on the serving suite's model
(cpu-small, 4 random adapters, qa-FLoRA shares). 16 clients start 0.35 s apart and send 3
requests of 48-96 new tokens each, the next when the previous one ended.

    OMP_NUM_THREADS=1 python benchmarks/planner_weighing.py
"""

from __future__ import annotations

import asyncio
import statistics
import time

import torch
from qaflora.bench.common import BENCH_FUSION, bench_world
from qaflora.bench.serving import make_requests
from qaflora.engine import FusionEngine
from qaflora.results import Timings


async def streams(engine: FusionEngine, adapters: list[str]) -> tuple[list[Timings], float]:
    requests = make_requests(48, (48, 96), seed=4)

    async def client(index: int) -> list[Timings]:
        await asyncio.sleep(index * 0.35)
        timings = []
        for request in requests[index * 3 : (index + 1) * 3]:
            result = await engine.agenerate(
                request.prompt, max_new_tokens=request.tokens, ignore_eos=True, adapters=adapters
            )
            timings.append(result.timings)
        return timings

    for request in make_requests(3, (8, 8), seed=9):  # warm-up
        await engine.agenerate(request.prompt, max_new_tokens=8, ignore_eos=True, adapters=adapters)
    began = time.perf_counter()
    per_client = await asyncio.gather(*(client(i) for i in range(16)))
    return [t for timings in per_client for t in timings], time.perf_counter() - began


def main() -> None:
    torch.set_num_threads(1)
    world = bench_world("cpu-small", 4)
    adapters = list(world.adapters)[:4]
    header = ["scheduler", "median weighing s", "median prefill s", "median queued s", "TTFT p50 / max s"]
    print("| " + " | ".join([*header, "span s"]) + " |")
    print("|---|---|---|---|---|---|")
    for plan_ahead in (False, True):
        with FusionEngine.from_pretrained(
            world.base, world.catalog(4), config=BENCH_FUSION, progress=False, plan_ahead=plan_ahead
        ) as engine:
            timings, span = asyncio.run(streams(engine, adapters))
        ttft = sorted(t.first_token for t in timings)
        name = "continuous + planner" if plan_ahead else "continuous"
        print(
            f"| {name} | {statistics.median(t.weigh for t in timings):.3f} "
            f"| {statistics.median(t.prefill for t in timings):.3f} "
            f"| {statistics.median(t.queued for t in timings):.3f} "
            f"| {statistics.median(ttft):.3f} / {ttft[-1]:.3f} | {span:.1f} |"
        )


if __name__ == "__main__":
    main()
