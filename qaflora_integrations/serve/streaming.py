"""Server-sent event streams: engine events in, ``data: {chunk}`` lines out, ``data: [DONE]`` last.

The engine holds stop strings back already, so what it streams is final; with
tools offered, a tool-call block is held back too (it only makes sense whole) and
goes out as ``tool_calls`` at the end. When the client goes away, Starlette
cancels this generator; closing the engine's ``astream`` on the way out cancels
the generation, so the request's batch slot is freed at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel
from qaflora import FusionEngine, FusionResult
from qaflora.toolcalls import ToolCallStreamSplitter

from .errors import APIError, from_engine_error
from .metrics import ServerMetrics
from .responses import ChatChunks, CompletionChunks, split_answer
from .translate import EngineCall

logger = logging.getLogger(__name__)

DONE = format_sse_event(data_str="[DONE]")


class ClosingEventSourceResponse(EventSourceResponse):
    """An SSE response that closes its body generator when the response ends, however it ends.

    On a client's disconnect Starlette stops iterating the body but leaves the
    generator suspended, to be closed whenever it is garbage-collected; closing it
    here, at once, is what cancels the engine's generation and frees the slot now.
    """

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        # what FastAPI sets on its own SSE routes: no caching, no proxy buffering of the stream
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def sse(payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude_unset=True)
    else:
        data = json.dumps(payload, ensure_ascii=False)
    return format_sse_event(data_str=data)


class _Tracked:
    """Time to first token, disconnects and errors of one stream, reported to the metrics."""

    def __init__(self, metrics: ServerMetrics, endpoint: str, started: float) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.started = started
        self.first_sent = False

    def sent_text(self) -> None:
        if not self.first_sent:
            self.first_sent = True
            self.metrics.time_to_first_token.labels(endpoint=self.endpoint).observe(
                time.perf_counter() - self.started
            )

    def error(self, exc: Exception) -> bytes:
        error = exc if isinstance(exc, APIError) else from_engine_error(exc)
        self.metrics.observe_error(error.type, error.code)
        return sse(error.body())


async def chat_stream(
    engine: FusionEngine, call: EngineCall, metrics: ServerMetrics, started: float
) -> AsyncIterator[bytes]:
    endpoint = "/v1/chat/completions"
    chunks = ChatChunks(call)
    tracked = _Tracked(metrics, endpoint, started)
    splitter = ToolCallStreamSplitter(call.tool_names) if call.tool_names is not None else None
    streamed: list[str] = []
    result: FusionResult | None = None
    yield sse(chunks.role())
    try:
        async with contextlib.aclosing(engine.astream(call.query, **call.engine_kwargs())) as events:
            async for event in events:
                if event.result is not None:
                    result = event.result
                    break
                piece = splitter.feed(event.text) if splitter is not None else event.text
                if piece:
                    streamed.append(piece)
                    tracked.sent_text()
                    yield sse(chunks.text(piece))
    except (asyncio.CancelledError, GeneratorExit):
        metrics.disconnects.labels(endpoint=endpoint).inc()
        raise
    except Exception as exc:  # the engine failed after the response had started
        yield tracked.error(exc)
        yield DONE
        return
    if result is None:  # the engine always ends a stream with its result
        yield tracked.error(RuntimeError("the engine's stream ended without a result"))
        yield DONE
        return
    metrics.observe_result(result)
    parts = split_answer(result.text, call.tool_names)
    sent = "".join(streamed)
    rest = (parts.content or "")[len(sent) :] if (parts.content or "").startswith(sent) else ""
    if rest:
        tracked.sent_text()
        yield sse(chunks.text(rest))
    if parts.tool_calls:
        yield sse(chunks.tool_calls(parts.tool_calls))
    yield sse(chunks.finish(parts.finish_reason_override or result.finish_reason, result))
    if call.include_usage:
        yield sse(chunks.usage(result))
    yield DONE


async def completion_stream(
    engine: FusionEngine, call: EngineCall, metrics: ServerMetrics, started: float
) -> AsyncIterator[bytes]:
    endpoint = "/v1/completions"
    chunks = CompletionChunks(call)
    tracked = _Tracked(metrics, endpoint, started)
    result: FusionResult | None = None
    try:
        async with contextlib.aclosing(engine.astream(call.query, **call.engine_kwargs())) as events:
            async for event in events:
                if event.result is not None:
                    result = event.result
                    break
                if event.text:
                    tracked.sent_text()
                    yield sse(chunks.text(event.text))
    except (asyncio.CancelledError, GeneratorExit):
        metrics.disconnects.labels(endpoint=endpoint).inc()
        raise
    except Exception as exc:
        yield tracked.error(exc)
        yield DONE
        return
    if result is None:
        yield tracked.error(RuntimeError("the engine's stream ended without a result"))
        yield DONE
        return
    metrics.observe_result(result)
    yield sse(chunks.finish(result))
    if call.include_usage:
        yield sse(chunks.usage(result))
    yield DONE
