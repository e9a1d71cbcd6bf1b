"""One OpenAI request -> one engine call: model name, fusion, sampling, tools and formats resolved.

Everything the engine would reject is checked here, before a response starts, so
a stream never opens only to fail on its first byte: the model name, the fusion
options (through the engine's own ``resolve_options``), the prompt against the
context window, the token budget. Fields we cannot honour are refused by name
rather than ignored, because a silently ignored ``n=3`` or ``logprobs`` is a wrong
answer the client cannot see.

Mapping, OpenAI -> engine:

* ``model``: ``<model>`` fused, ``<model>:<adapter>`` = ``mode="single", adapters=[adapter]``;
* ``fusion``: :class:`qaflora.FusionConfig` overrides;
* ``max_completion_tokens``/``max_tokens`` -> ``max_new_tokens`` (default: the engine's, within the context);
* ``temperature`` (omitted or 0: greedy), ``top_p``, ``seed``, ``stop``; ``ignore_eos`` (vLLM's extension);
* ``tools`` -> the chat template's tools section; ``tool_choice`` and ``response_format``
  -> :class:`qaflora.config.OutputConstraint` (grammar-constrained decoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qaflora import FusionConfig, FusionEngine, GenerationOptions
from qaflora.config import OutputConstraint
from qaflora.errors import ConfigError, QaFloraError, UnknownAdapterError
from qaflora.toolcalls import normalize_tool_choice, template_supports_tools

from .errors import APIError, from_engine_error, invalid
from .messages import template_renders_tool_calls, to_chat_messages
from .models import ModelNames
from .protocol import ChatCompletionRequest, CompletionRequest, NamedToolChoice, _GenerationRequest


@dataclass
class EngineCall:
    """A validated request, ready for ``engine.agenerate``/``engine.astream``."""

    model: str
    """The model name the client asked for (echoed in the response)."""
    query: str | list[dict[str, Any]]
    formatted: bool
    config: FusionConfig
    generation: GenerationOptions
    prompt_tokens: int
    tools: list[dict[str, Any]] | None = None
    tool_names: list[str] | None = None
    """Names of the tools offered; None when the answer is not parsed for tool calls."""
    include_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "formatted": self.formatted,
            "tools": self.tools,
            "config": self.config,
            "generation": self.generation,
        }


def chat_call(engine: FusionEngine, names: ModelNames, request: ChatCompletionRequest) -> EngineCall:
    """Resolve a chat completion request; raises :class:`APIError` naming what is wrong."""
    adapter = names.adapter_of(request.model)
    _refuse(
        request,
        n=request.n not in (None, 1),
        logprobs=bool(request.logprobs) or bool(request.top_logprobs),
        functions=request.functions is not None,
        function_call=request.function_call is not None,
    )
    tools, tool_names, tool_constraint = _tools(engine, request)
    format_constraint = _response_format(request)
    if tool_constraint is not None and format_constraint is not None:
        raise invalid(
            "response_format and tools (with a tool_choice other than 'none') cannot be enforced together; "
            "send one of them",
            param="response_format",
        )
    template = getattr(engine.tokenizer, "chat_template", None)
    chat = to_chat_messages(request.messages, structured_tool_calls=template_renders_tool_calls(template))
    config = _fusion(engine, request, adapter)
    requested = request.max_completion_tokens or request.max_tokens
    try:
        prompt = engine.encode(chat, tools=tools)
    except QaFloraError as exc:
        raise from_engine_error(exc, param="messages") from None
    generation = _generation(
        engine, request, requested, len(prompt), "messages", tool_constraint or format_constraint
    )
    if (
        generation.constraint is not None
    ):  # compiled now, so a schema it cannot enforce is a 400, not a broken stream
        try:
            engine.compile_constraint(generation.constraint, max_new_tokens=generation.max_new_tokens)
        except ConfigError as exc:
            param = "tools" if tool_constraint is not None else "response_format"
            raise invalid(f"{param} cannot be enforced: {exc}", param=param) from None
    return EngineCall(
        model=request.model,
        query=chat,
        formatted=False,
        config=config,
        generation=generation,
        prompt_tokens=len(prompt),
        tools=tools,
        tool_names=tool_names,
        include_usage=_include_usage(request),
    )


def completion_calls(engine: FusionEngine, names: ModelNames, request: CompletionRequest) -> list[EngineCall]:
    """Resolve a completions request: one engine call per prompt (raw text, no chat template)."""
    adapter = names.adapter_of(request.model)
    prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
    _refuse(
        request,
        n=request.n not in (None, 1),
        best_of=request.best_of not in (None, 1),
        echo=bool(request.echo),
        suffix=bool(request.suffix),
        logprobs=request.logprobs is not None,
    )
    if request.stream and len(prompts) > 1:
        raise invalid("stream=true takes one prompt; send several prompts without streaming", param="prompt")
    config = _fusion(engine, request, adapter)
    calls = []
    for index, text in enumerate(prompts):
        param = "prompt" if isinstance(request.prompt, str) else f"prompt.{index}"
        try:
            prompt = engine.encode(text, formatted=True)
        except QaFloraError as exc:
            raise from_engine_error(exc, param=param) from None
        generation = _generation(engine, request, request.max_tokens, len(prompt), param, None)
        calls.append(
            EngineCall(
                model=request.model,
                query=text,
                formatted=True,
                config=config,
                generation=generation,
                prompt_tokens=len(prompt),
                include_usage=_include_usage(request),
            )
        )
    return calls


# ---------------------------------------------------------------------- pieces
def _refuse(request: _GenerationRequest, **unsupported: bool) -> None:
    """Refuse, by name, values this server cannot honour (instead of answering something else)."""
    penalties = {
        "presence_penalty": bool(request.presence_penalty),
        "frequency_penalty": bool(request.frequency_penalty),
        "logit_bias": bool(request.logit_bias),
    }
    for name, present in {**unsupported, **penalties}.items():
        if present:
            raise invalid(f"{name} is not supported by this server (qaflora); leave it out", param=name)
    if request.stream_options is not None and not request.stream:
        raise invalid("stream_options is only allowed with stream=true", param="stream_options")


def _include_usage(request: _GenerationRequest) -> bool:
    return bool(request.stream and request.stream_options and request.stream_options.include_usage)


def _fusion(engine: FusionEngine, request: _GenerationRequest, adapter: str | None) -> FusionConfig:
    overrides = request.fusion.overrides() if request.fusion is not None else {}
    if adapter is not None:
        if overrides:
            raise invalid(
                f"the model {request.model!r} is the adapter {adapter!r} alone; a 'fusion' field "
                f"({sorted(overrides)}) only applies to the fused model {request.model.split(':')[0]!r}",
                param="fusion",
            )
        overrides = {"mode": "single", "adapters": [adapter]}
    try:
        config, _ = engine.resolve_options(**overrides)
    except UnknownAdapterError as exc:
        raise from_engine_error(exc, param="fusion.adapters") from None
    except ConfigError as exc:
        raise invalid(f"invalid fusion options: {exc}", param="fusion") from None
    return config


def _generation(
    engine: FusionEngine,
    request: _GenerationRequest,
    requested: int | None,
    prompt_tokens: int,
    param: str,
    constraint: OutputConstraint | None,
) -> GenerationOptions:
    window = engine.context_window
    room = None if window is None else window - prompt_tokens
    if requested is not None and room is not None and requested > room:
        raise invalid(
            f"this model's context window is {window} tokens; the prompt has {prompt_tokens} and "
            f"{requested} completion tokens were requested ({prompt_tokens + requested} in all): "
            "shorten the prompt or lower max_tokens",
            param=param,
            code="context_length_exceeded",
        )
    budget = requested if requested is not None else engine.generation.max_new_tokens
    if room is not None:
        budget = min(budget, room)
    overrides = {
        "max_new_tokens": budget,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": request.stop,
        "ignore_eos": request.ignore_eos or None,
        "constraint": constraint,
    }
    try:
        return engine.generation.merged(**overrides)
    except ConfigError as exc:
        raise invalid(f"invalid sampling options: {exc}") from None


def _tools(
    engine: FusionEngine, request: ChatCompletionRequest
) -> tuple[list[dict[str, Any]] | None, list[str] | None, OutputConstraint | None]:
    """Tools to render, names to parse the answer for, and the constraint ``tool_choice`` asks for."""
    if not request.tools:
        if request.tool_choice not in (None, "none"):
            raise invalid("tool_choice needs tools", param="tool_choice")
        return None, None, None
    if request.tool_choice == "none":
        return None, None, None  # the model is not to call tools: it is not shown them either
    template = getattr(engine.tokenizer, "chat_template", None)
    if not template_supports_tools(template):
        raise invalid(
            "this model's chat template has no tools section, so the model cannot be shown tools",
            param="tools",
        )
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools]
    names = [tool.function.name for tool in request.tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise invalid(f"tools define {duplicates} more than once", param="tools")
    choice: Any = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        choice = choice.model_dump()
    try:
        normalized = normalize_tool_choice(choice, names)
    except ValueError as exc:
        raise invalid(str(exc), param="tool_choice") from None
    if normalized is None and not engine.supports_constraints:
        return tools, names, None  # free text, parsed for calls: the grammar cannot read this tokenizer
    return tools, names, OutputConstraint.for_tool_choice(tools, normalized)


def _response_format(request: ChatCompletionRequest) -> OutputConstraint | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return OutputConstraint(type="json_object")
    assert fmt.json_schema is not None  # checked by ResponseFormat
    try:
        return OutputConstraint(type="json_schema", json_schema=fmt.json_schema.schema_)
    except ValueError as exc:
        raise APIError(str(exc), param="response_format") from None
