"""One LangChain call -> one engine request: options merged, messages rendered, output constrained.

Kept apart from the chat model so the mapping (LangChain's names and conventions
onto the engine's) can be read, and changed, in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from qaflora import FusionEngine, FusionResult
from qaflora.config import OutputConstraint
from qaflora.model_names import model_names, named_adapter

from .messages import template_renders_tool_calls, to_chat_messages
from .tools import (
    ParsedOutput,
    ToolCallStreamSplitter,
    forced_call_prefix,
    normalize_tool_choice,
    parse_tool_calls,
)

# LangChain's name -> the engine's name. Everything else passes through unchanged.
_RENAMED = {"max_tokens": "max_new_tokens"}
# Call kwargs that LangChain itself may forward and that are not engine options.
_FRAMEWORK_KWARGS = ("stream",)
# Options that choose the adapters: a call's model=<model>:<adapter> has chosen them already.
_SELECTION_KWARGS = ("mode", "adapters", "top_k", "oracle_weights")


@dataclass
class Request:
    """One call, resolved: what the engine gets and how to read its answer."""

    query: str | list[dict[str, Any]]
    formatted: bool
    tools: list[dict[str, Any]] | None
    options: dict[str, Any]
    tool_names: list[str] | None
    """Names of the bound tools; None when no tools are bound (the text is then not parsed)."""
    timeout: float | None = None
    prefix: str = ""
    """Text put in the model's mouth (``assistant_prefix``) to force a tool call where the
    tokenizer cannot be constrained; part of the answer."""
    model_name: str | None = None
    """The model name this call answers as: the instance's, or the call's ``model=``."""

    def engine_kwargs(self) -> dict[str, Any]:
        """Everything the engine's generate/stream/agenerate/astream take for this call."""
        return {
            "formatted": self.formatted,
            "tools": self.tools,
            "assistant_prefix": self.prefix or None,
            "timeout": self.timeout,
            **self.options,
        }

    def parse(self, result: FusionResult) -> ParsedOutput:
        text = self.prefix + result.text
        if self.tool_names is None:
            return ParsedOutput(content=text)
        return parse_tool_calls(text, self.tool_names)

    def splitter(self) -> ToolCallStreamSplitter | None:
        """For streams: a splitter that holds tool calls back, or None without tools."""
        if self.tool_names is None:
            return None
        splitter = ToolCallStreamSplitter(self.tool_names)
        splitter.feed(self.prefix)
        return splitter


def build_request(
    engine: FusionEngine,
    messages: Sequence[BaseMessage],
    *,
    stop: list[str] | None,
    call_kwargs: dict[str, Any],
    defaults: dict[str, Any],
    model_name: str | None,
    timeout: float | None,
) -> Request:
    """Merge the model's defaults with this call's options and build the engine query.

    Unknown options are not dropped here: the engine rejects them with a
    :class:`~qaflora.errors.ConfigError` listing the valid ones. An explicit
    ``stop=[]`` clears the model's default stop strings. Bound tools and a
    ``response_format`` become the engine's grammar constraint (:func:`output_constraint`).
    """
    call = dict(call_kwargs)
    requested_model = call.pop("model", None)
    adapter = adapter_of_model(engine, requested_model, model_name)
    if adapter is not None:
        chosen = sorted(k for k in _SELECTION_KWARGS if call.get(k) is not None)
        if chosen:
            raise ValueError(
                f"model={requested_model!r} is the adapter {adapter!r} alone; {chosen} only apply to "
                f"the fused model {model_name!r}"
            )
        defaults = {k: v for k, v in defaults.items() if k not in _SELECTION_KWARGS}
        call.update(mode="single", adapters=[adapter])
    for key in _FRAMEWORK_KWARGS:
        call.pop(key, None)
    timeout = call.pop("timeout", timeout)
    tools = call.pop("tools", None)
    tool_choice = call.pop("tool_choice", None)
    response_format = call.pop("response_format", None)
    call = {_RENAMED.get(k, k): v for k, v in call.items()}
    options = {**defaults, **{k: v for k, v in call.items() if v is not None}}
    if stop is not None:
        options["stop"] = stop or None
    options = {k: v for k, v in options.items() if v is not None}

    template = getattr(engine.tokenizer, "chat_template", None)
    chat = to_chat_messages(messages, structured_tool_calls=template_renders_tool_calls(template))
    formatted_tools = [convert_to_openai_tool(t) for t in tools] if tools else None
    names = [t["function"]["name"] for t in formatted_tools] if formatted_tools else []
    choice = normalize_tool_choice(tool_choice, names)
    shown = formatted_tools if formatted_tools and choice != "none" else None
    constraint = output_constraint(response_format, shown, choice)
    prefix = ""
    if constraint is not None and constraint.type == "tool_call" and not engine.supports_constraints:
        # a tokenizer llguidance cannot read: 'auto' runs free, a forced choice opens the call
        prefix, constraint = forced_call_prefix(choice, names, template) or "", None
    if constraint is not None:
        if "constraint" in options:
            raise ValueError("give either a constraint or tools / response_format, not both")
        options["constraint"] = constraint
    answered_as = requested_model if adapter is not None else model_name
    return Request(chat, False, shown, options, names if shown else None, timeout, prefix, answered_as)


def adapter_of_model(engine: FusionEngine, requested: str | None, model_name: str | None) -> str | None:
    """The adapter a call's ``model=`` selects (``<model>:<adapter>``, as the server names it).

    None for no ``model=`` or the instance's own name (fused per query); a ValueError naming the
    names this instance answers to for anything else.
    """
    if requested is None or requested == model_name:
        return None
    adapter = named_adapter(requested, model_name) if model_name else None
    if adapter is not None and adapter in engine.adapter_names:
        return adapter
    names = model_names(model_name, engine.adapter_names) if model_name else []
    raise ValueError(
        f"ChatQaFlora serves one base model ({model_name!r}); model={requested!r} is not one of its "
        f"names {names} (the fused model, or one adapter alone). Build another ChatQaFlora for "
        "another base."
    )


def output_constraint(
    response_format: dict[str, Any] | None, tools: list[dict[str, Any]] | None, choice: str | None
) -> OutputConstraint | None:
    """The grammar an answer must follow: OpenAI's ``response_format`` or the bound tools.

    Tools: a forced choice (``"any"`` or a name) must be one valid call; ``"auto"`` lets the
    model write text or call, but a call it opens must be valid for the tool it names (the
    OpenAI-compatible server applies the same rule). ``response_format``: ``{"type":
    "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``.
    """
    fmt_type = None if response_format is None else response_format.get("type")
    if fmt_type in (None, "text"):
        if tools is None:
            return None
        return OutputConstraint.for_tool_choice(tools, choice)
    if tools is not None:
        raise ValueError("response_format and bound tools cannot be combined: an answer is one or the other")
    if fmt_type == "json_object":
        return OutputConstraint(type="json_object")
    spec = response_format.get("json_schema") if fmt_type == "json_schema" else None
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise ValueError(
            "response_format must be {'type': 'text' | 'json_object'} or {'type': 'json_schema', "
            f"'json_schema': {{'name': ..., 'schema': {{...}}}}}}; got {response_format!r}"
        )
    return OutputConstraint(type="json_schema", json_schema=spec["schema"])
