"""Grammar-constrained decoding (llguidance) on real tiny models and real tokenizers.

The tiny models have random weights: left alone they write gibberish, so every valid JSON
object and tool call below is the grammar's doing. Validity is checked with ``jsonschema``.
"""

from __future__ import annotations

import json
import string
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from qaflora.config import OutputConstraint
from qaflora.constrained import GrammarCompiler, GrammarConstraint, build_vocabulary
from qaflora.errors import ConfigError
from qaflora.testing import build_tokenizer
from qaflora.toolcalls import parse_tool_calls
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SCHEMAS: dict[str, dict[str, Any]] = {
    "flat": {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
    },
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            },
            "city": {"type": "string"},
        },
        "required": ["person"],
    },
    "array_enum": {
        "type": "object",
        "properties": {
            "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
            "mood": {"enum": ["happy", "sad"]},
        },
        "required": ["colors", "mood"],
    },
    "integers": {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "minimum": 0, "maximum": 99},
            "b": {"type": "integer"},
            "flag": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
        },
        "required": ["a", "flag"],
    },
    "list_of_objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "tag": {"type": "string", "maxLength": 8}},
            "required": ["id"],
            "additionalProperties": False,
        },
        "minItems": 1,
        "maxItems": 3,
    },
}

ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 16}, "k": {"type": "integer"}},
            "required": ["query"],
        },
    },
}
TOOLS = [ADD_TOOL, LOOKUP_TOOL]
TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

PROMPTS = [
    "Describe a person as JSON.",
    "Solve 12 plus 7.",
    "What is the capital of France?",
    "def add(a, b): return a + b",
    "Привет, как дела?",
    "List some colours.",
    "Translate to Spanish: the cat sleeps.",
    "Give me numbers.",
    "The patient has a fever.",
    "Hola, ¿qué tal?",
]


def schema_constraint(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": schema}


def build_unigram_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer as ``tokenizers`` writes one: Unigram, Metaspace ``▁``
    pre-tokenizer and decoder, ``byte_fallback`` with ``<0xNN>`` tokens, single characters
    and whole-word pieces (the kind the next demo zoo uses)."""
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = [(s, 0.0) for s in specials]
    vocab += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    vocab += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("▁", -3.0)]
    words = ["the", "name", "answer", "city", "is", "of", "and", "true", "false", "null", "Paris", "red"]
    vocab += [("▁" + w, -2.0) for w in words] + [(w, -2.5) for w in words]
    vocab += [('{"', -2.0), ('":', -2.0), ('",', -2.0), ("▁{", -2.0), ('"}', -2.0)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Metaspace(replacement="▁", prepend_scheme="first"),
            decoders.ByteFallback(),
            decoders.Fuse(),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def random_walk(compiler: GrammarCompiler, tokenizer, constraint: OutputConstraint, seed: int, budget: int):
    """Sample from random logits under the constraint, as a model with no idea would."""
    generator = torch.Generator().manual_seed(seed)
    state = compiler.constraint(constraint, budget=budget)
    ids: list[int] = []
    for _ in range(budget):
        logits = torch.randn(compiler.vocabulary.size, generator=generator) * 3
        state.mask_logits(logits)
        token = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
        state.accept(token)
        if token == tokenizer.eos_token_id:
            break
        ids.append(token)
        if state.is_terminated():
            break
    return state, tokenizer.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------- tokenizer kinds


@pytest.fixture(scope="module", params=["byte-level BPE", "Unigram + Metaspace + byte fallback"])
def tokenizer_and_compiler(request):
    tokenizer = build_tokenizer() if request.param == "byte-level BPE" else build_unigram_tokenizer()
    return tokenizer, GrammarCompiler(tokenizer, len(tokenizer) + 5, {tokenizer.eos_token_id})


def test_unigram_metaspace_tokens_are_read_as_their_text():
    tokenizer = build_unigram_tokenizer()
    vocabulary = build_vocabulary(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    ids = tokenizer.convert_tokens_to_ids(["▁", "▁the", "<0x41>", "<0xE2>", '{"'])
    # the Metaspace decoder would be read literally ('▁' as 3 bytes) without our rewrite
    assert [vocabulary.token_bytes(i) for i in ids] == [b" ", b" the", b"A", b"\xe2", b'{"']


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_logits_give_schema_valid_json_on_both_tokenizer_kinds(tokenizer_and_compiler, name):
    tokenizer, compiler = tokenizer_and_compiler
    schema = SCHEMAS[name]
    for seed in range(6):
        state, text = random_walk(
            compiler, tokenizer, OutputConstraint(type="json_schema", json_schema=schema), seed, 200
        )
        assert state.is_terminated(), text
        jsonschema.validate(json.loads(text), schema)


def test_spaces_survive_on_the_unigram_tokenizer():
    tokenizer = build_unigram_tokenizer()
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["New York", "the red city"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    texts = {
        random_walk(compiler, tokenizer, OutputConstraint(type="json_schema", json_schema=schema), s, 80)[1]
        for s in range(8)
    }
    assert texts <= {'{"city": "New York"}', '{"city": "the red city"}'}
    assert texts  # every walk ended in one of the two


def test_logits_wider_than_the_tokenizer_never_pick_the_padding_ids():
    tokenizer = build_tokenizer()
    compiler = GrammarCompiler(tokenizer, len(tokenizer) + 9, {tokenizer.eos_token_id})
    state = compiler.constraint(OutputConstraint(type="json_object"))
    logits = torch.zeros(len(tokenizer) + 9)
    logits[len(tokenizer) :] = 100.0  # the padding rows of a padded embedding, made attractive
    state.mask_logits(logits)
    assert torch.isinf(logits[len(tokenizer) :]).all()
    assert tokenizer.decode([int(logits.argmax())]) == "{"


def test_compiled_grammars_are_cached_per_constraint(tokenizer_and_compiler):
    _, compiler = tokenizer_and_compiler
    a = compiler.compile(OutputConstraint(type="json_schema", json_schema=SCHEMAS["flat"]))
    b = compiler.compile(
        OutputConstraint(type="json_schema", json_schema=json.loads(json.dumps(SCHEMAS["flat"])))
    )
    assert a is b
    small = GrammarCompiler(build_tokenizer(), 400, {2}, cache_size=2)
    first = small.compile(OutputConstraint(type="json_object"))
    for name in ("flat", "nested"):
        small.compile(OutputConstraint(type="json_schema", json_schema=SCHEMAS[name]))
    assert small.compile(OutputConstraint(type="json_object")) is not first  # evicted, recompiled


def test_a_tokenizer_llguidance_cannot_read_is_refused_clearly():
    tokenizer = build_tokenizer()
    backend = tokenizer.backend_tokenizer
    backend.decoder = decoders.WordPiece()  # not byte-level, not SentencePiece: no byte mapping
    with pytest.raises(ConfigError, match="cannot read this tokenizer"):
        build_vocabulary(tokenizer, len(tokenizer), {tokenizer.eos_token_id})


# ---------------------------------------------------------------- through the engine


def test_json_schema_valid_on_every_one_of_60_prompts(llama_engine):
    """10 prompts x 5 schemas, greedy and sampled, plus json_object: 100 % parse and validate."""
    queries, per_query, schemas = [], [], []
    for i, (_name, schema) in enumerate(sorted(SCHEMAS.items())):
        for j, prompt in enumerate(PROMPTS):
            queries.append(prompt)
            sampled = {"temperature": 0.9, "seed": 10 * i + j} if j % 2 else {}
            per_query.append({"constraint": schema_constraint(schema), **sampled})
            schemas.append(schema)
    for j, prompt in enumerate(PROMPTS):
        queries.append(prompt)
        per_query.append({"constraint": {"type": "json_object"}, "temperature": 1.0, "seed": j})
        schemas.append({"type": "object"})
    results = llama_engine.generate_batch(queries, per_query=per_query, max_new_tokens=120)
    assert len(results) == 60
    for result, schema in zip(results, schemas, strict=True):
        assert result.finish_reason == "stop", result.text
        jsonschema.validate(json.loads(result.text), schema)


def test_constrained_and_free_requests_share_a_batch(llama_engine):
    alone = llama_engine.generate(PROMPTS[1], max_new_tokens=24)
    free, constrained, named = llama_engine.generate_batch(
        [PROMPTS[1], PROMPTS[0], PROMPTS[2]],
        per_query=[
            {},
            {"constraint": schema_constraint(SCHEMAS["nested"])},
            {
                "constraint": {"type": "tool_call", "tools": TOOLS, "tool_choice": "lookup"},
                "max_new_tokens": 100,
            },
        ],
        max_new_tokens=100,
    )
    assert {r.timings.batch_size for r in (free, constrained, named)} == {3}
    # the free row is exactly what it is alone (its own budget cut to compare like with like)
    assert free.token_ids[:24] == alone.token_ids
    jsonschema.validate(json.loads(constrained.text), SCHEMAS["nested"])
    calls = parse_tool_calls(named.text, ["add", "lookup"]).calls
    assert [c.name for c in calls] == ["lookup"]
    jsonschema.validate(calls[0].arguments, TOOL_SCHEMAS["lookup"])


@pytest.mark.parametrize("choice", ["required", "add", "lookup"])
def test_forced_tool_choice_gives_exactly_one_valid_call(llama_engine, choice):
    results = llama_engine.generate_batch(
        PROMPTS[:4],
        constraint={"type": "tool_call", "tools": TOOLS, "tool_choice": choice},
        max_new_tokens=120,
        temperature=0.8,
        seed=3,
    )
    for result in results:
        parsed = parse_tool_calls(result.text, ["add", "lookup"])
        assert parsed.content.strip() == "" and not parsed.invalid and len(parsed.calls) == 1, result.text
        call = parsed.calls[0]
        assert choice == "required" or call.name == choice
        jsonschema.validate(call.arguments, TOOL_SCHEMAS[call.name])
        assert result.text.startswith("<tool_call>") and result.text.rstrip().endswith("</tool_call>")


def test_auto_tool_choice_leaves_text_free_but_a_started_call_must_be_valid(llama_engine):
    auto = {"type": "tool_call", "tools": TOOLS, "tool_choice": "auto"}
    free_alone = llama_engine.generate(PROMPTS[3], max_new_tokens=12)
    free_under_auto = llama_engine.generate(PROMPTS[3], max_new_tokens=12, constraint=auto)
    assert free_under_auto.token_ids == free_alone.token_ids  # nothing in it resembles a tool call
    # the model opens a call (the prefix puts "<tool_call>" in its mouth): the rest must be a valid call
    for seed in range(3):
        result = llama_engine.generate(
            PROMPTS[seed],
            assistant_prefix="<tool_call>",
            constraint=auto,
            max_new_tokens=120,
            temperature=1.0,
            seed=seed,
        )
        parsed = parse_tool_calls("<tool_call>" + result.text, ["add", "lookup"])
        assert not parsed.invalid and parsed.calls, result.text
        for call in parsed.calls:
            jsonschema.validate(call.arguments, TOOL_SCHEMAS[call.name])


def test_invalid_schema_fails_in_the_callers_thread_and_the_engine_stays_usable(llama_engine):
    with pytest.raises(ConfigError, match="Invalid type: strng"):
        llama_engine.generate("x", constraint=schema_constraint({"type": "strng"}))
    with pytest.raises(ConfigError, match="tool_choice 'rm'"):
        llama_engine.generate("x", constraint={"type": "tool_call", "tools": TOOLS, "tool_choice": "rm"})
    with pytest.raises(ConfigError, match="json_schema"):
        llama_engine.generate("x", constraint={"type": "json_schema"})
    with pytest.raises(ConfigError, match="does not fit"):
        llama_engine.generate("x", assistant_prefix="hello", constraint={"type": "json_object"})
    result = llama_engine.generate("x", constraint=schema_constraint(SCHEMAS["flat"]), max_new_tokens=80)
    jsonschema.validate(json.loads(result.text), SCHEMAS["flat"])


def test_stream_of_constrained_output_adds_up_to_valid_json(llama_engine):
    events = list(
        llama_engine.stream(
            PROMPTS[0], constraint=schema_constraint(SCHEMAS["array_enum"]), max_new_tokens=100
        )
    )
    pieces = [e.text for e in events if e.result is None]
    result = events[-1].result
    assert len(pieces) > 3 and "".join(pieces) == result.text
    jsonschema.validate(json.loads(result.text), SCHEMAS["array_enum"])


async def test_async_stream_of_a_forced_tool_call(llama_engine):
    constraint = {"type": "tool_call", "tools": TOOLS, "tool_choice": "add"}
    pieces, result = [], None
    async for event in llama_engine.astream(PROMPTS[1], constraint=constraint, max_new_tokens=100):
        if event.result is not None:
            result = event.result
        else:
            pieces.append(event.text)
    assert "".join(pieces) == result.text
    (call,) = parse_tool_calls(result.text, ["add"]).calls
    jsonschema.validate(call.arguments, TOOL_SCHEMAS["add"])


# ---------------------------------------------------------------- the token budget


def test_a_tight_budget_still_closes_the_json(llama_engine):
    schema = SCHEMAS["nested"]
    compiler = llama_engine.grammars
    skeleton = compiler.compile(OutputConstraint(type="json_schema", json_schema=schema)).reserve
    # the budget is the shortest answer plus a little: a free model would be cut mid-string
    budget = 2 * skeleton + 8
    free = llama_engine.generate(PROMPTS[0], max_new_tokens=budget, ignore_eos=True)
    assert free.finish_reason == "length"
    for seed in range(4):
        result = llama_engine.generate(
            PROMPTS[seed],
            constraint=schema_constraint(schema),
            max_new_tokens=budget,
            temperature=1.0,
            seed=seed,
        )
        assert result.finish_reason == "stop" and result.usage.completion_tokens <= budget
        jsonschema.validate(json.loads(result.text), schema)


def test_a_budget_below_the_shortest_answer_is_truncated_with_length(llama_engine):
    result = llama_engine.generate(
        PROMPTS[0], constraint=schema_constraint(SCHEMAS["nested"]), max_new_tokens=6
    )
    assert result.finish_reason == "length" and result.usage.completion_tokens == 6
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)


def test_closing_mode_follows_the_shortest_way_out():
    tokenizer = build_tokenizer()
    compiler = GrammarCompiler(tokenizer, len(tokenizer), {tokenizer.eos_token_id})
    constraint = OutputConstraint(type="json_schema", json_schema=SCHEMAS["flat"])
    state = compiler.constraint(constraint, budget=400)
    for token in tokenizer.encode('{"answer": "a long and winding', add_special_tokens=False):
        state.accept(token)
    state.set_token_budget(state._generated + 12)  # 12 tokens left: close now
    text = '{"answer": "a long and winding'
    while not state.is_terminated():
        logits = torch.zeros(len(tokenizer))
        state.mask_logits(logits)
        token = int(logits.argmax())
        state.accept(token)
        text += tokenizer.decode([token])
    assert state.closing
    assert json.loads(text)["answer"] == "a long and winding"


# ---------------------------------------------------------------- a broken constraint fails alone


class _ExplodingConstraint:
    """Our glue under test: a constraint that breaks mid-answer must fail its own request only."""

    def __init__(self, after: int) -> None:
        self.after = after

    def mask_logits(self, logits: torch.Tensor) -> None:
        if self.after == 0:
            raise RuntimeError("grammar state corrupted")
        self.after -= 1

    def accept(self, token_id: int) -> None:
        pass

    def is_terminated(self) -> bool:
        return False


def test_a_failing_constraint_fails_only_its_own_request(llama_engine):
    from qaflora.scheduler import Job

    expected = llama_engine.generate(PROMPTS[1], max_new_tokens=10)
    good = llama_engine._job(PROMPTS[1], False, None, None, None, None, {"max_new_tokens": 10})
    bad = llama_engine._job(PROMPTS[2], False, None, None, None, None, {"max_new_tokens": 10})
    bad.constraint = _ExplodingConstraint(after=3)
    assert isinstance(bad, Job)
    llama_engine._scheduler.submit([good, bad])
    assert good.future.result(timeout=60).token_ids == expected.token_ids
    with pytest.raises(RuntimeError, match="grammar state corrupted"):
        bad.future.result(timeout=60)


def test_grammar_constraint_satisfies_the_protocol():
    from qaflora.token_constraints import TokenConstraint

    tokenizer = build_tokenizer()
    state = GrammarCompiler(tokenizer, len(tokenizer), {2}).constraint(OutputConstraint(type="json_object"))
    assert isinstance(state, GrammarConstraint) and isinstance(state, TokenConstraint)
    assert np.asarray(state.allowed()).dtype == bool


def test_forced_calls_hold_only_the_declared_arguments(llama_engine):
    """A schema that leaves ``additionalProperties`` open gets only its declared arguments (a tool
    without parameters gets ``{}``); one that sets it keeps what it says."""
    from qaflora.constrained.grammars import declared_arguments_only

    no_parameters = {"type": "object", "properties": {}}
    tools = [
        {"type": "function", "function": {"name": "ping", "parameters": no_parameters}},
        {"type": "function", "function": {"name": "now"}},  # no parameters at all
    ]
    for choice in ("ping", "now"):
        results = llama_engine.generate_batch(
            PROMPTS[:3],
            constraint={"type": "tool_call", "tools": tools, "tool_choice": choice},
            max_new_tokens=60,
            temperature=1.0,
            seed=5,
        )
        for result in results:
            parsed = parse_tool_calls(result.text, ["ping", "now"])
            assert [(c.name, c.arguments) for c in parsed.calls] == [(choice, {})], result.text
    open_schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True}
    assert declared_arguments_only(open_schema) == open_schema
    assert declared_arguments_only({"type": "object"})["additionalProperties"] is False
