"""Turn a query (plain text or chat messages) into the token ids the model sees.

Chat messages go through the base tokenizer's own chat template, so the fused
model is prompted exactly as its adapters were trained. Consecutive messages of
the same role are merged first: many templates reject "user, user", while
chat frameworks (LangChain's standard tests among them) send such sequences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from .errors import ChatTemplateError, ContextLengthError, EmptyPromptError

Message = Mapping[str, Any]
Query = str | Sequence[Message]

# Used only when the tokenizer has no chat template of its own (e.g. GPT-2 bases).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_KNOWN_ROLES = {"system", "user", "assistant", "tool"}


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt ready for the model."""

    text: str
    ids: list[int]
    offers_tools: bool = False
    """The chat template showed tools to the model (``tools=`` was given and not empty): the
    answer may be a tool call, which the ``tools_hint`` of ``policy="relevant"`` looks at."""

    def __len__(self) -> int:
        return len(self.ids)


def normalize_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Validate roles and merge consecutive messages of the same role."""
    merged: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ChatTemplateError(f"message {index} is not a mapping with a 'role': {message!r}")
        role = str(message["role"])
        if role not in _KNOWN_ROLES:
            raise ChatTemplateError(
                f"message {index} has role {role!r}; chat templates express {sorted(_KNOWN_ROLES)}"
            )
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ChatTemplateError(
                f"message {index} has non-text content ({type(content).__name__}); "
                "only text messages can be rendered by a text model's chat template"
            )
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        if merged and merged[-1]["role"] == role and role != "tool" and not extra:
            merged[-1]["content"] = f"{merged[-1]['content']}\n\n{content}".strip("\n")
        else:
            merged.append({"role": role, "content": content, **extra})
    return merged


class PromptFormatter:
    """Encodes queries for one tokenizer and checks them against the context window."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context_window: int | None) -> None:
        self.tokenizer = tokenizer
        self.context_window = context_window
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def encode(
        self,
        query: Query,
        *,
        formatted: bool = False,
        tools: list[dict[str, Any]] | None = None,
        assistant_prefix: str | None = None,
    ) -> EncodedPrompt:
        """Encode ``query``.

        A string is sent through the chat template as one user message, unless
        ``formatted=True`` (then it is tokenised as is, for callers that already
        applied a prompt format, like LlamaIndex's ``complete(formatted=True)``).
        ``assistant_prefix`` is appended after the generation prompt: the answer starts
        with it (used to force a tool-call block or a JSON object).
        """
        if isinstance(query, str):
            if not query.strip():
                raise EmptyPromptError("the query is empty")
            if formatted:
                text = query + (assistant_prefix or "")
                ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
                return self._checked(EncodedPrompt(text=text, ids=list(ids)))
            query = [{"role": "user", "content": query}]
        messages = normalize_messages(list(query))
        if not messages or not any(
            str(m.get("content", "")).strip() or m.get("tool_calls") for m in messages
        ):
            raise EmptyPromptError("the conversation has no message with content")
        text = self._render(messages, tools) + (assistant_prefix or "")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._checked(EncodedPrompt(text=text, ids=list(ids), offers_tools=bool(tools)))

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if not self.has_chat_template:
            kwargs["chat_template"] = FALLBACK_CHAT_TEMPLATE
        if tools:
            kwargs["tools"] = tools
        try:
            text = self.tokenizer.apply_chat_template(messages, **kwargs)
        except Exception as exc:  # jinja2 raises TemplateError / its own exceptions
            raise ChatTemplateError(
                f"the tokenizer's chat template cannot render these messages "
                f"(roles {[m['role'] for m in messages]}): {exc}"
            ) from exc
        if not isinstance(text, str):
            raise ChatTemplateError("the chat template did not return text")
        return text

    def _checked(self, prompt: EncodedPrompt) -> EncodedPrompt:
        if not prompt.ids:
            raise EmptyPromptError("the query encodes to zero tokens")
        if self.context_window is not None and len(prompt.ids) >= self.context_window:
            raise ContextLengthError(len(prompt.ids), self.context_window)
        return prompt
