"""Serving under load: continuous (iteration-level) vs static batching, in the same run.

Workload: a random Llama of the chosen shape with k random adapters; every request is a
qa-FLoRA request over the k adapters (so it carries its own per-layer weights), with its own
prompt and a number of new tokens drawn from ``--tokens MIN MAX`` (EOS ignored, so both
schedulers generate exactly the same amount). Every engine serves the same request lists:
continuous, continuous with its planner thread (``plan_ahead=True``) and static.

Conditions, each run for every scheduler (alternating, ``--repeats`` times; medians reported):

* **unloaded**: one request at a time; its time to first token (TTFT) is the reference;
* **open loop**: Poisson arrivals at each ``--rates`` (requests/s), ``--requests`` requests,
  ``--limit`` seconds at most (unfinished requests are cancelled and counted);
* **streams**: ``--streams`` concurrent clients, each streaming ``--per-stream`` requests of
  ``--stream-tokens MIN MAX`` new tokens, the next as soon as the previous one ended (closed
  loop). Client i starts i unloaded TTFTs after the first (a ramp the server can admit;
  16 clients arriving at once would measure the ramp, not the load). TTFT is reported over
  all requests and over the steady state (each client's first request left out).

Reported: TTFT p50/p99 (engine-measured, submission to first token), generated tokens/s and
completed requests/s over the run's span; for streams also TTFT p99 / unloaded TTFT and the
continuous/static throughput ratio (the "Done when" of the serving issue).

Why the workload matters on a CPU: admitting a request (weighing k+1 rows, then the prefill)
costs as much as several decode steps of the whole batch, and batching newcomers does not
make that cheaper on a CPU (compute-bound). When answers are short, 16 clients keep the
worker busy admitting and any scheduler's TTFT becomes queueing for admission; the streams
condition therefore uses chat-length answers.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ..engine import FusionEngine
from ..errors import RequestTimeoutError
from ..threads import prompt_threads, usable_cores, worker_threads
from .common import (
    BENCH_FUSION,
    bench_parser,
    bench_world,
    count_parameters,
    environment,
    print_table,
    write_json,
)

SUBJECTS = [
    "the sum of twelve and seven",
    "the capital of France",
    "how to reverse a list in Python",
    "treating a mild fever",
    "sorting numbers by size",
    "the word cat in Spanish",
    "counting to ten in Russian",
    "the square of nine",
    "boiling water at altitude",
    "a haiku about autumn",
    "the speed of sound",
    "a recipe for pancakes",
]
SCHEDULERS = ("continuous", "continuous-prompt-all", "continuous-planner", "static")
"""``continuous``: the engine's default (admitting newcomers on the worker, between decode
steps, with the policy's admission threads: the worker's own count unless
``QAFLORA_PROMPT_THREADS`` says otherwise, qaflora.threads); ``continuous-prompt-all``: the same
with admissions on every usable core (``prompt_threads=usable_cores()``, llama.cpp's
``--threads-batch``: one decode thread, a wider admission);
``continuous-planner``: the scheduler with its planner thread (``plan_ahead=True``: newcomers
are weighed on a second thread while the worker decodes; one thread each); ``static``: the
batcher that runs a gathered batch to its end (its planning and prefill with the policy's
admission threads, as the default's)."""


@dataclass
class Request:
    prompt: str
    tokens: int


@dataclass
class Record:
    ttft: float
    tokens: int
    start: float
    end: float
    first_of_client: bool = False


def make_requests(n: int, tokens: tuple[int, int], seed: int) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        subject = SUBJECTS[rng.randrange(len(SUBJECTS))]
        detail = " ".join(
            rng.choice(["briefly", "clearly", "with an example", "step by step"]) for _ in range(2)
        )
        out.append(Request(f"Request {i}: explain {subject}, {detail}.", rng.randint(*tokens)))
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _serve(engine: FusionEngine, request: Request, adapters: list[str], deadline: float, stream: bool):
    start = time.perf_counter()
    timeout = max(0.001, deadline - start)
    options: dict[str, Any] = dict(max_new_tokens=request.tokens, ignore_eos=True, adapters=adapters)
    try:
        if stream:
            result = None
            async for event in engine.astream(request.prompt, timeout=timeout, **options):
                result = event.result or result
        else:
            result = await engine.agenerate(request.prompt, timeout=timeout, **options)
    except RequestTimeoutError:
        return None
    assert result is not None
    return Record(result.timings.first_token, result.usage.completion_tokens, start, time.perf_counter())


def summarize(records: list[Record | None], began: float) -> dict[str, Any]:
    done = [r for r in records if r is not None]
    if not done:
        return {"completed": 0, "submitted": len(records)}
    span = max(r.end for r in done) - began
    ttfts = [r.ttft for r in done]
    steady = [r.ttft for r in done if not r.first_of_client]
    extra = {}
    if len(steady) < len(ttfts):
        extra = {"steady_ttft_p50_s": percentile(steady, 50), "steady_ttft_p99_s": percentile(steady, 99)}
    return {
        **extra,
        "submitted": len(records),
        "completed": len(done),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "ttft_max_s": max(ttfts),
        "latency_p50_s": percentile([r.end - r.start for r in done], 50),
        "tokens_per_s": sum(r.tokens for r in done) / span,
        "requests_per_s": len(done) / span,
        "span_s": span,
    }


async def unloaded(engine: FusionEngine, requests: list[Request], adapters: list[str]) -> dict[str, Any]:
    records = []
    for request in requests:
        records.append(await _serve(engine, request, adapters, time.perf_counter() + 600, stream=False))
    done = [r for r in records if r is not None]
    return {
        "ttft_p50_s": percentile([r.ttft for r in done], 50),
        "latency_p50_s": percentile([r.end - r.start for r in done], 50),
    }


async def open_loop(
    engine: FusionEngine, requests: list[Request], adapters: list[str], rate: float, seed: int, limit: float
) -> dict[str, Any]:
    rng = random.Random(seed)
    offsets, at = [], 0.0
    for _ in requests:
        offsets.append(at)
        at += rng.expovariate(rate)
    began = time.perf_counter()
    deadline = began + limit
    tasks = []
    for request, offset in zip(requests, offsets, strict=True):
        await asyncio.sleep(max(0.0, began + offset - time.perf_counter()))
        if time.perf_counter() >= deadline:
            break
        tasks.append(asyncio.create_task(_serve(engine, request, adapters, deadline, stream=False)))
    records = list(await asyncio.gather(*tasks))
    records += [None] * (len(requests) - len(tasks))
    return summarize(records, began)


async def closed_streams(
    engine: FusionEngine,
    requests: list[Request],
    adapters: list[str],
    clients: int,
    stagger: float,
    limit: float,
) -> dict[str, Any]:
    began = time.perf_counter()
    deadline = began + limit
    per_client = [requests[i::clients] for i in range(clients)]

    async def client(index: int) -> list[Record | None]:
        await asyncio.sleep(index * stagger)
        out = []
        for number, request in enumerate(per_client[index]):
            if time.perf_counter() >= deadline:
                out.append(None)
                continue
            record = await _serve(engine, request, adapters, deadline, stream=True)
            if record is not None:
                record.first_of_client = number == 0
            out.append(record)
        return out

    results = await asyncio.gather(*(client(i) for i in range(clients)))
    return summarize([r for chunk in results for r in chunk], began)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
    return {k: statistics.median(run[k] for run in runs if k in run) for k in keys}


def run(args: Any, console: Console) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    world = bench_world(args.shape, args.k)
    adapters = list(world.adapters)[: args.k]
    engines = {
        mode: FusionEngine.from_pretrained(
            world.base,
            world.catalog(args.k),
            config=BENCH_FUSION,
            device=args.device,
            progress=False,
            scheduling="static" if mode == "static" else "continuous",
            max_batch_size=args.max_rows,
            plan_ahead=mode == "continuous-planner",
            prompt_threads=usable_cores() if mode == "continuous-prompt-all" else None,
        )
        for mode in SCHEDULERS
    }
    tokens = (args.tokens[0], args.tokens[1])
    warm = make_requests(2, tokens, seed=999)
    for engine in engines.values():
        asyncio.run(unloaded(engine, warm, adapters))

    results: dict[str, dict[str, list[dict[str, Any]]]] = {m: {} for m in SCHEDULERS}

    def record(mode: str, condition: str, value: dict[str, Any]) -> None:
        results[mode].setdefault(condition, []).append(value)

    for repeat in range(args.repeats):
        seed = 100 * repeat
        for rate in args.rates:
            requests = make_requests(args.requests, tokens, seed + 2)
            for mode in SCHEDULERS:
                console.print(f"repeat {repeat + 1}/{args.repeats}: {mode}, Poisson {rate} req/s")
                record(
                    mode,
                    f"poisson_{rate}",
                    asyncio.run(open_loop(engines[mode], requests, adapters, rate, seed + 3, args.limit)),
                )
        # the unloaded reference right before the streams: the CPU is shared, its speed drifts
        for mode in SCHEDULERS:
            engine = engines[mode]
            engine.clear_prefix_cache()  # distinct prompts: no reuse to be had, none to carry over
            reference = make_requests(args.unloaded, tokens, seed + 1)
            record(mode, "unloaded", asyncio.run(unloaded(engine, reference, adapters)))
        stagger = max(results[m]["unloaded"][-1]["ttft_p50_s"] for m in SCHEDULERS)
        requests = make_requests(args.streams * args.per_stream, tuple(args.stream_tokens), seed + 4)
        for mode in SCHEDULERS:
            console.print(f"repeat {repeat + 1}/{args.repeats}: {mode}, {args.streams} streams")
            record(
                mode,
                "streams",
                asyncio.run(
                    closed_streams(engines[mode], requests, adapters, args.streams, stagger, args.limit)
                ),
            )

    info = {
        **world.describe(),
        "params": count_parameters(engines["static"].model),
        "k": args.k,
        "new_tokens": list(tokens),
        "requests_per_rate": args.requests,
        "rates": args.rates,
        "streams": args.streams,
        "stream_new_tokens": list(args.stream_tokens),
        "requests_per_stream": args.per_stream,
        "max_rows": args.max_rows,
        "limit_s": args.limit,
        "repeats": args.repeats,
        "device": str(engines["static"].device),
        "admission_threads_default": prompt_threads(worker_threads() or args.threads),
        "admission_threads_prompt_all": usable_cores(),
        "load_average": _load(),
        **environment(),
    }
    for engine in engines.values():
        engine.close()

    medians = {m: {c: median_of(runs) for c, runs in conds.items()} for m, conds in results.items()}
    rows = []
    for condition in medians["static"]:
        for mode in SCHEDULERS:
            value = medians[mode][condition]
            rows.append(
                [
                    condition,
                    mode,
                    value.get("completed", "-"),
                    value.get("ttft_p50_s", float("nan")),
                    value.get("ttft_p99_s", float("nan")),
                    value.get("tokens_per_s", float("nan")),
                    value.get("requests_per_s", float("nan")),
                ]
            )
    print_table(
        console,
        f"Serving, continuous vs static ({info['params'] / 1e6:.1f} M params, k={args.k}, "
        f"{tokens[0]}-{tokens[1]} new tokens, {info['device']}, {args.threads} thread(s), "
        f"default admissions on {info['admission_threads_default']}; "
        f"medians of {args.repeats}; load {info['load_average']})",
        ["condition", "scheduler", "completed", "TTFT p50 s", "TTFT p99 s", "tokens/s", "requests/s"],
        rows,
    )
    checks: dict[str, Any] = {}
    for mode in SCHEDULERS:
        unloaded_ttft = medians[mode]["unloaded"]["ttft_p50_s"]
        streams = medians[mode]["streams"]
        checks[f"{mode}_streams_ttft_p99_over_unloaded"] = streams["ttft_p99_s"] / unloaded_ttft
        checks[f"{mode}_streams_steady_ttft_p99_over_unloaded"] = streams["steady_ttft_p99_s"] / unloaded_ttft
    static_rate = medians["static"]["streams"]["tokens_per_s"]
    checks["streams_throughput_continuous_prompt_all_over_static"] = (
        medians["continuous-prompt-all"]["streams"]["tokens_per_s"] / static_rate
    )
    checks["streams_throughput_continuous_planner_over_static"] = (
        medians["continuous-planner"]["streams"]["tokens_per_s"] / static_rate
    )
    checks["streams_throughput_continuous_over_static"] = (
        medians["continuous"]["streams"]["tokens_per_s"] / medians["static"]["streams"]["tokens_per_s"]
    )
    for mode in SCHEDULERS:
        ratios = [
            results[mode]["streams"][i]["ttft_p99_s"] / results[mode]["unloaded"][i]["ttft_p50_s"]
            for i in range(args.repeats)
        ]
        checks[f"{mode}_streams_ttft_p99_over_unloaded_per_repeat"] = ratios
    per_repeat = [
        results["continuous"]["streams"][i]["tokens_per_s"] / results["static"]["streams"][i]["tokens_per_s"]
        for i in range(args.repeats)
    ]
    checks["streams_throughput_ratio_per_repeat"] = per_repeat
    print_table(
        console,
        f"{args.streams} concurrent streams: the issue's conditions",
        ["check", "value"],
        [[k, v if not isinstance(v, list) else ", ".join(f"{x:.2f}" for x in v)] for k, v in checks.items()],
    )
    return {"suite": "serving", "info": info, "medians": medians, "checks": checks, "runs": results}


def _load() -> str:
    try:
        with open("/proc/loadavg") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=3)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tokens", type=int, nargs=2, default=[16, 48], metavar=("MIN", "MAX"))
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    parser.add_argument("--requests", type=int, default=20, help="Requests per open-loop run.")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--stream-tokens", type=int, nargs=2, default=[48, 96], metavar=("MIN", "MAX"))
    parser.add_argument("--per-stream", type=int, default=3, help="Requests each stream client sends.")
    parser.add_argument("--unloaded", type=int, default=6, help="Requests of the unloaded reference.")
    parser.add_argument("--max-rows", type=int, default=16)
    parser.add_argument("--limit", type=float, default=300.0, help="Seconds at most per run.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    payload = run(args, Console(width=160))
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
