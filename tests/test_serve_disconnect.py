"""A client that goes away mid-request cancels its generation and frees its slot, over real HTTP.

Each request asks for ~16k tokens with EOS ignored; measured on the 2-core CPU, the tiny
model produced fewer than 3,000 of them in 60 s (the whole text is re-detokenised at every
step), so an engine back to idle within 30 s of the disconnect can only mean the generation
was cancelled (with cancellation disabled in the engine, the first test fails).
The engine's own view (``FusionEngine.load``) is read back, not the server's bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

IDLE_WITHIN_S = 30.0  # a liveness bound; finishing the request instead would take minutes


def long_request(engine, **extra) -> dict:
    prompt = [{"role": "user", "content": "Write a list: 1, 2, 3"}]
    room = engine.context_window - len(engine.encode(prompt).ids)
    return {"model": "base", "messages": prompt, "max_tokens": room, "ignore_eos": True, **extra}


async def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def metric(server, line_prefix: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_client_dropping_a_stream_cancels_the_generation(long_server, long_engine):
    assert long_engine.load().idle
    body = long_request(long_engine, stream=True)
    async with (
        httpx.AsyncClient(base_url=long_server.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        received = 0
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content"' in line:
                received += 1
            if received >= 3:
                break
        assert long_engine.load().running == 1  # generating while we read
    # leaving the block closed the connection mid-stream
    assert await wait_until(lambda: long_engine.load().idle, IDLE_WITHIN_S), long_engine.load()
    endpoint = 'qaflora_client_disconnects_total{endpoint="/v1/chat/completions"}'
    assert await wait_until(lambda: metric(long_server, endpoint) == 1.0, 5)
    assert metric(long_server, "qaflora_requests_running") == 0
    # the slot is free: the next request is answered normally
    ok = httpx.post(
        long_server.url + "/v1/chat/completions",
        json={"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


async def test_client_dropping_a_plain_request_cancels_the_generation(long_server, long_engine):
    assert long_engine.load().idle

    async def ask() -> None:
        async with httpx.AsyncClient(base_url=long_server.url, timeout=120) as client:
            await client.post("/v1/chat/completions", json=long_request(long_engine))

    task = asyncio.create_task(ask())
    assert await wait_until(lambda: long_engine.load().running == 1, 30), "the request never started"
    task.cancel()  # the client gives up: httpx closes the connection
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await wait_until(lambda: long_engine.load().idle, IDLE_WITHIN_S), long_engine.load()
    status_499 = 'qaflora_requests_total{endpoint="/v1/chat/completions",status="499"}'
    assert await wait_until(lambda: metric(long_server, status_499) == 1.0, 5)


async def test_client_dropping_a_completion_stream_cancels_it(long_server, long_engine):
    prompt = "Write a list: 1, 2, 3"
    room = long_engine.context_window - len(long_engine.encode(prompt, formatted=True).ids)
    body = {"model": "base:ad0", "prompt": prompt, "max_tokens": room, "ignore_eos": True, "stream": True}
    async with (
        httpx.AsyncClient(base_url=long_server.url, timeout=60) as client,
        client.stream("POST", "/v1/completions", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                break
        assert long_engine.load().running == 1
    assert await wait_until(lambda: long_engine.load().idle, IDLE_WITHIN_S), long_engine.load()
