"""LlamaIndex chat messages -> the engine's role/content dicts (rendered by the base chat template)."""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.base.llms.types import CachePoint, ChatMessage, MessageRole, TextBlock, ThinkingBlock
from qaflora.errors import ChatTemplateError

_ROLES: dict[MessageRole, str] = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex messages -> the engine's ``{"role", "content"}`` dicts.

    Text blocks are joined; cache points (a provider hint) and thinking blocks (the
    reasoning of an earlier turn, which chat templates do not replay) are dropped;
    any other block (images, audio, documents, tool calls) raises, because silently
    dropping it would answer a different question than the one asked.
    """
    converted = []
    for index, message in enumerate(messages):
        parts: list[str] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif not isinstance(block, CachePoint | ThinkingBlock):
                raise ChatTemplateError(
                    f"message {index} has a {type(block).__name__}; a text model's chat template "
                    "can only render text blocks"
                )
        converted.append({"role": _ROLES.get(message.role, "user"), "content": "\n".join(parts)})
    return converted
