"""Tool calling for LangChain: the shared Hermes parser (:mod:`qaflora.toolcalls`), LangChain types out.

Parsing itself is framework-free and lives in the core so the LangChain model, the
LlamaIndex model and the OpenAI-compatible server agree on what a tool call is; this
module only turns its plain results into LangChain ``ToolCall`` / ``InvalidToolCall``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call
from qaflora import toolcalls as core
from qaflora.toolcalls import (
    CLOSE_TAG,
    OPEN_TAG,
    ToolChoice,
    new_call_id,
    normalize_tool_choice,
    template_supports_tools,
)

__all__ = [
    "CLOSE_TAG",
    "OPEN_TAG",
    "ParsedOutput",
    "ToolCallStreamSplitter",
    "ToolChoice",
    "forced_call_prefix",
    "new_call_id",
    "normalize_tool_choice",
    "parse_tool_calls",
    "template_supports_tools",
]


@dataclass
class ParsedOutput:
    """Model text split into what the user reads and the tool calls it asked for."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)


def to_langchain(parsed: core.ParsedText) -> ParsedOutput:
    return ParsedOutput(
        content=parsed.content,
        tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in parsed.calls],
        invalid_tool_calls=[
            invalid_tool_call(name=c.name, args=c.raw, id=c.id, error=c.error) for c in parsed.invalid
        ],
    )


def parse_tool_calls(text: str, tool_names: Sequence[str] | None = None) -> ParsedOutput:
    """Split ``text`` into content and tool calls (see :func:`qaflora.toolcalls.parse_tool_calls`)."""
    return to_langchain(core.parse_tool_calls(text, tool_names))


def forced_call_prefix(choice: ToolChoice, tool_names: Sequence[str], chat_template: Any) -> str | None:
    """Text to put in the model's mouth so that it must call a tool, for tokenizers the
    grammar cannot read (:attr:`qaflora.FusionEngine.supports_constraints`; elsewhere the
    grammar enforces ``tool_choice``).

    Opening the ``<tool_call>`` block (and, when the tool is known, writing its name)
    leaves the model nothing to decide but the arguments. The newline follows the
    template's own example when it has one.
    """
    if choice is None or choice == "none":
        return None
    newline = "\n" if f"{OPEN_TAG}\n" in str(chat_template or "") else ""
    name = choice if choice != "any" else (tool_names[0] if len(tool_names) == 1 else None)
    if name is None:
        return f'{OPEN_TAG}{newline}{{"name": "'
    return f'{OPEN_TAG}{newline}{{"name": {json.dumps(name)}, "arguments": '


class ToolCallStreamSplitter:
    """:class:`qaflora.toolcalls.ToolCallStreamSplitter` whose ``finish`` gives LangChain types."""

    def __init__(self, tool_names: Sequence[str]) -> None:
        self._splitter = core.ToolCallStreamSplitter(tool_names)
        self.tool_names = self._splitter.tool_names

    def feed(self, piece: str) -> str:
        """Add generated text; return the part that is safe to stream now."""
        return self._splitter.feed(piece)

    def finish(self) -> ParsedOutput:
        """Parse the whole text; ``content`` of the result is what is left to stream."""
        return to_langchain(self._splitter.finish())

    @property
    def text(self) -> str:
        return self._splitter.text
