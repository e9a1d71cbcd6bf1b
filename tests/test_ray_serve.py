"""The server as a Ray Serve application: 2 CPU replicas on a real local Ray runtime, over real HTTP.

One Ray runtime and one deployment serve the whole module (Ray's start and the replicas'
model loads take tens of seconds on 2 shared cores). Each replica loads the tiny model
from the paths the test saved, in its own process; every answer is checked against an
engine loaded here from the same files (greedy decoding is deterministic). The replica-kill
test runs last: it takes a replica away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from qaflora.testing import free_loopback_port

from qaflora_integrations.serve.ray_runtime import init_ray, prepare_local_runtime_env

# Ray reads these when it is imported: a runtime on loopback, quiet (before ray_app imports ray)
prepare_local_runtime_env()

from qaflora_integrations.serve.ray_app import REPLICA_HEADER, AppArgs, EngineSpec, build_app  # noqa: E402

# One Ray runtime at a time: under pytest-xdist these modules share one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")

APP = "qaflora-test"
REQUEST_TIMEOUT_S = 120.0  # per request: generous on 2 busy cores, but bounded


def ray_processes() -> list[str]:
    """Ray's own daemons still alive under this test process."""
    import psutil

    names = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                names.append(child.name())
    return [n for n in names if "raylet" in n or "gcs_server" in n or n.startswith("ray::")]


@pytest.fixture(scope="module")
def ray_paths(long_zoo, tmp_path_factory) -> tuple[Path, Path]:
    catalog = tmp_path_factory.mktemp("ray-catalog") / "catalog.yaml"
    long_zoo.catalog().to_file(catalog)
    return long_zoo.base, catalog


@pytest.fixture(scope="module")
def ray_url(ray_paths):
    """A local Ray runtime (2 CPUs, loopback) with the app deployed as 2 replicas; all gone afterwards."""
    context = init_ray(num_cpus=2)
    import ray
    from ray import serve

    assert context.address_info["node_ip_address"] == "127.0.0.1"
    port = free_loopback_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base, catalog = ray_paths
        serve.run(
            build_app(base, catalog, num_replicas=2, fusion={"policy": "shares"}), name=APP, route_prefix="/"
        )
        yield f"http://127.0.0.1:{port}"
        serve.delete(APP)
    finally:
        ray.shutdown()
    deadline = time.monotonic() + 30
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(), f"Ray processes left after shutdown: {ray_processes()}"


@pytest.fixture
async def client(ray_url) -> AsyncIterator[openai.AsyncOpenAI]:
    # no retries: a failed request must show up as failed, not be hidden by the client; closed in
    # the test's own event loop (left to the garbage collector, its pooled connections warned as
    # unclosed sockets during a later test)
    async with openai.AsyncOpenAI(
        base_url=f"{ray_url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
    ) as client:
        yield client


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Request number {i}: add {i} and {i + 3}."}]


# ---------------------------------------------------------------------- our glue, no runtime needed
def test_build_app_defaults_one_cpu_per_replica_and_a_gpu_for_cuda(ray_paths):
    base, catalog = ray_paths
    cpu = build_app(base, catalog, num_replicas=3)._bound_deployment
    assert cpu.ray_actor_options == {"num_cpus": 1}
    assert cpu.num_replicas == 3 and cpu.max_ongoing_requests == 32
    gpu = build_app(base, catalog, device="cuda", threads=2, max_batch_size=8)._bound_deployment
    assert gpu.ray_actor_options == {"num_cpus": 2, "num_gpus": 1}
    assert gpu.num_replicas == 1 and gpu.max_ongoing_requests == 16
    mine = build_app(base, catalog, ray_actor_options={"num_cpus": 0.5, "memory": 2**30})._bound_deployment
    assert mine.ray_actor_options == {"num_cpus": 0.5, "memory": 2**30}


def test_build_app_passes_autoscaling_through(ray_paths):
    base, catalog = ray_paths
    scaled = build_app(
        base, catalog, autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    )._bound_deployment
    assert scaled._deployment_config.autoscaling_config.max_replicas == 4
    assert scaled._deployment_config.autoscaling_config.target_ongoing_requests == 8
    with pytest.raises(ValueError, match="not both"):
        build_app(base, catalog, num_replicas=2, autoscaling_config={"max_replicas": 4})


def test_bad_engine_options_are_refused_before_deploying(ray_paths):
    base, catalog = ray_paths
    with pytest.raises(ValueError, match="top_k"):
        build_app(base, catalog, fusion={"top_k": 0})
    with pytest.raises(ValueError, match="unknown_option"):
        EngineSpec(base=str(base), catalog=str(catalog), fusion={"unknown_option": 1})


def test_app_builder_reads_ray_cli_strings(ray_paths):
    base, catalog = ray_paths
    args = AppArgs.model_validate(
        {"base": str(base), "catalog": str(catalog), "num_replicas": "2", "fusion": '{"top_k": 1}'}
    )
    assert args.num_replicas == 2 and args.fusion == {"top_k": 1}


# ---------------------------------------------------------------------- 2 replicas on Ray
async def test_two_replicas_answer_like_the_engine_and_share_the_requests(client, ray_url, long_engine):
    """Completions spread over both replicas; each replica's own metrics count what it answered."""
    prompts = [f"Count from {i} to {i + 5}:" for i in range(8)]
    expected = [long_engine.generate(p, formatted=True, max_new_tokens=24).text for p in prompts]

    async def complete(i: int) -> str:
        raw = await client.completions.with_raw_response.create(
            model="base", prompt=prompts[i], max_tokens=24
        )
        assert raw.parse().choices[0].text == expected[i]
        return raw.headers[REPLICA_HEADER]

    answered_by: list[str] = []
    for _ in range(6):  # concurrent rounds until both replicas have answered (almost always the first)
        answered_by += await asyncio.gather(*(complete(i) for i in range(len(prompts))))
        if len(set(answered_by)) == 2:
            break
    assert len(set(answered_by)) == 2, answered_by

    # /metrics reaches one replica per scrape; read until both have reported
    counted: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=ray_url, timeout=30) as http:
        for _ in range(50):
            response = await http.get("/metrics")
            samples = metric_samples(response.text)
            replica = response.headers[REPLICA_HEADER]
            info = [dict(labels) for (name, labels) in samples if name == "qaflora_replica_info"]
            assert info == [{"replica": replica, "deployment": "qaflora", "application": APP}]
            key = ("qaflora_requests_total", (("endpoint", "/v1/completions"), ("status", "200")))
            counted[replica] = samples.get(key, 0.0)
            if len(counted) == 2:
                break
    assert counted == {r: float(answered_by.count(r)) for r in set(answered_by)}


async def test_chat_streams_and_fusion_options_through_ray(client, long_engine):
    layers = long_engine.num_layers
    cases = [
        ({}, {}),
        ({"fusion": {"mode": "single", "adapters": ["ad1"]}}, {"mode": "single", "adapters": ["ad1"]}),
        (
            {"fusion": {"mode": "oracle", "oracle_weights": {"ad0": [0.5] * layers, "ad1": 1.5}}},
            {"mode": "oracle", "oracle_weights": {"ad0": [0.5] * layers, "ad1": 1.5}},
        ),
        ({"fusion": {"top_k": 1}}, {"top_k": 1}),
    ]

    async def stream(i: int) -> tuple[str, dict]:
        extra, _ = cases[i]
        pieces, fusion = [], None
        events = await client.chat.completions.create(
            model="base",
            messages=messages(i),
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
        async for chunk in events:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                fusion = chunk.model_extra["fusion"]
        return "".join(pieces), fusion

    outputs = await asyncio.gather(*(stream(i) for i in range(len(cases))))
    for i, ((text, fusion), (_, options)) in enumerate(zip(outputs, cases, strict=True)):
        direct = long_engine.generate(messages(i), max_new_tokens=16, **options)
        assert text == direct.text
        assert fusion["adapters"] == direct.weights.adapters


async def test_errors_and_health_through_ray(client, ray_url):
    with pytest.raises(openai.NotFoundError, match="model_not_found|not found"):
        await client.chat.completions.create(model="nope", messages=messages(0))
    with pytest.raises(openai.BadRequestError, match="fusion"):
        await client.chat.completions.create(
            model="base", messages=messages(0), extra_body={"fusion": {"mode": "bogus"}}
        )
    health = httpx.get(f"{ray_url}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers[REPLICA_HEADER]


# ---------------------------------------------------------------------- a replica dies under load (last)
def kill_replica(replica: str) -> None:
    """``ray.kill`` the actor of one Serve replica (its actor name ends with the replica id)."""
    import ray

    names = [
        (a["name"], a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith(f"#{replica}")
    ]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0][0], namespace=names[0][1]), no_restart=True)


async def test_killing_a_replica_under_load(ray_url, long_engine):
    """In-flight requests on the killed replica end with an error, none hangs, the rest are right,
    and the app keeps answering.

    The replica is killed as soon as the first stream's text arrives: that stream (1,200 tokens
    to go) is in flight there. Every stream knows its replica from its response headers.
    """
    n_streams, n_plain, tokens = 4, 2, 1200
    expected = long_engine.generate_batch(
        [messages(100 + i) for i in range(n_streams)] + [messages(200 + i) for i in range(n_plain)],
        max_new_tokens=tokens,
        ignore_eos=True,
    )
    expected_stream, expected_plain = expected[:n_streams], expected[n_streams:]
    replica_of: dict[int, str] = {}  # stream -> the replica that answered its request
    first_text: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def stream(http: httpx.AsyncClient, i: int) -> str:
        body = {"model": "base", "messages": messages(100 + i), "max_tokens": tokens, "ignore_eos": True}
        text, done = [], False
        async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            assert response.status_code == 200
            replica_of[i] = response.headers[REPLICA_HEADER]
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                    text.append(json.loads(line[len("data: ") :])["choices"][0]["delta"]["content"])
                    if not first_text.done():
                        first_text.set_result(i)
        assert done, "a stream ended without [DONE]"
        return "".join(text)

    async def plain(http: httpx.AsyncClient, i: int) -> str:
        body = {"model": "base", "messages": messages(200 + i), "max_tokens": tokens, "ignore_eos": True}
        response = await http.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]

    async with httpx.AsyncClient(base_url=ray_url, timeout=REQUEST_TIMEOUT_S) as http:
        streams = [asyncio.ensure_future(stream(http, i)) for i in range(n_streams)]
        plains = [asyncio.ensure_future(plain(http, i)) for i in range(n_plain)]
        victim = replica_of[await asyncio.wait_for(first_text, REQUEST_TIMEOUT_S)]
        kill_replica(victim)
        # no request hangs: all end within the bound, each with its right answer or an error
        outcomes = await asyncio.wait_for(
            asyncio.gather(*streams, *plains, return_exceptions=True), 2 * REQUEST_TIMEOUT_S
        )
        errors = 0
        for i, outcome in enumerate(outcomes[:n_streams]):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, (httpx.HTTPError, AssertionError)), repr(outcome)
                assert replica_of.get(i, victim) == victim, "a stream failed on the surviving replica"
                errors += 1
            else:
                assert replica_of[i] != victim, "a stream on the killed replica finished"
                assert outcome == expected_stream[i].text
        for i, outcome in enumerate(outcomes[n_streams:]):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, httpx.HTTPStatusError) and outcome.response.status_code >= 500
                errors += 1
            else:
                assert outcome == expected_plain[i].text
        assert errors >= 1  # at least the stream that was generating there

        # the app keeps serving: the surviving replica (and Serve's replacement) answer
        after = [messages(300 + i) for i in range(4)]
        want = [long_engine.generate(m, max_new_tokens=8).text for m in after]
        answers = await asyncio.gather(
            *(
                http.post("/v1/chat/completions", json={"model": "base", "messages": m, "max_tokens": 8})
                for m in after
            )
        )
        for response, text in zip(answers, want, strict=True):
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == text
            assert response.headers[REPLICA_HEADER] != victim
