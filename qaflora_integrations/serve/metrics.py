"""Prometheus metrics of one server: requests, tokens, latencies, batch sizes, adapter choices.

Each app owns its registry (not prometheus-client's global one), so several apps
can live in one process (tests, a Ray Serve replica per deployment) without
clashing series. The engine's queue is read at scrape time through
:meth:`FusionEngine.load`, so the running/queued gauges are never stale.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from qaflora import FusionEngine, FusionResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def endpoint_label(path: str) -> str:
    """A bounded label: known routes by name (``/v1/models/<id>`` folded), everything else 'other'."""
    if path.startswith("/v1/models"):
        return "/v1/models"
    return path if path in ENDPOINTS else "other"


class ServerMetrics:
    """Every series the server exposes on ``/metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: FusionEngine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qaflora_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "qaflora_request_latency_seconds",
            "End-to-end request time, from arrival to the last byte (a whole stream for streams).",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "qaflora_time_to_first_token_seconds",
            "Streamed requests: time from arrival to the first generated text sent.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "qaflora_prompt_tokens", "Prompt tokens of answered requests.", registry=r
        )
        self.completion_tokens = Counter(
            "qaflora_completion_tokens", "Generated tokens of answered requests.", registry=r
        )
        self.completion_length = Histogram(
            "qaflora_completion_length_tokens",
            "Generated tokens per request.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "qaflora_batch_size",
            "Size of the engine batch each answered request was generated in.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.adapter_selected = Counter(
            "qaflora_adapter_selected",
            "Requests whose fused answer used this adapter (after preselection).",
            ["adapter"],
            registry=r,
        )
        self.errors = Counter(
            "qaflora_errors", "Error responses by OpenAI error type and code.", ["type", "code"], registry=r
        )
        self.disconnects = Counter(
            "qaflora_client_disconnects",
            "Requests whose client went away before the answer was complete (generation cancelled).",
            ["endpoint"],
            registry=r,
        )
        self.in_flight = Gauge("qaflora_http_requests_in_flight", "HTTP requests being served.", registry=r)
        running = Gauge("qaflora_requests_running", "Requests the engine is generating now.", registry=r)
        queued = Gauge("qaflora_requests_queued", "Requests waiting for the engine's next batch.", registry=r)
        running.set_function(lambda: engine.load().running)
        queued.set_function(lambda: engine.load().queued)

    def observe_result(self, result: FusionResult) -> None:
        """Count one answered request: its tokens, its batch and the adapters it was fused from."""
        self.prompt_tokens.inc(result.usage.prompt_tokens)
        self.completion_tokens.inc(result.usage.completion_tokens)
        self.completion_length.observe(result.usage.completion_tokens)
        self.batch_size.observe(result.timings.batch_size)
        for adapter in result.weights.adapters:
            self.adapter_selected.labels(adapter=adapter).inc()

    def observe_error(self, type: str, code: str | None) -> None:
        self.errors.labels(type=type, code=code or "").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request by endpoint and status, and timing it.

    Plain ASGI (not Starlette's ``BaseHTTPMiddleware``) so streamed bodies pass
    through untouched and a client's disconnect still reaches the endpoint.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_label(scope.get("path", ""))
        status = {"code": 500}  # what the client gets if the app raises before responding
        started = time.perf_counter()

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            self.metrics.request_latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
