"""Engine results -> LangChain messages, with the usage and the fusion decisions on them.

The fusion metadata is what makes a trace useful: which adapters answered and
with which weight at each layer. It is plain JSON, so LangSmith (or any tracer)
stores it as is.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, UsageMetadata
from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from qaflora import FusionResult

from .tools import ParsedOutput

PROVIDER = "qaflora"


def usage_metadata(result: FusionResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.usage.prompt_tokens,
        output_tokens=result.usage.completion_tokens,
        total_tokens=result.usage.total_tokens,
    )


def response_metadata(result: FusionResult, model_name: str | None) -> dict[str, Any]:
    """``model_name``, ``model_provider``, ``finish_reason``, ``adapters``, ``fusion`` (mode,
    per-layer ``matrix``, ``mean``, divergences, LoGo scores) and stage ``timings``."""
    meta = result.metadata()
    meta.pop("usage", None)  # already in usage_metadata
    meta["model_name"] = model_name or result.model_name
    meta["model_provider"] = PROVIDER
    return meta


def ai_message(result: FusionResult, parsed: ParsedOutput, model_name: str | None) -> AIMessage:
    return AIMessage(
        content=parsed.content,
        tool_calls=parsed.tool_calls,
        invalid_tool_calls=parsed.invalid_tool_calls,
        usage_metadata=usage_metadata(result),
        response_metadata=response_metadata(result, model_name),
    )


def text_chunk(text: str) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=text))


def last_chunk(result: FusionResult, parsed: ParsedOutput, model_name: str | None) -> ChatGenerationChunk:
    """The final chunk: the rest of the text, the tool calls, usage and fusion metadata.

    Usage and metadata ride on this chunk only: LangChain adds chunks up, and
    metadata on two chunks would be added twice (strings concatenated).
    """
    message = AIMessageChunk(
        content=parsed.content,
        tool_call_chunks=_tool_call_chunks(parsed),
        usage_metadata=usage_metadata(result),
        response_metadata=response_metadata(result, model_name),
        chunk_position="last",
    )
    return ChatGenerationChunk(message=message)


def _tool_call_chunks(parsed: ParsedOutput) -> list[ToolCallChunk]:
    """Whole calls as chunks: LangChain rebuilds ``tool_calls``/``invalid_tool_calls`` from
    them when the stream is aggregated, by trying to parse each chunk's args.

    That parse repairs truncated JSON, so the raw text of a malformed call (say
    ``{"name": "add", "arguments": {"a": 1``) would come back as a *valid* call.
    An invalid call's args therefore start with its error, which no JSON parser
    accepts: it stays invalid, and the reason survives aggregation (which drops
    the ``error`` field).
    """
    chunks = [
        tool_call_chunk(name=c["name"], args=json.dumps(c["args"], ensure_ascii=False), id=c["id"], index=i)
        for i, c in enumerate(parsed.tool_calls)
    ]
    offset = len(chunks)
    chunks += [
        tool_call_chunk(
            name=c.get("name"),
            args=f"invalid tool call ({c.get('error')}): {c.get('args') or ''}",
            id=c.get("id"),
            index=offset + i,
        )
        for i, c in enumerate(parsed.invalid_tool_calls)
    ]
    return chunks
