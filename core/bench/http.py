"""What the HTTP server costs: the same requests through ``qaflora serve``'s app vs ``engine.agenerate``.

One engine object serves both paths in the same run: the direct path awaits
``engine.agenerate``/``engine.astream`` in this process's event loop, the HTTP path
posts the same request to the OpenAI-compatible app, served by uvicorn from a
background thread on 127.0.0.1. Same prompt and options (greedy, a fixed number of new
tokens, EOS ignored). Calls are interleaved, so drift hits every variant alike.

* latency: one request at a time, median wall time per call, for 1 new token (what a
  request costs beyond the model) and for 32: HTTP JSON and the official ``openai`` async
  client against ``agenerate``, the SSE stream (to its last byte) against ``astream``;
* time to first token: direct ``astream``'s first piece vs the first content chunk over SSE;
* concurrency: N requests at once, each with its own fusion (single adapters in turn),
  wall time until the last answer, HTTP vs direct, and the engine batch each request was
  generated in (mean over requests): requests that trickle in over HTTP can miss the batch
  the first one started.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

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

PROMPT = "Solve the sum of twelve and seven, then answer in Russian please."
DIRECT = "engine.agenerate (direct)"
DIRECT_STREAM = "engine.astream (direct)"


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def _measure(
    engine: FusionEngine,
    base_url: str,
    token_counts: list[int],
    repeats: int,
    n_concurrent: int,
    registry: Any,
) -> dict:
    import httpx
    import openai

    messages = [{"role": "user", "content": PROMPT}]
    http = httpx.AsyncClient(base_url=base_url, timeout=600)
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)

    def calls_for(tokens: int) -> dict[str, Callable[[], Awaitable[Any]]]:
        body = {"model": engine.model_name, "messages": messages, "max_tokens": tokens, "ignore_eos": True}
        options = {"max_new_tokens": tokens, "ignore_eos": True}

        async def direct() -> None:
            result = await engine.agenerate(messages, **options)
            assert result.usage.completion_tokens == tokens

        async def direct_stream() -> None:
            async for event in engine.astream(messages, **options):
                if event.result is not None:
                    assert event.result.usage.completion_tokens == tokens

        async def http_json() -> None:
            response = await http.post("/v1/chat/completions", json=body)
            assert response.json()["usage"]["completion_tokens"] == tokens

        async def http_stream() -> None:
            async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                async for _ in response.aiter_bytes():
                    pass

        async def openai_client() -> None:
            response = await client.chat.completions.create(
                model=engine.model_name, messages=messages, max_tokens=tokens, extra_body={"ignore_eos": True}
            )
            assert response.usage.completion_tokens == tokens

        return {
            DIRECT: direct,
            "HTTP POST, JSON": http_json,
            "openai.AsyncOpenAI (JSON)": openai_client,
            DIRECT_STREAM: direct_stream,
            "HTTP POST, SSE stream": http_stream,
        }

    async def direct_first_token(tokens: int) -> float:
        start = time.perf_counter()
        events = engine.astream(messages, max_new_tokens=tokens, ignore_eos=True)
        try:
            async for event in events:
                if event.text:
                    return time.perf_counter() - start
        finally:
            await events.aclose()
        raise RuntimeError("no text streamed")

    async def http_first_token(tokens: int) -> float:
        body = {"model": engine.model_name, "messages": messages, "max_tokens": tokens, "ignore_eos": True}
        start = time.perf_counter()
        async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    return time.perf_counter() - start
        raise RuntimeError("no text streamed")

    latency: dict[int, dict[str, list[float]]] = {}
    for tokens in token_counts:
        calls = calls_for(tokens)
        for _ in range(2):  # warm-up: first forwards, connection setup, imports
            for call in calls.values():
                await call()
        latency[tokens] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                latency[tokens][name].append(await _timed(call))

    first_tokens = max(token_counts)
    first_token: dict[str, list[float]] = {"direct astream": [], "HTTP SSE": []}
    for _ in range(repeats):
        first_token["direct astream"].append(await direct_first_token(first_tokens))
        first_token["HTTP SSE"].append(await http_first_token(first_tokens))

    adapters = engine.adapter_names
    tokens = max(token_counts)
    body = {"model": engine.model_name, "messages": messages, "max_tokens": tokens, "ignore_eos": True}

    def fusion_of(i: int) -> dict[str, Any]:
        return {"mode": "single", "adapters": [adapters[i % len(adapters)]]}

    batch_sizes: dict[str, list[float]] = {"direct": [], "HTTP": []}

    def served_batches() -> tuple[float, float]:
        return (
            registry.get_sample_value("qaflora_batch_size_sum") or 0.0,
            registry.get_sample_value("qaflora_batch_size_count") or 0.0,
        )

    async def direct_many() -> None:
        results = await asyncio.gather(
            *(
                engine.agenerate(messages, max_new_tokens=tokens, ignore_eos=True, **fusion_of(i))
                for i in range(n_concurrent)
            )
        )
        batch_sizes["direct"].append(statistics.mean(r.timings.batch_size for r in results))

    async def http_many() -> None:
        size_before, count_before = served_batches()
        await asyncio.gather(
            *(
                http.post("/v1/chat/completions", json={**body, "fusion": fusion_of(i)})
                for i in range(n_concurrent)
            )
        )
        size_after, count_after = served_batches()
        batch_sizes["HTTP"].append((size_after - size_before) / (count_after - count_before))

    concurrent: dict[str, list[float]] = {"direct": [], "HTTP": []}
    await direct_many()
    await http_many()
    for sizes in batch_sizes.values():
        sizes.clear()  # warm-up runs do not count
    for _ in range(repeats):
        concurrent["direct"].append(await _timed(direct_many))
        concurrent["HTTP"].append(await _timed(http_many))
    await http.aclose()
    await client.close()
    return {
        "latency": latency,
        "first_token": first_token,
        "concurrent": concurrent,
        "batch_sizes": batch_sizes,
    }


def run(
    shape: str,
    k: int,
    token_counts: list[int],
    repeats: int,
    n_concurrent: int,
    device: str,
    console: Console,
) -> dict:
    from qaflora_integrations.serve import BackgroundServer, create_app

    world = bench_world(shape, k)
    engine = FusionEngine.from_pretrained(
        world.base,
        world.catalog(),
        config=BENCH_FUSION,
        device=device,
        progress=False,
        max_batch_size=max(16, n_concurrent),
    )
    app = create_app(engine)
    with BackgroundServer(app) as server:
        raw = asyncio.run(
            _measure(engine, server.url, token_counts, repeats, n_concurrent, app.state.metrics.registry)
        )
    tokens = max(token_counts)
    info = {
        **world.describe(),
        "params": count_parameters(engine.model),
        "k": k,
        "new_tokens": token_counts,
        "concurrent_requests": n_concurrent,
        "device": device,
        "repeats": repeats,
        **environment(),
    }
    engine.close()

    latency = []
    for count, samples in raw["latency"].items():
        medians = {name: statistics.median(values) for name, values in samples.items()}
        for name, median in medians.items():
            baseline = DIRECT_STREAM if ("SSE" in name or name == DIRECT_STREAM) else DIRECT
            latency.append(
                {
                    "new_tokens": count,
                    "call": name,
                    "median_ms": 1e3 * median,
                    "baseline": baseline,
                    "ratio": median / medians[baseline],
                    "overhead_ms": 1e3 * (median - medians[baseline]),
                }
            )
    ttft_direct = statistics.median(raw["first_token"]["direct astream"])
    first_token = [
        {"path": name, "median_ms": 1e3 * statistics.median(v), "ratio": statistics.median(v) / ttft_direct}
        for name, v in raw["first_token"].items()
    ]
    many_direct = statistics.median(raw["concurrent"]["direct"])
    concurrent = [
        {
            "path": name,
            "median_s": statistics.median(v),
            "tok_s": n_concurrent * tokens / statistics.median(v),
            "ratio": statistics.median(v) / many_direct,
            "mean_batch_size": statistics.mean(raw["batch_sizes"][name]),
        }
        for name, v in raw["concurrent"].items()
    ]
    title = f"{info['params'] / 1e6:.1f} M params, k={k}, {device}; medians of {repeats}"
    print_table(
        console,
        f"HTTP server vs direct engine call, one request at a time ({title}, interleaved)",
        ["new tokens", "call", "median ms", "vs", "ratio", "overhead ms"],
        [
            [r["new_tokens"], r["call"], r["median_ms"], r["baseline"], r["ratio"], r["overhead_ms"]]
            for r in latency
        ],
    )
    print_table(
        console,
        f"time to first token ({tokens} new tokens asked; {title})",
        ["path", "median ms", "ratio to direct"],
        [[r["path"], r["median_ms"], r["ratio"]] for r in first_token],
    )
    print_table(
        console,
        f"{n_concurrent} concurrent requests, single adapters in turn, {tokens} new tokens each ({title})",
        ["path", "wall s", "tok/s", "ratio to direct", "mean batch size per request"],
        [[r["path"], r["median_s"], r["tok_s"], r["ratio"], r["mean_batch_size"]] for r in concurrent],
    )
    return {
        "suite": "http",
        "info": info,
        "results": {"latency": latency, "first_token": first_token, "concurrent": concurrent},
        "samples_s": raw,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=15)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--concurrent", type=int, default=8)
    args = parser.parse_args(argv)
    payload = run(
        args.shape, args.k, args.tokens, args.repeats, args.concurrent, args.device, Console(width=160)
    )
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
