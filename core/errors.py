"""Exceptions raised by qaflora.

Every error a user can cause has its own type, so callers (and the LangChain /
LlamaIndex wrappers) can tell "your adapter is broken" from "your prompt is too
long" without parsing messages. All derive from :class:`QaFloraError`; the ones
that are about a bad argument also derive from :class:`ValueError`, so code
written against the standard library's conventions keeps working.
"""

from __future__ import annotations


class QaFloraError(Exception):
    """Base class of every error raised on purpose by qaflora."""


class CatalogError(QaFloraError, ValueError):
    """The adapter catalog itself is malformed (empty, duplicate names, unreadable file)."""


class AdapterError(QaFloraError):
    """An adapter cannot be used; the message names the adapter and the cause."""

    def __init__(self, adapter: str, cause: str) -> None:
        self.adapter = adapter
        self.cause = cause
        super().__init__(f"adapter {adapter!r}: {cause}")


class AdapterNotFoundError(AdapterError, FileNotFoundError):
    """The adapter directory or one of its files does not exist."""


class AdapterFormatError(AdapterError, ValueError):
    """The adapter files exist but are not a PEFT LoRA adapter we can read."""


class AdapterMismatchError(AdapterError, ValueError):
    """The adapter was trained for another base model (name or tensor shapes differ)."""


class BaseModelMismatchWarning(UserWarning):
    """An adapter names another base model than the loaded one, and its tensor shapes fit.

    Raised as :class:`AdapterMismatchError` instead when loading with ``strict_base=True``.
    """


class UnsupportedAdapterError(AdapterError, ValueError):
    """A valid PEFT adapter using a feature the fused path cannot express (DoRA, embeddings...)."""


class UnknownAdapterError(QaFloraError, KeyError):
    """A request names an adapter that is not in the loaded catalog."""

    def __init__(self, names: list[str], known: list[str]) -> None:
        self.names = names
        self.known = known
        super().__init__(f"unknown adapter(s) {names}; loaded adapters are {known}")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return self.args[0]


class ConfigError(QaFloraError, ValueError):
    """A fusion or generation option is invalid (unknown mode, bad oracle weights...)."""


class PromptError(QaFloraError, ValueError):
    """The query cannot be turned into model input."""


class EmptyPromptError(PromptError):
    """The query is empty or only whitespace."""


class ChatTemplateError(PromptError):
    """The messages cannot be expressed by the tokenizer's chat template."""


class ContextLengthError(PromptError):
    """The prompt does not fit into the model's context window."""

    def __init__(self, prompt_tokens: int, context_window: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window
        super().__init__(
            f"prompt has {prompt_tokens} tokens but the model's context window is "
            f"{context_window} tokens (leave room for at least one generated token)"
        )


class DivergenceError(QaFloraError, ArithmeticError):
    """A divergence came out NaN or infinite, so no fusion weight can be derived from it."""

    def __init__(self, adapters: list[str], layers: list[int]) -> None:
        self.adapters = adapters
        self.layers = layers
        super().__init__(
            f"non-finite divergence for adapter(s) {adapters} at layer(s) {layers}: "
            "the model produced NaN/inf hidden states (corrupt adapter weights or an "
            "overflowing dtype); exclude the adapter or use float32"
        )


class RequestTimeoutError(QaFloraError, TimeoutError):
    """A request took longer than its ``timeout``; it was cancelled and the engine moved on."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        super().__init__(f"the request exceeded its timeout of {timeout} s and was cancelled")


class EngineClosedError(QaFloraError, RuntimeError):
    """The engine was closed and accepts no more requests."""
