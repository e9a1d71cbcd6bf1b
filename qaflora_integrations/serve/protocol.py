"""Request bodies of the OpenAI-compatible endpoints, validated at the boundary.

Responses are built from the ``openai`` package's own types (see :mod:`.responses`),
so their shape is right by construction; requests are ours, because the server must
decide what it accepts. OpenAI fields that change nothing here (``user``,
``metadata``, ``store``, ...) are accepted and ignored; fields whose non-default
value we cannot honour (``n > 1``, ``logprobs``, penalties) are declared so that
:mod:`.translate` can reject them by name instead of silently answering something
else. Our extension, ``fusion``, is validated strictly: an unknown key is an error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from qaflora.config import FusionConfig

_ACCEPT_EXTRA = ConfigDict(extra="allow")
_STRICT = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------- fusion extension
def _fusion_options_model() -> type[BaseModel]:
    """Every :class:`FusionConfig` field, optional, so the schema follows the engine's config.

    Values are checked again by the engine (``resolve_options``), which knows the
    mode/argument rules and the loaded adapters.
    """
    fields: dict[str, Any] = {
        name: (field.annotation | None, Field(default=None, description=field.description))
        for name, field in FusionConfig.model_fields.items()
    }
    return create_model("FusionFields", __config__=_STRICT, **fields)


class FusionOptions(_fusion_options_model()):  # type: ignore[misc]
    """The ``fusion`` body field: per-request :class:`qaflora.FusionConfig` overrides.

    ``{"mode": "qaflora", "top_k": 2}``, ``{"mode": "single", "adapters": ["math"]}``,
    ``{"mode": "oracle", "oracle_weights": {"math": 1.0, "lang_zo": [0, 0.5, 1, ...]}}``.
    """

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            known = sorted(FusionConfig.model_fields)
            unknown = sorted(set(value) - set(known))
            if unknown:
                raise ValueError(f"unknown fusion option(s) {unknown}; valid options are {known}")
        return value

    def overrides(self) -> dict[str, Any]:
        """The options the client set (None = keep the server's default)."""
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if v is not None}


# ---------------------------------------------------------------------- messages
class ContentPart(BaseModel):
    """One part of a list-valued ``content``; only text parts can reach a text model."""

    model_config = _ACCEPT_EXTRA
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = _ACCEPT_EXTRA
    name: str
    arguments: str = Field(description="JSON-encoded arguments, as OpenAI sends them.")


class AssistantToolCall(BaseModel):
    model_config = _ACCEPT_EXTRA
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """A chat message in OpenAI's shape (one model for every role, checked per role)."""

    model_config = _ACCEPT_EXTRA
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _fields_for_role(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry 'tool_calls' (this one is {self.role!r})")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role!r} message needs 'content'")
        return self


# ---------------------------------------------------------------------- tools and formats
class FunctionDefinition(BaseModel):
    model_config = _ACCEPT_EXTRA
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = _ACCEPT_EXTRA
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JSONSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``{"type": "text" | "json_object"}`` or ``{"type": "json_schema", "json_schema": {...}}``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs 'json_schema': {'name': ..., 'schema': {...}}")
        return self


class StreamOptions(BaseModel):
    model_config = _ACCEPT_EXTRA
    include_usage: bool = False


# ---------------------------------------------------------------------- requests
class _GenerationRequest(BaseModel):
    """Fields the chat and the completions endpoints share."""

    model_config = _ACCEPT_EXTRA

    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    fusion: FusionOptions | None = Field(
        default=None, description="qaflora extension: how adapters are chosen and weighed for this request."
    )
    ignore_eos: bool = Field(
        default=False, description="vLLM extension: keep generating past end-of-sequence (benchmarks)."
    )


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0)
    functions: list[dict[str, Any]] | None = None
    function_call: Any = None


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``: raw text in, raw text out (no chat template)."""

    prompt: str | Annotated[list[str], Field(min_length=1)]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0)
