"""Options of a fusion request: how adapters are chosen and weighed, and how text is generated.

Two models, because they answer different questions and are overridden per call
independently: :class:`FusionConfig` (which adapters, with which weights) and
:class:`GenerationOptions` (how many tokens, how sampled, where to stop).
Sampling temperature and the logit-lens temperature are different knobs, hence
``lens_temperature`` here and ``temperature`` in generation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError

Mode = Literal["qaflora", "static", "base", "single", "oracle", "logo"]
Divergence = Literal["kl", "js", "cosine", "euclidean"]
TokenReduction = Literal["last", "mean"]
Preselect = Literal["logo", "none"]
LogoSignal = Literal["norm", "entropy"]
LogoModules = Literal["last", "all"]
LogoCalibration = Literal["none", "content_free"]
Normalize = Literal["sum", "max"]
ConversationWeights = Literal["per_turn", "once"]
Policy = Literal["shares", "relevant"]
Strength = Literal["unit", "fit"]
FitTarget = Literal["logprobs", "mixed"]
Relevance = Literal["output", "depth_gain"]

MODES: tuple[str, ...] = ("qaflora", "static", "base", "single", "oracle", "logo")

OracleWeights = dict[str, float | list[float]]


class FusionConfig(BaseModel):
    """How a query's adapters are selected and weighed.

    ``mode``:
      * ``qaflora``: per-layer weights from the divergence between the base and each
        adapter at the logit lens (the paper's method);
      * ``static``: uniform weights over the candidates (the paper's "Avg" baseline);
      * ``base``: no adapter at all;
      * ``single``: exactly one adapter (name it in ``adapters``) at full strength;
      * ``oracle``: caller-given weights (``oracle_weights``), per adapter or per
        adapter and layer;
      * ``logo``: LoGo's own per-adapter weights s_i / sum_j s_j over its top-k.

    ``adapters`` restricts the candidates (``None`` = every enabled adapter).
    ``top_k`` with ``preselect="logo"`` keeps only the k adapters with the strongest
    LoGo signal before weighing, so cost does not grow with the catalog.

    ``policy`` (``mode="qaflora"`` only) turns the weighing pass into weights
    (:mod:`qaflora.policy`): ``"shares"`` is the paper (per-layer shares of the
    divergences, ``normalize``); ``"relevant"`` keeps the adapters that move the next-token
    distribution by at least ``relevance_floor`` nats (``relevance``: the drift they add with
    depth, by default; at most ``max_relevant``), runs them at
    their trained strength and, with ``strength="fit"``, checks the composition with one
    extra batched forward (benchmarks/POLICY.md). The default is ``"relevant"``: the paper's
    sum-normalised shares halve two adapters a composite query needs; ``policy="shares"``
    restores the paper exactly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "qaflora"
    adapters: list[str] | None = None
    top_k: int | None = Field(default=None, ge=1)
    preselect: Preselect = "logo"
    logo_signal: LogoSignal = "norm"
    logo_modules: LogoModules = "last"
    logo_calibration: LogoCalibration = Field(
        default="none",
        description="'none' (LoGo as published) or 'content_free': divide each adapter's score by "
        "its score on a content-free prompt ('N/A' in the same chat template), so an adapter whose "
        "output is large on every input stops winning every query (contextual calibration).",
    )
    divergence: Divergence = "kl"
    token: TokenReduction = "last"
    lens_temperature: float = Field(default=1.0, gt=0.0)
    normalize: Normalize = Field(
        default="sum",
        description="qa-FLoRA weights per layer: 'sum' (paper: shares summing to 1) or 'max' "
        "(shares scaled so the most divergent adapter gets 1).",
    )
    policy: Policy = Field(
        default="relevant",
        description="How the weighing pass becomes weights: 'shares' (qa-FLoRA as published: per-layer "
        "shares of the divergences, see normalize) or 'relevant' (adapters that move the next-token "
        "distribution by at least relevance_floor nats, at their trained strength; see strength).",
    )
    relevance_floor: float = Field(
        default=0.5,
        ge=0.0,
        description="policy='relevant': KL(base || base+adapter) of the next-token distribution, in nats, "
        "an adapter must reach to count as relevant; when none does, the base model answers alone.",
    )
    relevance: Relevance = Field(
        default="depth_gain",
        description="policy='relevant': the drift an adapter must show. 'output': the KL of the "
        "model's next-token distribution (last layer). 'depth_gain': that KL minus the smallest KL "
        "of the earlier layers' logit lens, i.e. the drift the adapter adds with depth; drift "
        "already present after the first layer is a bias on the next token whatever the query says, "
        "and it makes adapters trained for something else look relevant in a large catalog.",
    )
    max_relevant: int = Field(
        default=2,
        ge=1,
        description="policy='relevant': at most this many relevant adapters, strongest first.",
    )
    strength: Strength = Field(
        default="fit",
        description="policy='relevant': 'unit' runs every relevant adapter at 1.0 in every layer; 'fit' "
        "scores every combination of fit_grid strengths in one extra batched forward and keeps the one "
        "that best gives the product-of-experts answer (composition check).",
    )
    tools_hint: bool = Field(
        default=True,
        description="policy='relevant': on a request that offers tools, keep the adapters the catalog "
        "marks kind='tools' (at strength 1, within max_relevant) whatever their drift: a tool call's "
        "first token is one the base agrees on, the adapter differs only in the call's arguments. "
        "A catalog without kind='tools' is unaffected.",
    )
    call_target: bool = Field(
        default=True,
        description="policy='relevant', strength='fit', with tools_hint: where the tool adapter alone "
        "would open a tool call, the composition check aims at that call's first token instead of the "
        "product of experts, so an adapter kept beside it (a language adapter, needed after the tool's "
        "result) cannot answer at once instead of calling.",
    )
    hint_kinds: tuple[str, ...] = Field(
        default=(),
        description="policy='relevant': catalog kinds this request is known to need; the adapters of "
        "these kinds are kept first (at strength 1, within max_relevant) whatever their drift, the drift "
        "fills the other places. Set by the caller that knows the request's use: QaFloraLLM adds 'reading' "
        "when a query engine formats retrieved context into the prompt. A kind no adapter has changes "
        "nothing.",
    )
    language_place: bool = Field(
        default=True,
        description="policy='relevant', in a catalog that marks language adapters (kind='language'): "
        "the strongest language adapter whose drift reaches relevance_floor takes one of the "
        "max_relevant places before the other skills compete for the rest (its strength still left to "
        "the composition check). A language composes with any skill; a skill whose drift ties the "
        "language's would otherwise take the place and answer in English.",
    )
    sure_base: Annotated[float, Field(gt=0.0, le=1.0)] | Literal["off"] = Field(
        default=0.98,
        description="policy='relevant', in a catalog that marks language adapters (kind='language'): "
        "where the base already gives its next token at least this probability, only language "
        "adapters (and hinted ones) can be relevant. A base sure of its answer does not need a skill; "
        "rewriting a sure answer in another language is what a language adapter is for. 'off': no gate. "
        "A catalog without kind='language' is unaffected. 0.98 was chosen on the dev seed "
        "(benchmarks/POLICY.md, 'A sure base').",
    )
    sure_after_first: bool = Field(
        default=True,
        description="policy='relevant', with sure_base: the same one step on. Where the base with the "
        "strongest kept adapter gives its next token at least sure_base, the other kept adapters must "
        "be language (or hinted) ones: the skill already in place made the answer sure. False: only "
        "the base's own sureness counts.",
    )
    fit_grid: tuple[float, ...] = Field(
        default=(0.0, 1.0, 1.5, 2.0, 3.0),
        description="strength='fit': strengths tried per relevant adapter (len(fit_grid)**n - 1 rows "
        "for n relevant adapters).",
    )
    fit_blocks: int = Field(
        default=4,
        ge=0,
        description="strength='fit': the check also tries, for every strength combination, each kept "
        "adapter turned off in one of this many contiguous blocks of layers (every layer its own block "
        "when the model has no more layers than blocks), so the weights can differ by depth. 0: the "
        "same strength in every layer (len(fit_grid)**n - 1 rows); 4 (chosen on the dev seed, "
        "benchmarks/POLICY.md, 'Strengths by depth') adds about 4*n rows per combination.",
    )
    fit_target: FitTarget = Field(
        default="mixed",
        description="strength='fit': the answer the check aims at: 'logprobs' (base log-probs plus each "
        "adapter's shift) or 'mixed' (mean of that and the same sum on the last hidden state).",
    )
    uniform_below: float = Field(
        default=1e-9,
        ge=0.0,
        description="A layer whose divergences sum below this gets uniform weights.",
    )
    oracle_weights: OracleWeights | None = None
    conversation_weights: ConversationWeights = Field(
        default="per_turn",
        description="For a conversation (a prompt that extends an earlier one: same history, new "
        "messages): 'per_turn' weighs every turn afresh, reusing the weighing work of the shared "
        "history; 'once' keeps the weights of the conversation's first turn for every later turn, "
        "so the answer's prefill reuses the history's KV too (cheaper; weights no longer follow "
        "the conversation). Continuous scheduling only.",
    )

    @field_validator("adapters")
    @classmethod
    def _adapters_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) == 0:
            raise ValueError("adapters must name at least one adapter (or be None for all)")
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"adapters contains duplicates: {value}")
        return value

    @field_validator("fit_grid")
    @classmethod
    def _grid_usable(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or not any(v > 0 for v in value):
            raise ValueError("fit_grid needs at least one positive strength")
        if any(not (v >= 0.0 and v < float("inf")) for v in value):
            raise ValueError(f"fit_grid strengths must be finite and >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _mode_arguments(self) -> FusionConfig:
        if self.mode == "oracle" and not self.oracle_weights:
            raise ValueError("mode='oracle' needs oracle_weights {adapter: weight or [per-layer]}")
        if self.mode == "single" and (self.adapters is None or len(self.adapters) != 1):
            raise ValueError("mode='single' needs adapters=[<exactly one adapter name>]")
        if self.policy == "relevant" and self.token != "last":
            raise ValueError("policy='relevant' reads the next-token distribution: it needs token='last'")
        return self

    def merged(self, **overrides: Any) -> FusionConfig:
        """A copy with per-call overrides applied and validated (None values are ignored)."""
        return merge_options(self, overrides)


class OutputConstraint(BaseModel):
    """What the generated text must look like, enforced token by token (grammar-constrained decoding).

    Declarative, so it can cross boundaries (LangChain's ``with_structured_output``, an
    OpenAI ``response_format`` or ``tool_choice``); the engine compiles it into a per-request
    :class:`qaflora.token_constraints.TokenConstraint`.

    * ``json_schema``: one JSON value valid under ``json_schema``;
    * ``json_object``: any JSON object;
    * ``tool_call``: Hermes-style ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` with
      the name one of ``tools`` (OpenAI tool dicts) and arguments valid under that tool's
      parameters; ``tool_choice`` is ``"required"`` (a call to any tool), ``"auto"`` (free text,
      but a call, once opened, must be valid) or a tool's name (a call to that tool).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["json_schema", "json_object", "tool_call"]
    json_schema: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "required"

    @classmethod
    def for_tool_choice(cls, tools: list[dict[str, Any]], choice: str | None) -> OutputConstraint:
        """The call a normalised tool choice (:func:`qaflora.toolcalls.normalize_tool_choice`) asks
        for: ``None`` (auto) -> ``"auto"``, ``"any"`` -> ``"required"``, a tool's name -> that name.
        One mapping for every front end (LangChain, the OpenAI-compatible server)."""
        mode = {None: "auto", "any": "required"}.get(choice, choice)
        return cls(type="tool_call", tools=tools, tool_choice=mode)

    @model_validator(mode="after")
    def _arguments_for_type(self) -> OutputConstraint:
        if self.type == "json_schema" and not isinstance(self.json_schema, dict):
            raise ValueError("type='json_schema' needs json_schema (a JSON schema object)")
        if self.type == "tool_call" and not self.tools:
            raise ValueError("type='tool_call' needs tools (OpenAI-format tool definitions)")
        return self


class GenerationOptions(BaseModel):
    """How text is generated. ``temperature`` 0 (or None) means greedy decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float | None = Field(default=0.0, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = Field(
        default=False, description="Keep generating past end-of-sequence tokens (for benchmarks)."
    )
    constraint: OutputConstraint | None = Field(
        default=None,
        description="Grammar the output must follow (JSON schema, JSON object, tool call); None = free text.",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _stop_non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(s == "" for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value or None

    @property
    def greedy(self) -> bool:
        return not self.temperature

    def merged(self, **overrides: Any) -> GenerationOptions:
        return merge_options(self, overrides)


FUSION_FIELDS = frozenset(FusionConfig.model_fields)
GENERATION_FIELDS = frozenset(GenerationOptions.model_fields)


def merge_options(model: BaseModel, overrides: dict[str, Any]) -> Any:
    """Return ``model`` with ``overrides`` applied, raising :class:`ConfigError` on bad values."""
    updates = {k: v for k, v in overrides.items() if v is not None}
    if not updates:
        return model
    unknown = set(updates) - set(type(model).model_fields)
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} for {type(model).__name__}")
    try:
        return type(model).model_validate({**model.model_dump(), **updates})
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise ConfigError(str(exc)) from exc


def split_call_options(
    kwargs: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split free-form call kwargs into (fusion overrides, generation overrides).

    Unknown keys raise: a misspelt option silently ignored is a wrong answer later.
    """
    fusion = {k: v for k, v in kwargs.items() if k in FUSION_FIELDS}
    generation = {k: v for k, v in kwargs.items() if k in GENERATION_FIELDS}
    unknown = set(kwargs) - FUSION_FIELDS - GENERATION_FIELDS
    if unknown:
        raise ConfigError(
            f"unknown option(s) {sorted(unknown)}; fusion options are {sorted(FUSION_FIELDS)}, "
            f"generation options are {sorted(GENERATION_FIELDS)}"
        )
    return fusion, generation
