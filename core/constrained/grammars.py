"""An :class:`~qaflora.config.OutputConstraint` as an llguidance grammar (Lark with embedded JSON schemas).

We write no grammar engine: llguidance compiles JSON schemas (``%json``) and Lark, and
its *lazy* lexemes give the one shape a chat model's tool calling needs beyond JSON:
free text in which ``<tool_call>`` may appear at any point, after which a valid call
must follow. What is ours is only how a request maps onto those pieces:

* JSON is written compactly with the separators of Python's ``json.dumps`` (``", "``
  and ``": "``), the style models see in training and in our chat templates; no free
  whitespace, which a weak model would otherwise pour in until its budget runs out;
* a tool call is ``<tool_call>{"name": <tool>, "arguments": <that tool's parameters>}</tool_call>``
  (a newline after the open tag and before the close tag is allowed, as Qwen/Hermes
  templates write it), one alternative per tool, so the arguments are checked against
  the schema of the tool that was named.
"""

from __future__ import annotations

import json
from typing import Any

from ..config import OutputConstraint
from ..errors import ConfigError
from ..toolcalls import CLOSE_TAG, OPEN_TAG

JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_for(constraint: OutputConstraint) -> str:
    """The llguidance grammar (Lark text) enforcing ``constraint``; raises ConfigError on bad input."""
    if constraint.type == "json_schema":
        return _lark_start(_json(constraint.json_schema or {}))
    if constraint.type == "json_object":
        return _lark_start(_json({"type": "object"}))
    return _tool_call_grammar(constraint)


def tool_parameters(tool: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, parameters schema) of an OpenAI-format tool dict (or a bare function dict)."""
    function = tool.get("function", tool) if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a tool needs a function name; got {tool!r}")
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise ConfigError(f"tool {name!r}: parameters must be a JSON schema object, got {parameters!r}")
    return name, parameters


def _tool_call_grammar(constraint: OutputConstraint) -> str:
    tools = dict(tool_parameters(t) for t in constraint.tools or [])
    choice = constraint.tool_choice
    if choice in ("required", "any", "auto"):
        allowed = list(tools)
    elif choice in tools:
        allowed = [choice]
    else:
        raise ConfigError(
            f"tool_choice {choice!r} is not 'auto', 'required' or one of the tools {list(tools)}"
        )
    calls = " | ".join(_json(_call_schema(name, tools[name])) for name in allowed)
    block = f'"\\n"? call "\\n"? {json.dumps(CLOSE_TAG)}'
    if choice != "auto":
        return f"%llguidance {{}}\nstart: {json.dumps(OPEN_TAG)} {block}\ncall: {calls}\n"
    # free text; once the text reaches <tool_call> (a lazy lexeme: matched as soon as it can
    # be), a whole valid call must follow; then free text again, and perhaps another call
    return (
        "%llguidance {}\n"
        "start: tool_call* TEXT\n"
        "TEXT: /(.|\\n)*/\n"
        f"opening[lazy]: TEXT {json.dumps(OPEN_TAG)}\n"
        f"tool_call: opening {block}\n"
        f"call: {calls}\n"
    )


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": declared_arguments_only(parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def declared_arguments_only(parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool's parameter schema with undeclared arguments ruled out, unless it says otherwise.

    JSON schema lets an object hold any key it does not list; a Python tool called with an
    argument it does not declare raises ``TypeError``, and a weak model given that freedom
    writes keys until its token budget ends (a tool without parameters never got its ``{}``).
    So, as OpenAI's strict function calling does, a schema that does not set
    ``additionalProperties`` gets ``false`` at the arguments' top level; one that sets it keeps it.
    """
    if parameters.get("type", "object") == "object" and "additionalProperties" not in parameters:
        return {**parameters, "additionalProperties": False}
    return parameters


def _json(schema: dict[str, Any]) -> str:
    if not isinstance(schema, dict):
        raise ConfigError(f"a JSON schema must be an object, got {type(schema).__name__}")
    styled = {**schema, "x-guidance": {**JSON_STYLE, **schema.get("x-guidance", {})}}
    try:
        text = json.dumps(styled)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the JSON schema is not JSON-serialisable: {exc}") from exc
    return f"%json {text}"


def _lark_start(body: str) -> str:
    return f"%llguidance {{}}\nstart: {body}\n"
