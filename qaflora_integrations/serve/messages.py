"""OpenAI chat messages -> the dicts the base tokenizer's chat template renders.

The same shape the LangChain wrapper produces (:mod:`qaflora_integrations.langchain.messages`),
so a conversation reaches the model identically whichever front end it came through:
an assistant's ``tool_calls`` become structured calls (arguments as a dict) when the
template renders ``message.tool_calls``, and Hermes ``<tool_call>`` text in the
content otherwise; a ``tool`` message keeps its ``tool_call_id`` and gains the name
of the tool it answers. What a text template cannot show (images, audio, files) is
rejected naming the message, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from qaflora.toolcalls import format_tool_call

from .errors import APIError, invalid
from .protocol import ChatMessage, ContentPart

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_TEXT_PARTS = {"text", "input_text", "output_text"}


def template_renders_tool_calls(chat_template: str | dict[str, str] | None) -> bool:
    """Whether the template reads ``message.tool_calls`` (else calls are written into the content)."""
    if isinstance(chat_template, dict):
        return any("tool_calls" in t for t in chat_template.values())
    return bool(chat_template) and "tool_calls" in chat_template


def to_chat_messages(messages: Sequence[ChatMessage], *, structured_tool_calls: bool) -> list[dict[str, Any]]:
    """Convert the request's messages; raises :class:`APIError` (400) naming a message it cannot render."""
    call_names: dict[str, str] = {}
    converted = []
    for index, message in enumerate(messages):
        content = _text(message.content, index)
        role = _ROLES[message.role]
        if role == "assistant" and message.tool_calls:
            converted.append(_assistant(message, content, index, structured_tool_calls, call_names))
        elif role == "tool":
            out: dict[str, Any] = {"role": "tool", "content": content, "tool_call_id": message.tool_call_id}
            name = message.name or call_names.get(message.tool_call_id or "")
            if name:
                out["name"] = name
            converted.append(out)
        else:
            converted.append({"role": role, "content": content})
    return converted


def _assistant(
    message: ChatMessage,
    content: str,
    index: int,
    structured: bool,
    call_names: dict[str, str],
) -> dict[str, Any]:
    calls = []
    for position, call in enumerate(message.tool_calls or []):
        try:
            arguments = json.loads(call.function.arguments) if call.function.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise invalid(
                f"messages[{index}].tool_calls[{position}].function.arguments is not JSON: {exc}",
                param=f"messages.{index}.tool_calls.{position}.function.arguments",
            ) from None
        call_names[call.id] = call.function.name
        calls.append((call.id, call.function.name, arguments))
    if structured:
        return {
            "role": "assistant",
            "content": content,
            "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls
            ],
        }
    rendered = "".join(format_tool_call(name, args) for _, name, args in calls)
    return {"role": "assistant", "content": f"{content}\n{rendered}" if content else rendered}


def _text(content: str | list[ContentPart] | None, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for position, part in enumerate(content):
        if part.type not in _TEXT_PARTS:
            raise APIError(
                f"messages[{index}].content[{position}] is a {part.type!r} part; this model's chat "
                "template renders text only",
                param=f"messages.{index}.content.{position}.type",
            )
        parts.append(part.text or "")
    return "".join(parts)
