"""LangChain messages -> the chat dicts the base tokenizer's chat template renders.

The fused model must be prompted exactly as its base (and so its adapters) was
trained, so nothing here invents a prompt format: roles map onto the template's
roles and the template does the rest. What the template cannot express
(images, audio, unknown roles) raises a :class:`~qaflora.errors.ChatTemplateError`
naming the message, instead of being silently dropped from the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from qaflora.errors import ChatTemplateError
from qaflora.toolcalls import format_tool_call

_CHAT_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
}
_TEXT_BLOCKS = {"text", "input_text", "output_text"}
# Parts of an AI message that are rendered from ``AIMessage.tool_calls`` (or carry no prompt text).
_SKIPPED_AI_BLOCKS = {"tool_use", "tool_call", "tool_call_chunk", "server_tool_call", "reasoning", "thinking"}


def to_chat_messages(messages: Sequence[BaseMessage], *, structured_tool_calls: bool) -> list[dict[str, Any]]:
    """Convert LangChain messages to ``[{"role": ..., "content": ...}, ...]``.

    ``structured_tool_calls``: whether the template renders ``message.tool_calls``
    itself (Qwen2.5, Llama 3.1, ...). If it does not, an AI message's tool calls
    are written into its content in the Hermes format the model is asked to use,
    so the model still sees what it called before reading the tool's answer.
    """
    return [_convert(m, index, structured_tool_calls) for index, m in enumerate(messages)]


def _convert(message: BaseMessage, index: int, structured_tool_calls: bool) -> dict[str, Any]:
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": _text(message, index)}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": _text(message, index)}
    if isinstance(message, AIMessage):
        return _assistant(message, index, structured_tool_calls)
    if isinstance(message, ToolMessage):
        content = _text(message, index)
        if message.status == "error" and not content.lower().startswith("error"):
            content = f"Error: {content}"
        out: dict[str, Any] = {"role": "tool", "content": content, "tool_call_id": message.tool_call_id}
        if message.name:
            out["name"] = message.name
        return out
    if isinstance(message, ChatMessage):
        role = _CHAT_ROLES.get(message.role.lower())
        if role is None:
            raise ChatTemplateError(
                f"message {index} has role {message.role!r}; the chat template expresses "
                f"{sorted(set(_CHAT_ROLES.values()))}"
            )
        return {"role": role, "content": _text(message, index)}
    if isinstance(message, FunctionMessage):
        raise ChatTemplateError(
            f"message {index} is a legacy FunctionMessage; send the function's result as a ToolMessage"
        )
    raise ChatTemplateError(
        f"message {index} is a {type(message).__name__}, which the chat template cannot express"
    )


def _assistant(message: AIMessage, index: int, structured_tool_calls: bool) -> dict[str, Any]:
    content = _text(message, index, skip=_SKIPPED_AI_BLOCKS)
    if not message.tool_calls:
        return {"role": "assistant", "content": content}
    if structured_tool_calls:
        calls = [
            {
                "id": call.get("id"),
                "type": "function",
                "function": {"name": call["name"], "arguments": call["args"]},
            }
            for call in message.tool_calls
        ]
        return {"role": "assistant", "content": content, "tool_calls": calls}
    rendered = "".join(format_tool_call(c["name"], c["args"]) for c in message.tool_calls)
    return {"role": "assistant", "content": f"{content}\n{rendered}" if content else rendered}


def _text(message: BaseMessage, index: int, skip: set[str] | None = None) -> str:
    """The message's text; list content keeps its text blocks and rejects media."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type")
        if kind in _TEXT_BLOCKS:
            parts.append(str(block.get("text", "")))
        elif skip and kind in skip:
            continue
        else:
            raise ChatTemplateError(
                f"message {index} ({type(message).__name__}) has a {kind!r} content block; "
                "the base model's chat template renders text only"
            )
    return "".join(parts)


def template_renders_tool_calls(chat_template: str | dict[str, str] | None) -> bool:
    """Whether the template reads ``message.tool_calls`` (else calls are inlined as text)."""
    if isinstance(chat_template, dict):
        return any("tool_calls" in t for t in chat_template.values())
    return bool(chat_template) and "tool_calls" in chat_template
