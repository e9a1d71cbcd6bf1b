"""``create_app(engine)``: the OpenAI-compatible FastAPI app over one fusion engine.

App construction is kept apart from process startup (:mod:`.server`), so the
same app can run under ``qaflora serve`` (uvicorn), in a test's background
thread, or inside another host such as a Ray Serve deployment.

Every handler is async and awaits the engine's asyncio API, so the event loop
never blocks on the model; concurrent requests meet in the engine's batching
worker, each with its own fusion weights. A client that disconnects cancels its
generation: streams through their closed generator, plain requests through a
watcher on the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from qaflora import FusionEngine, FusionResult, __version__

from .errors import APIError, from_engine_error, install_error_handlers
from .metrics import MetricsMiddleware, ServerMetrics
from .models import ModelNames
from .protocol import ChatCompletionRequest, CompletionRequest
from .responses import chat_completion, completion
from .streaming import ClosingEventSourceResponse, chat_stream, completion_stream
from .translate import chat_call, completion_calls

T = TypeVar("T")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"; never seen by a client


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


def create_app(engine: FusionEngine, *, model_name: str | None = None) -> FastAPI:
    """The app serving ``engine``; ``model_name`` defaults to ``engine.model_name``.

    The app never closes the engine: whoever built the engine owns it.
    """
    names = ModelNames(engine, model_name)
    metrics = ServerMetrics(engine)
    app = FastAPI(
        title="qaflora",
        version=__version__,
        description="OpenAI-compatible API over a base model with LoRA adapters fused per query and layer.",
        strict_content_type=False,  # a JSON body without a Content-Type header is still read as JSON
    )
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.model_names = names
    install_error_handlers(app, on_error=lambda e: metrics.observe_error(e.type, e.code))
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    async def answered(request: Request, endpoint: str, work: Awaitable[T]) -> T:
        try:
            return await _unless_disconnected(request, work)
        except ClientDisconnected:
            metrics.disconnects.labels(endpoint=endpoint).inc()
            raise
        except APIError:
            raise
        except Exception as exc:
            raise from_engine_error(exc) from exc

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
        started = time.perf_counter()
        call = chat_call(engine, names, body)
        if body.stream:
            return ClosingEventSourceResponse(chat_stream(engine, call, metrics, started))
        try:
            result: FusionResult = await answered(
                request, "/v1/chat/completions", engine.agenerate(call.query, **call.engine_kwargs())
            )
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        metrics.observe_result(result)
        return JSONResponse(chat_completion(call, result).model_dump(mode="json"))

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request, body: CompletionRequest) -> Any:
        started = time.perf_counter()
        calls = completion_calls(engine, names, body)
        if body.stream:
            return ClosingEventSourceResponse(completion_stream(engine, calls[0], metrics, started))
        work = asyncio.gather(*(engine.agenerate(c.query, **c.engine_kwargs()) for c in calls))
        try:
            results: list[FusionResult] = await answered(request, "/v1/completions", work)
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        for result in results:
            metrics.observe_result(result)
        return JSONResponse(completion(calls, results).model_dump(mode="json"))

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [card.model_dump(mode="json") for card in names.cards()]}

    @app.get("/v1/models/{model}")
    async def retrieve_model(model: str) -> dict[str, Any]:
        return names.card(model).model_dump(mode="json")

    @app.get("/health")
    async def health() -> JSONResponse:
        load = engine.load()
        body = {
            "status": "closed" if engine.closed else "ok",
            "model": names.base,
            "adapters": engine.adapter_names,
            "running": load.running,
            "queued": load.queued,
        }
        return JSONResponse(body, status_code=503 if engine.closed else 200)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    return app


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (and so its engine request) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientDisconnected


async def _disconnected(request: Request) -> None:
    """Return when the client has closed the connection (the body has been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
