"""``qaflora serve`` stopped by SIGTERM under load: in-flight requests finish, new ones are refused,
the process exits by itself (plain uvicorn, and on Ray Serve with 2 replicas).

Each server runs as its own process group leader, and the signal goes to that process only,
as a process manager (systemd, Kubernetes) sends it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from qaflora.testing import free_loopback_port

# One Ray runtime at a time: under pytest-xdist these modules share one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")

UP_WITHIN_S = 240.0  # a Ray runtime and 2 model loads on 2 busy cores
EXIT_WITHIN_S = 90.0
RAY_TOKENS = 1600


def start_server(args: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", "from qaflora.cli import main; main()", "serve", "--port", str(port), *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + UP_WITHIN_S
    while True:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"qaflora serve did not come up: {process.communicate()[0]}")
        time.sleep(0.5)


def term_under_load(process: subprocess.Popen, port: int, n_requests: int, tokens: int) -> dict:
    """Stream requests, SIGTERM the server once every one has streamed text, then try one more.

    Each request streams, so "in flight" is seen by the client itself (its first chunk came):
    no polling of /health, which Ray routes to one replica at a time.
    """
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    outcomes: dict[int, object] = {}
    started = [threading.Event() for _ in range(n_requests)]

    def request(i: int) -> None:
        body = {
            "model": "base",
            "messages": [{"role": "user", "content": f"request {i}"}],
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            with httpx.stream("POST", url, json=body, timeout=EXIT_WITHIN_S) as response:
                completion_tokens = None
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    started[i].set()
                    chunk = json.loads(line[len("data: ") :])
                    if chunk.get("usage"):
                        completion_tokens = chunk["usage"]["completion_tokens"]
                outcomes[i] = (response.status_code, completion_tokens)
        except Exception as exc:
            outcomes[i] = exc
        finally:
            started[i].set()  # a failed request must not hold the test up; its outcome says why

    threads = [threading.Thread(target=request, args=(i,)) for i in range(n_requests)]
    for thread in threads:
        thread.start()
    # in flight: every request has streamed before the signal
    deadline = time.monotonic() + 120
    for event in started:
        assert event.wait(max(0.0, deadline - time.monotonic())), f"requests never started: {outcomes}"
    assert not outcomes, f"requests ended before the signal: {outcomes}"
    descendants = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    try:
        late_body = {"model": "base", "messages": [{"role": "user", "content": "late"}]}
        late = httpx.post(url, json=late_body, timeout=30)
        late_outcome: object = late.status_code
    except httpx.TransportError as exc:
        late_outcome = exc
    for thread in threads:
        thread.join(EXIT_WITHIN_S)
    output, _ = process.communicate(timeout=EXIT_WITHIN_S)
    survivors = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return {"outcomes": outcomes, "late": late_outcome, "output": output, "survivors": survivors}


def test_sigterm_drains_the_plain_server(long_zoo, tmp_path: Path):
    catalog = tmp_path / "catalog.yaml"
    long_zoo.catalog().to_file(catalog)
    port = free_loopback_port()
    process = start_server(["--base", str(long_zoo.base), "--catalog", str(catalog)], port)
    seen = term_under_load(process, port, n_requests=3, tokens=400)
    # uvicorn drains, then re-raises the signal it caught (exit by SIGTERM, as process managers expect)
    assert process.returncode in (0, -signal.SIGTERM), seen["output"]
    assert seen["outcomes"] == {i: (200, 400) for i in range(3)}, seen["outcomes"]
    # uvicorn closed its socket at the signal: a new connection is refused
    assert isinstance(seen["late"], httpx.ConnectError), seen["late"]
    assert "Traceback" not in seen["output"], seen["output"]


@pytest.mark.slow
def test_sigterm_drains_the_ray_serve_application(long_zoo, tmp_path: Path):
    catalog = tmp_path / "catalog.yaml"
    long_zoo.catalog().to_file(catalog)
    port = free_loopback_port()
    process = start_server(["--base", str(long_zoo.base), "--catalog", str(catalog), "--replicas", "2"], port)
    # Longer streams than the plain server's: Ray routes the four requests to two replicas, and on
    # a quiet machine one replica finished 400 tokens before the other streamed its first chunk.
    seen = term_under_load(process, port, n_requests=4, tokens=RAY_TOKENS)
    # uvicorn drains, then re-raises the signal it caught (exit by SIGTERM, as process managers expect)
    assert process.returncode in (0, -signal.SIGTERM), seen["output"]
    assert seen["outcomes"] == {i: (200, RAY_TOKENS) for i in range(4)}, seen["outcomes"]
    # the application is gone from Ray's proxy (404), the proxy itself is (refused), or the request
    # reached a replica before the application was deleted and was answered in full (200): never lost
    assert seen["late"] in (200, 404) or isinstance(seen["late"], httpx.ConnectError), seen["late"]
    assert "serving on" in seen["output"] and "stopped" in seen["output"]
    assert "Traceback" not in seen["output"] and "WARNING" not in seen["output"], seen["output"]
    assert not seen["survivors"], f"processes left behind: {seen['survivors']}"
