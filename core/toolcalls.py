"""Hermes-style tool calls in model text: parse them, stream around them, write them.

A hosted API returns tool calls as structured data; a local model only writes
text. Models trained on the Hermes convention (Qwen2.5, Hermes, many fine-tunes,
and the qaflora test models) write ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
so that is what we parse. Parsing never raises: malformed calls come back as
:class:`InvalidCall` so a caller can show the model its mistake.

This module knows no framework (only the standard library), so every front end
(LangChain, LlamaIndex, the OpenAI-compatible server) shares one parser and converts
the plain results into its own types.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_NAME = re.compile(r'"name"\s*:\s*"([^"\\]+)"')
_BLOCK = re.compile(re.escape(OPEN_TAG) + r"(.*?)(?:" + re.escape(CLOSE_TAG) + r"|\Z)", re.DOTALL)

ToolChoice = str | None
"""Normalised tool choice: ``None`` (auto), ``"none"``, ``"any"`` or the name of one tool."""


@dataclass(frozen=True)
class ParsedToolCall:
    """A well-formed call to a tool: its name, its arguments, and an id to answer it by."""

    name: str
    arguments: dict[str, Any]
    id: str


@dataclass(frozen=True)
class InvalidCall:
    """A block the model meant as a tool call that cannot be run, with the reason why."""

    name: str | None
    raw: str
    error: str
    id: str


@dataclass
class ParsedText:
    """Model text split into what the user reads and the tool calls it asked for."""

    content: str
    calls: list[ParsedToolCall] = field(default_factory=list)
    invalid: list[InvalidCall] = field(default_factory=list)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The Hermes text of one call, as the model is trained to write it (for chat history)."""
    return f"{OPEN_TAG}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{CLOSE_TAG}"


def template_supports_tools(chat_template: str | dict[str, str] | None) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` list at all.

    A template that ignores ``tools`` would silently drop them, and the model
    would answer without ever knowing it could call anything.
    """
    if not chat_template:
        return False
    if isinstance(chat_template, dict):
        return "tool_use" in chat_template or any("tools" in t for t in chat_template.values())
    return "tools" in chat_template


def normalize_tool_choice(tool_choice: Any, tool_names: Sequence[str]) -> ToolChoice:
    """Map the spellings users write (``"auto"``, ``"any"``, ``"required"``, ``True``,
    a tool name, an OpenAI ``{"type": "function", ...}`` dict) onto one of four cases.

    Raises ``ValueError`` naming the problem for a choice that cannot be honoured.
    """
    if tool_choice is None or tool_choice == "auto" or tool_choice is False:
        return None
    if tool_choice == "none":
        return "none"
    if tool_choice in ("any", "required") or tool_choice is True:
        return "any"
    name: Any = tool_choice
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"unsupported tool_choice {tool_choice!r}")
    if name not in tool_names:
        raise ValueError(f"tool_choice names {name!r}, but the bound tools are {list(tool_names)}")
    return name


def parse_tool_calls(text: str, tool_names: Sequence[str] | None = None) -> ParsedText:
    """Split ``text`` into content and Hermes-style tool calls.

    An unterminated last block is parsed too (generation often ends on EOS or a
    stop string before ``</tool_call>``). ``tool_names``, when given, marks calls
    to tools that were never bound as invalid instead of passing them on, and lets
    a whole answer that is a bare ``{"name": ..., "arguments": ...}`` count as a call.
    """
    calls: list[ParsedToolCall] = []
    invalid: list[InvalidCall] = []
    pieces: list[str] = []
    position = 0
    for match in _BLOCK.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        _parse_block(match.group(1), tool_names, calls, invalid)
    pieces.append(text[position:])
    content = "".join(pieces)
    if calls or invalid:
        if not content.strip():
            content = ""
    elif tool_names:
        bare = _parse_bare_call(text, tool_names)
        if bare is not None:
            return ParsedText(content="", calls=[bare])
    return ParsedText(content=content, calls=calls, invalid=invalid)


def _parse_block(
    raw: str, tool_names: Sequence[str] | None, calls: list[ParsedToolCall], invalid: list[InvalidCall]
) -> None:
    body = raw.strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        named = _NAME.search(body)  # keep the tool's name, so the model can be told what went wrong
        invalid.append(
            InvalidCall(
                name=named.group(1) if named else None, raw=body, error=f"not JSON: {exc}", id=new_call_id()
            )
        )
        return
    call, error = _call_from_json(data, tool_names)
    if call is not None:
        calls.append(call)
    else:
        name = data.get("name") if isinstance(data, dict) else None
        invalid.append(
            InvalidCall(name=name if isinstance(name, str) else None, raw=body, error=error, id=new_call_id())
        )


def _call_from_json(data: Any, tool_names: Sequence[str] | None) -> tuple[ParsedToolCall | None, str]:
    if not isinstance(data, dict):
        return None, "a tool call must be a JSON object with 'name' and 'arguments'"
    name = data.get("name")
    if not isinstance(name, str) or not name:
        return None, "the tool call has no 'name'"
    if tool_names is not None and name not in tool_names:
        return None, f"unknown tool {name!r}; available tools are {list(tool_names)}"
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI does
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return None, f"arguments are not JSON: {exc}"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None, "the tool call's 'arguments' must be a JSON object"
    call_id = data.get("id") if isinstance(data.get("id"), str) else new_call_id()
    return ParsedToolCall(name=name, arguments=args, id=call_id), ""


def _parse_bare_call(text: str, tool_names: Sequence[str]) -> ParsedToolCall | None:
    """A whole answer that is just ``{"name": <bound tool>, "arguments": {...}}`` (Llama 3.1 style)."""
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")):
        return None
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not ({"arguments", "parameters"} & data.keys()):
        return None
    call, _ = _call_from_json(data, tool_names)
    return call


class ToolCallStreamSplitter:
    """Streams the text a user should see; holds back everything from ``<tool_call>`` on.

    Tool calls only make sense whole, so they are parsed once, at the end of the
    stream. Text that could still become ``<tool_call>`` (a trailing ``"<to"``),
    trailing whitespace, and an answer that opens with ``{`` (maybe a bare JSON
    call) are held back too, so the streamed content adds up to exactly the
    content :func:`parse_tool_calls` gives for the whole text.
    """

    def __init__(self, tool_names: Sequence[str]) -> None:
        self.tool_names = list(tool_names)
        self._text = ""
        self._emitted = 0
        self._in_call = False

    def feed(self, piece: str) -> str:
        """Add generated text; return the part that is safe to stream now."""
        self._text += piece
        if self._in_call:
            return ""
        if self._emitted == 0 and self._text.lstrip().startswith("{"):
            return ""  # may be a bare JSON tool call: decided at the end
        tag = self._text.find(OPEN_TAG, self._emitted)
        if tag >= 0:
            self._in_call = True
            safe_end = tag
        else:
            safe_end = len(self._text) - _partial_tag_length(self._text)
        safe_end = self._emitted + len(self._text[self._emitted : safe_end].rstrip())
        out = self._text[self._emitted : safe_end]
        self._emitted = safe_end
        return out

    def finish(self) -> ParsedText:
        """Parse the whole text; ``content`` of the result is what is left to stream."""
        parsed = parse_tool_calls(self._text, self.tool_names)
        streamed = self._text[: self._emitted]
        if parsed.content.startswith(streamed):
            parsed.content = parsed.content[len(streamed) :]
        return parsed

    @property
    def text(self) -> str:
        return self._text


def _partial_tag_length(text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``<tool_call>``."""
    for size in range(min(len(OPEN_TAG) - 1, len(text)), 0, -1):
        if OPEN_TAG.startswith(text[-size:]):
            return size
    return 0
