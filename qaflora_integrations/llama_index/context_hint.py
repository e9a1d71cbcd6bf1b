"""Tell the fusion a request carries retrieved context, when LlamaIndex's own call says so.

A query engine's response synthesizer does not send "a prompt": it calls
``llm.predict(text_qa_template, context_str=..., query_str=...)`` (``refine_template`` with
``context_msg`` for later chunks). That keyword is the one structural sign an LLM gets that the
prompt holds retrieved text, the way ``tools=`` says a chat request offers tools. ``QaFloraLLM``
reads it in ``predict``/``stream`` and their async twins and asks the fusion policy to keep the
catalog's ``kind="reading"`` adapters (``FusionConfig.hint_kinds``): a reading adapter trained on
English passages barely moves the next token of a passage in another language, so the data-free
weighing alone can leave it out of the answer that needs it (benchmarks/POLICY.md).

A context variable carries the hint from ``predict`` down to the ``chat``/``complete`` call it
makes: per call, per thread and per asyncio task, so concurrent queries never see each other's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from llama_index.core.prompts import BasePromptTemplate

RETRIEVED_CONTEXT_ARGS = ("context_str", "context_msg")
"""Template variables LlamaIndex's synthesizers fill with retrieved text (QA and refine templates)."""

READING_KIND = "reading"

_hint_kinds: ContextVar[tuple[str, ...]] = ContextVar("qaflora_llama_index_hint_kinds", default=())


def carries_retrieved_context(prompt: BasePromptTemplate, prompt_args: Mapping[str, Any]) -> bool:
    """Whether this template call puts non-empty retrieved text into the prompt."""
    values = {**(prompt.kwargs or {}), **prompt_args}
    return any(str(values.get(name) or "").strip() for name in RETRIEVED_CONTEXT_ARGS)


@contextmanager
def hinting(kinds: tuple[str, ...]) -> Iterator[None]:
    """Within the block, requests of this context ask for ``kinds`` on top of their own hints."""
    token = _hint_kinds.set(tuple(dict.fromkeys((*_hint_kinds.get(), *kinds))))
    try:
        yield
    finally:
        _hint_kinds.reset(token)


def with_hints(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the active hints merged into its ``hint_kinds`` (none active: unchanged)."""
    active = _hint_kinds.get()
    if not active:
        return options
    own = tuple(options.get("hint_kinds") or ())
    return {**options, "hint_kinds": tuple(dict.fromkeys((*own, *active)))}
