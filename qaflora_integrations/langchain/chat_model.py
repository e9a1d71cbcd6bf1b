"""``ChatQaFlora``: a qaflora FusionEngine as a LangChain chat model.

Every call is fused for its own query: the engine weighs the adapters per
request and per layer, and the answer's ``response_metadata`` says which
adapters took part and with which per-layer weights, so a trace explains the
answer. Sync calls use the engine's blocking API, async calls its asyncio API
(the event loop never waits on the model), and concurrent calls from
``batch``/``abatch`` are gathered by the engine into shared forward passes,
each with its own weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, ModelProfile
from langchain_core.language_models.base import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils import from_env
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, model_validator
from qaflora import AdapterCatalog, FusionEngine, FusionResult
from qaflora.errors import ContextLengthError, EmptyPromptError

from .engines import shared_engine
from .messages import template_renders_tool_calls, to_chat_messages
from .requests import Request, build_request
from .responses import PROVIDER, ai_message, last_chunk, text_chunk
from .tools import ParsedOutput, ToolCallStreamSplitter, normalize_tool_choice, template_supports_tools

# Remote-provider settings that generic LangChain code (``init_chat_model`` configs,
# LangChain's standard tests) passes to every chat model. They have no meaning
# for a model in this process, so they are accepted and dropped rather than
# stored as fields that look like they do something.
_REMOTE_ONLY_PARAMS = ("api_key", "max_retries")


class ChatQaFlora(BaseChatModel):
    """A base LM plus a catalog of LoRA adapters, fused per query and per layer (qa-FLoRA).

    Build it around an engine you already have, or from paths (the weights are
    loaded once per process and shared by every instance built from the same paths)::

        llm = ChatQaFlora(engine=engine)
        llm = ChatQaFlora(catalog="zoo/catalog.yaml")             # base from the catalog's base_model
        llm = ChatQaFlora(base_path="my-base", catalog="adapters.yaml", mode="qaflora", top_k=2)
        llm = ChatQaFlora()            # paths from QAFLORA_CATALOG / QAFLORA_BASE_PATH

    Generation options (``max_tokens``, ``temperature`` (0 = greedy), ``top_p``,
    ``seed``, ``stop``) and fusion options (``mode``, ``top_k``, ``adapters``, and
    any other :class:`qaflora.FusionConfig` field through ``fusion_kwargs`` or per
    call) can be overridden per call with ``.bind(...)`` or ``invoke(..., **kwargs)``.
    """

    model_config = ConfigDict(
        populate_by_name=True, protected_namespaces=(), extra="forbid", arbitrary_types_allowed=True
    )

    engine: FusionEngine | None = Field(default=None, exclude=True, repr=False)
    """A loaded engine to use (shared, never closed by this model)."""
    base_path: str | None = Field(default_factory=from_env("QAFLORA_BASE_PATH", default=None))
    """Base model directory (env ``QAFLORA_BASE_PATH``); defaults to the catalog's ``base_model``."""
    catalog: str | Path | AdapterCatalog | None = Field(
        default_factory=from_env("QAFLORA_CATALOG", default=None)
    )
    """Adapter catalog: a YAML/JSON file (env ``QAFLORA_CATALOG``) or an :class:`AdapterCatalog`."""
    device: str | None = None
    dtype: str | None = None
    model_name: str | None = Field(default=None, alias="model")
    """Name reported to traces; defaults to the engine's model name (the base's directory name)."""

    max_tokens: int | None = Field(default=None, ge=1)
    """Maximum number of generated tokens (the engine's default when None)."""
    temperature: float | None = Field(default=None, ge=0.0)
    """Sampling temperature; 0 (the engine's default) means greedy decoding."""
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | None = None
    """Stop strings; they are cut from the answer and never streamed."""
    timeout: float | None = Field(default=None, gt=0.0)
    """Seconds a call may take; exceeded -> ``TimeoutError`` and the request is cancelled."""
    streaming: bool = False
    """Route ``invoke`` through the streaming path (so streaming callbacks see tokens)."""

    mode: str | None = None
    """Fusion mode: qaflora, static, base, single, oracle, logo (the engine's default when None)."""
    top_k: int | None = Field(default=None, ge=1)
    """Keep only the k adapters with the strongest LoGo signal before weighing."""
    adapters: list[str] | None = None
    """Restrict the candidate adapters (None: every enabled adapter)."""
    fusion_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Any other :class:`qaflora.FusionConfig` field (``divergence``, ``oracle_weights``, ...)."""

    # ------------------------------------------------------------------ construction
    @model_validator(mode="before")
    @classmethod
    def _drop_remote_only_params(cls, values: Any) -> Any:
        if isinstance(values, dict) and any(k in values for k in _REMOTE_ONLY_PARAMS):
            values = {k: v for k, v in values.items() if k not in _REMOTE_ONLY_PARAMS}
        return values

    @model_validator(mode="after")
    def _attach_engine(self) -> ChatQaFlora:
        """Resolve the engine (shared per paths) and check the default options against it now,
        so a misspelt mode or an unknown adapter fails at construction, not at the first call."""
        if self.engine is None:
            if self.catalog is None:
                raise ValueError("ChatQaFlora needs engine=..., or catalog=... (and base_path=...)")
            base = self.base_path or _catalog_base(self.catalog)
            if base is None:
                raise ValueError("base_path is required: the catalog names no base_model")
            self.engine = shared_engine(base, self.catalog, device=self.device, dtype=self.dtype)
        elif {"base_path", "catalog"} & self.model_fields_set:
            raise ValueError("pass either engine=... or base_path/catalog, not both")
        else:  # an explicit engine wins over paths taken from the environment
            self.base_path = self.catalog = None
        if self.model_name is None:
            self.model_name = self.engine.model_name
        self.engine.resolve_options(**self._default_options())
        if self.profile is None:
            self.profile = self._resolve_model_profile()
        return self

    def _resolve_model_profile(self) -> ModelProfile | None:
        if self.engine is None:
            return None
        profile = ModelProfile(
            name=self.model_name or self.engine.model_name,
            open_weights=True,
            text_inputs=True,
            text_outputs=True,
            image_inputs=False,
            audio_inputs=False,
            video_inputs=False,
            pdf_inputs=False,
            tool_calling=self.supports_tools,
            tool_choice=self.supports_tools,
            structured_output=self.supports_tools,
            temperature=True,
        )
        if self.engine.context_window is not None:
            profile["max_input_tokens"] = self.engine.context_window
        return profile

    # ------------------------------------------------------------------ LangChain identity
    @property
    def _llm_type(self) -> str:
        return "qaflora-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "catalog_adapters": self._engine.adapter_names,
            **self._default_options(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs.get("model") or self.model_name or "",
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop := stop or kwargs.get("stop") or self.stop:
            params["ls_stop"] = stop
        return params

    @property
    def supports_tools(self) -> bool:
        """Whether the base tokenizer's chat template can show tools to the model."""
        return template_supports_tools(getattr(self._engine.tokenizer, "chat_template", None))

    # ------------------------------------------------------------------ tools
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Any],
        *,
        tool_choice: dict | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: they are rendered by the chat template's ``tools`` section, and
        ``<tool_call>{json}</tool_call>`` in the output becomes ``AIMessage.tool_calls``.

        ``tool_choice``: ``"auto"``/None, ``"none"`` (tools not shown), ``"any"``/
        ``"required"``/True, or a tool name. The engine's grammar-constrained decoding
        enforces it: a forced choice answers with exactly one call, valid under that tool's
        parameters; under ``"auto"`` the model may write text, but a call it opens is valid.
        """
        if not self.supports_tools:
            raise ValueError(
                f"the chat template of {self.model_name!r} has no tools section, so the model "
                "cannot be shown tools; use a base whose template supports tools"
            )
        formatted = [convert_to_openai_tool(t) for t in tools]
        normalize_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])  # fail early
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers as ``schema`` (a pydantic class, a TypedDict or a JSON schema dict).

        ``method``: ``"function_calling"`` (the default: a forced call to a tool named after
        the schema, for models trained to call tools), ``"json_schema"`` (the answer is one JSON
        value valid under the schema) or ``"json_mode"`` (a JSON object; with a ``schema``, one
        valid under it). All three are enforced by grammar-constrained decoding, so the output
        parses whatever the model's skill; whether its content is right is the model's.
        ``strict`` is accepted for API parity: the grammar is always strict.

        Why ``json_mode`` follows the schema when there is one: OpenAI's JSON mode only promises
        an object and leaves the keys to the prompt, so a parser can still fail on a valid
        object with other keys; a local grammar can hold the keys too, and a caller who passes a
        schema asks for exactly that object.
        """
        if kwargs:
            raise ValueError(f"Received unsupported arguments {kwargs}")
        if method == "function_calling":
            if schema is None:
                raise ValueError("method='function_calling' needs a schema")
            return super().with_structured_output(schema, include_raw=include_raw)
        if method == "json_schema" or (method == "json_mode" and schema is not None):
            if schema is None:
                raise ValueError("method='json_schema' needs a schema")
            json_schema = convert_to_json_schema(schema)
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema},
            }
        elif method == "json_mode":
            response_format = {"type": "json_object"}
        else:
            raise ValueError(
                f"method must be 'function_calling', 'json_schema' or 'json_mode', not {method!r}"
            )
        llm = self.bind(
            response_format=response_format,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        parser = structured_parser(schema)
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")

    # ------------------------------------------------------------------ token counting
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids under the base model's own tokenizer (LangChain's default downloads GPT-2's)."""
        return list(self._engine.tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Exact prompt length: the messages rendered by the chat template, as the model sees them."""
        if not messages:
            return 0
        formatted = [convert_to_openai_tool(t) for t in tools] if tools else None
        template = getattr(self._engine.tokenizer, "chat_template", None)
        chat = to_chat_messages(messages, structured_tool_calls=template_renders_tool_calls(template))
        try:
            return len(self._engine.encode(chat, tools=formatted).ids)
        except ContextLengthError as exc:  # counting is how callers find out it is too long
            return exc.prompt_tokens
        except EmptyPromptError:
            return 0

    # ------------------------------------------------------------------ generation
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        result = self._engine.generate(request.query, **request.engine_kwargs())
        message = ai_message(result, request.parse(result), request.model_name)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        result = await self._engine.agenerate(request.query, **request.engine_kwargs())
        message = ai_message(result, request.parse(result), request.model_name)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        splitter = request.splitter()
        with contextlib.closing(self._engine.stream(request.query, **request.engine_kwargs())) as events:
            for event in events:
                if event.result is not None:
                    yield self._last_chunk(event.result, splitter, request.model_name)
                    return
                piece = splitter.feed(event.text) if splitter else event.text
                if piece:
                    chunk = text_chunk(piece)
                    if run_manager:  # langchain-core < 1: the model reports its own tokens
                        run_manager.on_llm_new_token(piece, chunk=chunk)
                    yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        splitter = request.splitter()
        events = self._engine.astream(request.query, **request.engine_kwargs())
        try:
            async for event in events:
                if event.result is not None:
                    yield self._last_chunk(event.result, splitter, request.model_name)
                    return
                piece = splitter.feed(event.text) if splitter else event.text
                if piece:
                    chunk = text_chunk(piece)
                    if run_manager:
                        await run_manager.on_llm_new_token(piece, chunk=chunk)
                    yield chunk
        finally:
            await events.aclose()

    # ------------------------------------------------------------------ internals
    def _last_chunk(
        self, result: FusionResult, splitter: ToolCallStreamSplitter | None, model_name: str | None
    ) -> ChatGenerationChunk:
        parsed = splitter.finish() if splitter else ParsedOutput(content="")
        return last_chunk(result, parsed, model_name)

    @property
    def _engine(self) -> FusionEngine:
        if self.engine is None:  # only before validation has run
            raise RuntimeError("ChatQaFlora has no engine")
        return self.engine

    def _default_options(self) -> dict[str, Any]:
        """The instance's engine options (None: keep the engine's default)."""
        options = {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop or None,
            "mode": self.mode,
            "top_k": self.top_k,
            "adapters": self.adapters,
            **self.fusion_kwargs,
        }
        return {k: v for k, v in options.items() if v is not None}

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Request:
        return build_request(
            self._engine,
            messages,
            stop=stop,
            call_kwargs=kwargs,
            defaults=self._default_options(),
            model_name=self.model_name,
            timeout=self.timeout,
        )


def structured_parser(schema: dict[str, Any] | type | None) -> Runnable:
    """The parser of a JSON answer: into the pydantic class when ``schema`` is one, else a dict."""
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        return PydanticOutputParser(pydantic_object=schema)
    return JsonOutputParser()


def _catalog_base(catalog: str | Path | AdapterCatalog) -> str | None:
    if not isinstance(catalog, AdapterCatalog):
        catalog = AdapterCatalog.from_file(catalog)
    return str(catalog.base_model) if catalog.base_model is not None else None
