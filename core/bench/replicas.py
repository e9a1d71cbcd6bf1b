"""Scaling out: the OpenAI app on Ray Serve with 1 replica vs 2, and a replica killed under load.

Same Ray runtime, same model files, same request list, in one run:

* throughput: ``--requests`` chat completions (default 1000), at most ``--concurrency`` in
  flight, against 1 replica and then 2 (each replica one engine with ``--threads`` intra-op
  threads and that many Ray CPUs). Requests per second and the 2/1 ratio;
* the load: every request has its own prompt length and its own ``max_tokens`` (EOS ignored),
  one of four fusion options (the app's, one adapter, static, LoGo top-2); odd requests
  stream (usage in the last chunk) and every twentieth request hangs up after its first chunk;
* accounting: an answer delivered to the wrong request shows in its ``usage``. ``lost`` = a
  request left hanging (client timeout); ``connection closed`` = the connection ended without an
  HTTP answer (the client sees an error); ``error status`` = an error status, an SSE error event
  or a stream cut before ``[DONE]``; ``crossed`` = usage
  not the request's own; ``differs`` = text not the 1-replica run's text for the same request
  (greedy, so it should not); ``idle after`` = every replica back to nothing running or queued
  (the hung-up streams freed their rows);
* replica killed: the same list against the same 2 replicas, one replica actor killed
  (``ray.kill``) once a third of the requests have finished. Requests in flight on it end with
  an error status (counted); nothing may be lost or crossed, and Ray Serve starts a new one.

On a 2-core machine two one-thread replicas use both cores where one uses one: the ratio says
how much of that the HTTP proxy, Ray's router and the client leave. The bench model is the
random ``--shape`` Llama with ``--k`` adapters (qa-FLoRA shares over all of them).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from .common import BENCH_FUSION, bench_parser, bench_world, environment, print_table, write_json

APP = "qaflora-bench"


FUSIONS: list[dict[str, Any] | None] = [
    None,  # the app's fusion (qa-FLoRA shares over every adapter)
    {"mode": "single", "adapters": ["adapter00"]},
    {"mode": "static"},
    {"mode": "qaflora", "top_k": 2},
]


def request_body(i: int, min_tokens: int) -> dict[str, Any]:
    """Request ``i``: a prompt of its own length, a ``max_tokens`` of its own, one of several fusion
    options; odd requests stream (with usage), every tenth stream hangs up after its first chunk."""
    words = " ".join(f"w{i}x{j}" for j in range(1 + i % 7))
    body: dict[str, Any] = {
        "model": "base",
        "messages": [{"role": "user", "content": f"request {i}: {words}"}],
        "max_tokens": min_tokens + i % 5,
        "ignore_eos": True,
    }
    fusion = FUSIONS[(i // 2) % len(FUSIONS)]
    if fusion is not None:
        body["fusion"] = fusion
    if i % 2 == 1:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def disconnects(i: int) -> bool:
    return i % 20 == 19  # a streaming request (odd) that hangs up after its first chunk


async def _stream(http: Any, body: dict[str, Any], hang_up: bool) -> dict[str, Any]:
    text: list[str] = []
    usage = None
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return {"status": response.status_code, "payload": None}
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                return {"status": 500, "payload": None}
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                text.append(choice["delta"].get("content") or "")
            if hang_up and text:
                return {"status": "hung up", "payload": None}
        if not done:
            return {"status": "no [DONE]", "payload": None}
    message = {"content": "".join(text)}
    return {"status": 200, "payload": {"usage": usage, "choices": [{"message": message}]}}


async def drive(
    url: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    timeout_s: float,
    on_finished: Any = None,
) -> tuple[list[dict[str, Any] | None], float]:
    """Send every body (at most ``concurrency`` at once); each one's answer (None: lost) and the wall time."""
    import httpx

    results: list[dict[str, Any] | None] = [None] * len(bodies)
    gate = asyncio.Semaphore(concurrency)
    finished = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:

        async def one(i: int) -> None:
            nonlocal finished
            async with gate:
                try:
                    if bodies[i].get("stream"):
                        results[i] = await _stream(http, bodies[i], disconnects(i))
                    else:
                        response = await http.post("/v1/chat/completions", json=bodies[i])
                        payload = response.json() if response.status_code == 200 else None
                        results[i] = {"status": response.status_code, "payload": payload}
                except (httpx.TransportError, ValueError) as exc:
                    results[i] = {"status": None, "payload": None, "reason": type(exc).__name__}
            finished += 1
            if on_finished is not None:
                on_finished(finished)

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(bodies)))), timeout_s * 4)
        return results, time.perf_counter() - start


def account(
    results: list[dict[str, Any] | None],
    bodies: list[dict[str, Any]],
    prompt_tokens: list[int],
    reference: list[str | None] | None,
) -> dict[str, Any]:
    """Count ok / hung up (on purpose) / error statuses / lost / crossed / differing answers."""
    counts: dict[str, Any] = {
        "ok": 0,
        "hung_up": 0,
        "errors": 0,
        "dropped": 0,
        "lost": 0,
        "crossed": 0,
        "differs": 0,
    }
    reasons: dict[str, int] = {}
    for i, result in enumerate(results):
        if result is None or result["status"] is None:  # no HTTP answer
            reason = "never finished" if result is None else result["reason"]
            reasons[reason] = reasons.get(reason, 0) + 1
            # a timeout is a request left hanging: lost; a closed connection is an error the client sees
            counts["lost" if result is None or "Timeout" in reason else "dropped"] += 1
            continue
        if result["status"] == "hung up":
            counts["hung_up"] += 1
            continue
        if result["status"] != 200:
            counts["errors"] += 1
            continue
        usage = result["payload"]["usage"]
        if (
            usage is None
            or usage["completion_tokens"] != bodies[i]["max_tokens"]
            or usage["prompt_tokens"] != prompt_tokens[i]
        ):
            counts["crossed"] += 1
            continue
        counts["ok"] += 1
        if reference is not None and reference[i] is not None:
            counts["differs"] += int(result["payload"]["choices"][0]["message"]["content"] != reference[i])
    counts["no_answer_reasons"] = reasons
    return counts


def idle_after(url: str, within_s: float = 60.0) -> bool:
    """Every replica back to no running and no queued request (asked through the proxy, repeatedly)."""
    import httpx

    deadline = time.monotonic() + within_s
    quiet = 0
    while time.monotonic() < deadline:
        health = httpx.get(f"{url}/health", timeout=10).json()
        quiet = quiet + 1 if health.get("running") == 0 and health.get("queued") == 0 else 0
        if quiet >= 10:  # ten answers in a row, from whichever replicas the proxy chose
            return True
        time.sleep(0.2)
    return False


def texts_of(results: list[dict[str, Any] | None]) -> list[str | None]:
    return [
        r["payload"]["choices"][0]["message"]["content"] if r is not None and r["status"] == 200 else None
        for r in results
    ]


def kill_one_replica(app_name: str) -> str:
    """``ray.kill`` one replica actor of the app (Serve names them SERVE_REPLICA::<app>#...)."""
    import ray

    actors = [
        (a["name"], a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{app_name}#")
    ]
    name, namespace = sorted(actors)[0]
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
    return name


def run(args: Any, console: Console) -> dict[str, Any]:
    from qaflora_integrations.serve.ray_runtime import init_ray, prepare_local_runtime_env

    prepare_local_runtime_env()  # before Ray is imported: a runtime on loopback only
    from ray import serve

    from qaflora_integrations.serve.ray_app import build_app

    from ..engine import FusionEngine

    world = bench_world(args.shape, args.k)
    catalog_path = Path(world.base).parent / f"catalog-{args.k}.yaml"
    world.catalog(args.k).to_file(catalog_path)
    bodies = [request_body(i, args.tokens) for i in range(args.requests)]
    engine = FusionEngine.from_pretrained(
        world.base, world.catalog(args.k), config=BENCH_FUSION, progress=False
    )
    try:
        prompt_tokens = [len(engine.encode(body["messages"]).ids) for body in bodies]
    finally:
        engine.close()

    init_ray(num_cpus=max(2, 2 * args.threads))
    url = f"http://127.0.0.1:{args.port}"
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    runs: dict[str, dict[str, Any]] = {}
    reference: list[str | None] | None = None
    try:
        deployed = 0
        for replicas, kill in [(1, False), (2, False), (2, True)]:
            count = f"{replicas} replica{'s' if replicas > 1 else ''}"
            label = count + (", one killed" if kill else "")
            if replicas != deployed:
                # A fresh app per replica count (deleting first: an in-place update restarted both
                # replicas and took twice as long); the killed run reuses the 2 warm replicas.
                if deployed:
                    serve.delete(APP)
                console.print(f"deploying: {count}")
                app = build_app(
                    world.base,
                    catalog_path,
                    fusion=BENCH_FUSION.model_dump(exclude_defaults=True),
                    threads=args.threads,
                    num_replicas=replicas,
                    max_batch_size=args.batch,
                )
                serve.run(app, name=APP, route_prefix="/")
                deployed = replicas
            console.print(f"running: {label}")
            asyncio.run(drive(url, bodies[: 2 * args.concurrency], args.concurrency, args.timeout))  # warm up
            killed: list[str] = []

            def maybe_kill(finished: int, kill: bool = kill, killed: list[str] = killed) -> None:
                if kill and not killed and finished >= len(bodies) // 3:
                    killed.append(kill_one_replica(APP))

            results, seconds = asyncio.run(drive(url, bodies, args.concurrency, args.timeout, maybe_kill))
            counts = account(results, bodies, prompt_tokens, reference)
            counts["idle_after"] = idle_after(url)
            if reference is None:
                reference = texts_of(results)
            runs[label] = {
                "replicas": replicas,
                "killed": killed,
                "seconds": round(seconds, 2),
                "requests_per_s": round(len(bodies) / seconds, 2),
                **counts,
            }
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()

    one = runs["1 replica"]["requests_per_s"]
    rows = [
        [
            label,
            r["requests_per_s"],
            round(r["requests_per_s"] / one, 2),
            r["ok"],
            r["errors"],
            r["dropped"],
            r["lost"],
            r["crossed"],
            r["differs"],
        ]
        for label, r in runs.items()
    ]
    print_table(
        console,
        f"Ray Serve replicas: {args.requests} requests, {args.concurrency} in flight, "
        f"{args.tokens}-{args.tokens + 4} new tokens each, {args.threads} thread(s) per replica",
        [
            "run",
            "requests/s",
            "vs 1",
            "ok",
            "hung up",
            "error status",
            "connection closed",
            "lost (hung)",
            "crossed",
            "text differs",
            "idle after",
        ],
        rows,
    )
    return {
        "suite": "replicas",
        "environment": environment(),
        "model": world.describe(),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "threads_per_replica": args.threads,
        "runs": runs,
        "speedup_2_over_1": round(runs["2 replicas"]["requests_per_s"] / one, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repeats=None)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=8, help="max_tokens of request i is tokens + i % 5")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (and Ray CPUs) per replica")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size of each replica's engine")
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    console = Console(width=160)
    payload = run(args, console)
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
