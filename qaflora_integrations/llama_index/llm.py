"""``QaFloraLLM``: a FusionEngine as a LlamaIndex ``CustomLLM`` (see the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Generator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.program.utils import FlexibleModel
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.types import TokenAsyncGen, TokenGen
from pydantic import BaseModel
from qaflora import AdapterCatalog, FusionEngine
from qaflora.config import GENERATION_FIELDS, OutputConstraint
from qaflora.errors import ConfigError
from qaflora.prompting import Query

from .context_hint import READING_KIND, carries_retrieved_context, hinting, with_hints
from .engines import load_engine
from .messages import to_engine_messages
from .responses import (
    astream_chats,
    astream_completions,
    chat_response,
    completion_response,
    stream_chats,
    stream_completions,
)

logger = logging.getLogger(__name__)

_FUSION_FIELDS_OF_LLM = ("mode", "top_k", "adapters")
Model = TypeVar("Model", bound=BaseModel)


class QaFloraLLM(CustomLLM):
    """A base LM plus a LoRA catalog, fused per query and per layer, as a LlamaIndex LLM.

    Build it from an engine (``QaFloraLLM(engine)``) or from paths
    (``QaFloraLLM(base_path=..., catalog=...)``; engines are cached, so building
    twice does not reload weights).

    ``complete(prompt)`` sends the prompt as ONE user message through the base
    tokenizer's chat template (with ``system_prompt`` as a system message if set):
    the adapters of a chat model were trained on chat-formatted text, and raw text
    would be out of distribution. ``complete(prompt, formatted=True)`` sends the
    prompt untouched. If you pass your own ``messages_to_prompt`` /
    ``completion_to_prompt``, they are used instead of the chat template.

    Option precedence per request: engine defaults < instance fields
    (``generate_kwargs``, ``fusion_kwargs``, ``max_new_tokens``, ``temperature``, ``stop``,
    ``mode``, ``top_k``, ``adapters``, ``timeout``) < kwargs of the call. Note ``top_k`` is qaflora's
    number of adapters kept by LoGo preselection, not a sampling top-k.
    """

    model_name: str = Field(default="qaflora", description="Model name reported in metadata.")
    base_path: str | None = Field(default=None, description="Base model directory (when built from paths).")
    catalog: str | None = Field(default=None, description="Catalog file (when built from a path).")
    context_window: int = Field(
        default=DEFAULT_CONTEXT_WINDOW, gt=0, description="Tokens the model can attend to (prompt + answer)."
    )
    max_new_tokens: int = Field(default=128, gt=0, description="Maximum number of tokens to generate.")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0 is greedy.")
    stop: list[str] | None = Field(default=None, description="Stop strings (cut from the answer).")
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Other generation options (top_p, seed)."
    )
    fusion_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Fusion options (divergence, preselect, oracle_weights...)."
    )
    mode: str | None = Field(default=None, description="Fusion mode (qaflora, static, base, single...).")
    top_k: int | None = Field(default=None, ge=1, description="Adapters kept by LoGo preselection.")
    adapters: list[str] | None = Field(default=None, description="Candidate adapters (None: all).")
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds per request before it is cancelled (None: no limit)."
    )
    is_chat_model: bool = Field(
        default=True,
        description="True: LlamaIndex's predict() sends messages to chat() (and the chat template).",
    )
    reading_hint: bool = Field(
        default=True,
        description="When a query engine formats retrieved context into its prompt (context_str), ask the "
        "fusion to keep the catalog's kind='reading' adapters (FusionConfig.hint_kinds); a catalog "
        "without them is unaffected.",
    )

    _engine: FusionEngine = PrivateAttr()
    _custom_messages_to_prompt: bool = PrivateAttr(default=False)
    _custom_completion_to_prompt: bool = PrivateAttr(default=False)

    def __init__(
        self,
        engine: FusionEngine | None = None,
        *,
        base_path: str | Path | None = None,
        catalog: AdapterCatalog | str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        context_window: int | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: str | list[str] | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        fusion_kwargs: dict[str, Any] | None = None,
        model_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if engine is None:
            if catalog is None:
                raise ConfigError("QaFloraLLM needs an engine, or a catalog (and base_path)")
            engine = load_engine(base_path, catalog, device=device, dtype=dtype)
        generation = dict(generate_kwargs or {})
        temperature = _take("temperature", temperature, generation)
        max_new_tokens = _take("max_new_tokens", max_new_tokens, generation)
        stop = _take("stop", stop, generation)
        _check_generate_kwargs(generation)
        window = _context_window(engine, context_window)
        if max_new_tokens is None:
            # A quarter of the window at most: tiny models (context 128-256) must keep room
            # for the retrieved context of a RAG prompt.
            max_new_tokens = min(engine.generation.max_new_tokens, max(1, window // 4))
        if max_new_tokens >= window:
            raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room in the {window}-token window")
        custom_messages = kwargs.get("messages_to_prompt") is not None
        custom_completion = kwargs.get("completion_to_prompt") is not None
        super().__init__(
            model_name=model_name or engine.model_name,
            base_path=str(base_path) if base_path is not None else engine.loaded.base_path,
            catalog=str(catalog) if isinstance(catalog, str | Path) else None,
            context_window=window,
            max_new_tokens=max_new_tokens,
            temperature=temperature if temperature is not None else (engine.generation.temperature or 0.0),
            stop=[stop] if isinstance(stop, str) else stop,
            generate_kwargs=generation,
            fusion_kwargs=dict(fusion_kwargs or {}),
            **kwargs,
        )
        self._engine = engine
        self._custom_messages_to_prompt = custom_messages
        self._custom_completion_to_prompt = custom_completion
        engine.resolve_options(**self._options({}))  # a bad option fails now, not at the first query

    @classmethod
    def class_name(cls) -> str:
        return "QaFloraLLM"

    # ------------------------------------------------------------------ introspection
    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=self.is_chat_model,
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    @property
    def engine(self) -> FusionEngine:
        return self._engine

    @property
    def tokenizer(self) -> Any:
        """The base tokenizer (``Settings.tokenizer = llm.tokenizer`` makes LlamaIndex count right)."""
        return self._engine.tokenizer

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens.

        A ``Callable[[str], list]`` for LlamaIndex's ``PromptHelper(tokenizer=...)`` and
        ``SentenceSplitter(tokenizer=...)``: its default (tiktoken) counts far fewer tokens
        than a small model's tokenizer, so prompts would overflow the context window.
        """
        return list(self._engine.tokenizer.encode(text, add_special_tokens=False, verbose=False))

    def to_payload(self) -> dict[str, Any]:
        """Observability payload: metadata plus the effective fusion settings (JSON-safe)."""
        fusion, _ = self._engine.resolve_options(**self._options({}))
        return {**super().to_payload(), "fusion": fusion.model_dump(mode="json")}

    # ------------------------------------------------------------------ prompt templates
    # LlamaIndex's query engines call these with the retrieved text as a template argument;
    # they only add the reading hint around the parent's own implementation (context_hint.py).
    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        with self._context_hint(prompt, prompt_args):
            return super().predict(prompt, **prompt_args)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        with self._context_hint(prompt, prompt_args):  # the request is submitted before this returns
            return super().stream(prompt, **prompt_args)

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        with self._context_hint(prompt, prompt_args):
            return await super().apredict(prompt, **prompt_args)

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        with self._context_hint(prompt, prompt_args):
            return await super().astream(prompt, **prompt_args)

    # ------------------------------------------------------------------ structured output
    # LlamaIndex's programs (structured_predict, as_structured_llm, a query engine's output_cls)
    # ask the model for JSON and parse what it writes; a small model often writes none. These
    # only add a grammar to the parent's own implementation: the answer is JSON valid under the
    # output class's schema (llguidance), so the parser always finds it.
    def structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **args: Any,
    ) -> Model:
        return super().structured_predict(
            output_cls, prompt, self._schema_kwargs(output_cls, llm_kwargs), **args
        )

    async def astructured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **args: Any,
    ) -> Model:
        kwargs = self._schema_kwargs(output_cls, llm_kwargs)
        return await super().astructured_predict(output_cls, prompt, kwargs, **args)

    def stream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **args: Any,
    ) -> Generator[Model | FlexibleModel, None, None]:
        kwargs = self._schema_kwargs(output_cls, llm_kwargs)
        return super().stream_structured_predict(output_cls, prompt, kwargs, **args)

    async def astream_structured_predict(
        self,
        output_cls: type[Model],
        prompt: PromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **args: Any,
    ) -> AsyncGenerator[Model | FlexibleModel, None]:
        kwargs = self._schema_kwargs(output_cls, llm_kwargs)
        return await super().astream_structured_predict(output_cls, prompt, kwargs, **args)

    def _schema_kwargs(
        self, output_cls: type[BaseModel], llm_kwargs: dict[str, Any] | None
    ) -> dict[str, Any]:
        """``llm_kwargs`` plus the schema's grammar, unless the caller gave a constraint or the
        tokenizer cannot be constrained (the demo zoo's word-level one: parsed as LlamaIndex does)."""
        kwargs = dict(llm_kwargs or {})
        if "constraint" not in kwargs and self._engine.supports_constraints:
            kwargs["constraint"] = OutputConstraint(
                type="json_schema", json_schema=output_cls.model_json_schema()
            )
        return kwargs

    # ------------------------------------------------------------------ completion
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        query, raw = self._completion_query(prompt, formatted)
        return completion_response(self._engine.generate(query, formatted=raw, **self._request(kwargs)))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        query, raw = self._completion_query(prompt, formatted)
        options = self._validated(query, raw, kwargs)
        return stream_completions(self._engine.stream(query, formatted=raw, **options))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        query, raw = self._completion_query(prompt, formatted)
        result = await self._engine.agenerate(query, formatted=raw, **self._request(kwargs))
        return completion_response(result)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        query, raw = self._completion_query(prompt, formatted)
        options = self._validated(query, raw, kwargs)
        return astream_completions(self._engine.astream(query, formatted=raw, **options))

    # ------------------------------------------------------------------ chat
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        query, raw = self._chat_query(messages)
        return chat_response(self._engine.generate(query, formatted=raw, **self._request(kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        query, raw = self._chat_query(messages)
        options = self._validated(query, raw, kwargs)
        return stream_chats(self._engine.stream(query, formatted=raw, **options))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        query, raw = self._chat_query(messages)
        result = await self._engine.agenerate(query, formatted=raw, **self._request(kwargs))
        return chat_response(result)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        query, raw = self._chat_query(messages)
        options = self._validated(query, raw, kwargs)
        return astream_chats(self._engine.astream(query, formatted=raw, **options))

    # ------------------------------------------------------------------ internals
    def _context_hint(
        self, prompt: BasePromptTemplate, prompt_args: dict[str, Any]
    ) -> AbstractContextManager[None]:
        wanted = self.reading_hint and carries_retrieved_context(prompt, prompt_args)
        return hinting((READING_KIND,) if wanted else ())

    def _completion_query(self, prompt: str, formatted: bool) -> tuple[Query, bool]:
        """(query for the engine, whether it is already formatted text)."""
        if formatted:
            return prompt, True
        if self._custom_completion_to_prompt:
            return self.completion_to_prompt(prompt), True
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*messages, {"role": "user", "content": prompt}], False

    def _chat_query(self, messages: Sequence[ChatMessage]) -> tuple[Query, bool]:
        # No system_prompt here: LLM.predict() already adds it to the messages it sends.
        if self._custom_messages_to_prompt:
            return self.messages_to_prompt(messages), True
        return to_engine_messages(messages), False

    def _options(self, call_kwargs: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = dict(self.fusion_kwargs)
        options.update({k: getattr(self, k) for k in _FUSION_FIELDS_OF_LLM if getattr(self, k) is not None})
        options.update(self.generate_kwargs)
        options.update(max_new_tokens=self.max_new_tokens, temperature=self.temperature, stop=self.stop)
        options.update(call_kwargs)
        return with_hints(options)

    def _request(self, call_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine kwargs of one call: the merged options plus the request timeout."""
        kwargs = dict(call_kwargs)
        timeout = kwargs.pop("timeout", None)
        return {**self._options(kwargs), "timeout": timeout if timeout is not None else self.timeout}

    def _validated(self, query: Query, formatted: bool, call_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Raise bad input at call time: a streaming generator would only raise when iterated."""
        request = self._request(call_kwargs)
        self._engine.resolve_options(**{k: v for k, v in request.items() if k != "timeout"})
        self._engine.encode(query, formatted=formatted)
        return request


def _take(name: str, explicit: Any, generate_kwargs: dict[str, Any]) -> Any:
    """An option given as a field or inside generate_kwargs (HuggingFaceLLM style), not both."""
    in_kwargs = generate_kwargs.pop(name, None)
    if explicit is not None and in_kwargs is not None and explicit != in_kwargs:
        raise ConfigError(f"{name} given twice ({explicit!r} and generate_kwargs[{name!r}]={in_kwargs!r})")
    return explicit if explicit is not None else in_kwargs


def _check_generate_kwargs(generate_kwargs: dict[str, Any]) -> None:
    unknown = set(generate_kwargs) - GENERATION_FIELDS
    if unknown:
        hint = ""
        if "top_k" in unknown:
            hint = " ('top_k' is a fusion option in qaflora: the number of adapters kept; use fusion_kwargs)"
        raise ConfigError(
            f"unsupported generate_kwargs {sorted(unknown)}{hint}; supported: {sorted(GENERATION_FIELDS)}"
        )


def _context_window(engine: FusionEngine, requested: int | None) -> int:
    """The window to report; never more than the model's, so LlamaIndex packs prompts that fit."""
    model_window = engine.context_window
    if requested is None:
        return model_window or DEFAULT_CONTEXT_WINDOW
    if model_window is not None and requested > model_window:
        logger.warning(
            "context_window=%d is larger than the model's %d tokens; using %d",
            requested,
            model_window,
            model_window,
        )
        return model_window
    return requested
