"""Engine results -> OpenAI response objects, built from the ``openai`` package's own types.

Using the client library's models means a field name or nesting cannot drift
from what clients parse. Our addition rides along as an extra field,
``fusion``: the mode, the adapters that took part and their per-layer weight
matrix (``FusionWeights.to_dict()``), so a client can see why it got its answer.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from openai.types import Completion, CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from qaflora import FusionResult
from qaflora.toolcalls import ParsedToolCall, parse_tool_calls

from .translate import EngineCall


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_of(results: list[FusionResult]) -> CompletionUsage:
    prompt = sum(r.usage.prompt_tokens for r in results)
    completion = sum(r.usage.completion_tokens for r in results)
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def fusion_of(result: FusionResult) -> dict[str, Any]:
    """The extra ``fusion`` field: which adapters, with which per-layer weights, in which mode."""
    return result.weights.to_dict()


@dataclass
class AnswerParts:
    """What the model wrote, split the OpenAI way: text for the user, and tool calls."""

    content: str | None
    tool_calls: list[ParsedToolCall]

    @property
    def finish_reason_override(self) -> str | None:
        return "tool_calls" if self.tool_calls else None


def split_answer(text: str, tool_names: list[str] | None) -> AnswerParts:
    """Parse Hermes tool calls out of ``text`` when tools were offered.

    A malformed call cannot be expressed as an OpenAI tool call, so then the text
    comes back whole, as content: the client sees exactly what the model wrote.
    """
    if tool_names is None:
        return AnswerParts(content=text, tool_calls=[])
    parsed = parse_tool_calls(text, tool_names)
    if parsed.invalid or not parsed.calls:
        return AnswerParts(content=text, tool_calls=[])
    return AnswerParts(content=parsed.content or None, tool_calls=list(parsed.calls))


def _arguments(call: ParsedToolCall) -> str:
    return json.dumps(call.arguments, ensure_ascii=False)


def chat_completion(call: EngineCall, result: FusionResult) -> ChatCompletion:
    parts = split_answer(result.text, call.tool_names)
    tool_calls = [
        ChatCompletionMessageFunctionToolCall(
            id=c.id, type="function", function=Function(name=c.name, arguments=_arguments(c))
        )
        for c in parts.tool_calls
    ]
    message = ChatCompletionMessage(role="assistant", content=parts.content, tool_calls=tool_calls or None)
    return ChatCompletion(
        id=new_id("chatcmpl"),
        object="chat.completion",
        created=int(time.time()),
        model=call.model,
        choices=[
            Choice(
                index=0,
                message=message,
                finish_reason=parts.finish_reason_override or result.finish_reason,
                logprobs=None,
            )
        ],
        usage=usage_of([result]),
        fusion=fusion_of(result),
    )


def completion(calls: list[EngineCall], results: list[FusionResult]) -> Completion:
    return Completion(
        id=new_id("cmpl"),
        object="text_completion",
        created=int(time.time()),
        model=calls[0].model,
        choices=[
            CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason, logprobs=None)
            for i, r in enumerate(results)
        ],
        usage=usage_of(results),
        fusion=fusion_of(results[0]) if len(results) == 1 else [fusion_of(r) for r in results],
    )


class ChatChunks:
    """The chunks of one streamed chat completion (same id, created and model on every chunk)."""

    def __init__(self, call: EngineCall) -> None:
        self.call = call
        self.id = new_id("chatcmpl")
        self.created = int(time.time())

    def _chunk(self, choices: list[ChunkChoice], **extra: Any) -> ChatCompletionChunk:
        if self.call.include_usage and "usage" not in extra:
            extra["usage"] = None  # OpenAI: with include_usage every chunk has the field, null but the last
        return ChatCompletionChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.call.model,
            choices=choices,
            **extra,
        )

    def role(self) -> ChatCompletionChunk:
        return self._chunk(
            [ChunkChoice(index=0, delta=ChoiceDelta(role="assistant", content=""), finish_reason=None)]
        )

    def text(self, piece: str) -> ChatCompletionChunk:
        return self._chunk([ChunkChoice(index=0, delta=ChoiceDelta(content=piece), finish_reason=None)])

    def tool_calls(self, calls: list[ParsedToolCall]) -> ChatCompletionChunk:
        deltas = [
            ChoiceDeltaToolCall(
                index=i,
                id=c.id,
                type="function",
                function=ChoiceDeltaToolCallFunction(name=c.name, arguments=_arguments(c)),
            )
            for i, c in enumerate(calls)
        ]
        return self._chunk([ChunkChoice(index=0, delta=ChoiceDelta(tool_calls=deltas), finish_reason=None)])

    def finish(self, finish_reason: str, result: FusionResult) -> ChatCompletionChunk:
        return self._chunk(
            [ChunkChoice(index=0, delta=ChoiceDelta(), finish_reason=finish_reason)], fusion=fusion_of(result)
        )

    def usage(self, result: FusionResult) -> ChatCompletionChunk:
        return self._chunk([], usage=usage_of([result]), fusion=fusion_of(result))


class CompletionChunks:
    """The chunks of one streamed text completion."""

    def __init__(self, call: EngineCall) -> None:
        self.call = call
        self.id = new_id("cmpl")
        self.created = int(time.time())

    def _chunk(self, choices: list[CompletionChoice], **extra: Any) -> Completion:
        if self.call.include_usage and "usage" not in extra:
            extra["usage"] = None
        return Completion(
            id=self.id,
            object="text_completion",
            created=self.created,
            model=self.call.model,
            choices=choices,
            **extra,
        )

    def text(self, piece: str) -> Completion:
        # OpenAI's type has no None finish_reason, but the stream sends null until the end
        choice = CompletionChoice.model_construct(index=0, text=piece, finish_reason=None, logprobs=None)
        return self._chunk([choice])

    def finish(self, result: FusionResult) -> Completion:
        choice = CompletionChoice(index=0, text="", finish_reason=result.finish_reason, logprobs=None)
        return self._chunk([choice], fusion=fusion_of(result))

    def usage(self, result: FusionResult) -> Completion:
        return self._chunk([], usage=usage_of([result]), fusion=fusion_of(result))
