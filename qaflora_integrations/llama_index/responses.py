"""Engine results -> LlamaIndex responses, with adapters, per-layer weights and usage attached.

Streams end with one extra chunk (``delta=""``) that carries the metadata: the
engine knows usage and finish reason only when generation is over, and LlamaIndex
hands the LAST chunk of a stream to callbacks (``TokenCountingHandler``) and
instrumentation end events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, closing
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    MessageRole,
)
from qaflora import FusionResult, StreamEvent


def response_metadata(result: FusionResult) -> dict[str, Any]:
    """JSON-ready ``additional_kwargs``: adapters, per-layer weights, usage, timings.

    Token counts are also given flat (``prompt_tokens``...), as llama-index-llms-openai
    does, so code written against OpenAI responses finds them.
    """
    usage = result.usage.to_dict()
    return {
        "model_name": result.model_name,
        "adapters": result.adapters,
        "fusion_weights": result.weights.to_dict(),
        "finish_reason": result.finish_reason,
        "usage": usage,
        **usage,
        "timings": result.timings.to_dict(),
    }


def completion_response(result: FusionResult, delta: str | None = None) -> CompletionResponse:
    # raw has a "usage" dict: LlamaIndex's TokenCountingHandler reads token counts from there.
    return CompletionResponse(
        text=result.text, delta=delta, additional_kwargs=response_metadata(result), raw=result.metadata()
    )


def chat_response(result: FusionResult, delta: str | None = None) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=result.text),
        delta=delta,
        additional_kwargs=response_metadata(result),
        raw=result.metadata(),
    )


def stream_completions(events: Iterator[StreamEvent]) -> CompletionResponseGen:
    text = ""
    with closing(events):  # closing early cancels the request in the engine
        for event in events:
            if event.result is not None:
                yield completion_response(event.result, delta="")
            else:
                text += event.text
                yield CompletionResponse(text=text, delta=event.text)


def stream_chats(events: Iterator[StreamEvent]) -> ChatResponseGen:
    with closing(stream_completions(events)) as responses:
        for response in responses:
            yield _completion_to_chat(response)


async def astream_completions(events: AsyncIterator[StreamEvent]) -> CompletionResponseAsyncGen:
    text = ""
    async with aclosing(events):
        async for event in events:
            if event.result is not None:
                yield completion_response(event.result, delta="")
            else:
                text += event.text
                yield CompletionResponse(text=text, delta=event.text)


async def astream_chats(events: AsyncIterator[StreamEvent]) -> ChatResponseAsyncGen:
    async with aclosing(astream_completions(events)) as responses:
        async for response in responses:
            yield _completion_to_chat(response)


def _completion_to_chat(response: CompletionResponse) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
        delta=response.delta,
        additional_kwargs=response.additional_kwargs,
        raw=response.raw,
    )
