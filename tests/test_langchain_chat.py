"""ChatQaFlora beyond the standard suites: prompts, options, metadata, callbacks, batching,
async behaviour, tool calls. Runs the real langchain-core machinery on the tiny random model."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import jsonschema
import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from qaflora import AdapterCatalog, FusionEngine
from qaflora.errors import ChatTemplateError, ConfigError, ContextLengthError, EmptyPromptError
from qaflora.testing import build_tiny_model, make_random_adapter

from qaflora_integrations.langchain import (
    ChatQaFlora,
    FusionTraceHandler,
    ToolCallStreamSplitter,
    parse_tool_calls,
    shared_engine,
    to_chat_messages,
)
from qaflora_integrations.langchain.tools import normalize_tool_choice, template_supports_tools

QUESTION = [SystemMessage("Be brief."), HumanMessage("Solve 12 plus 7 and answer in Russian.")]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def lookup(term: str) -> str:
    """Look a term up."""
    return term


@pytest.fixture
def llm(llama_engine) -> ChatQaFlora:
    return ChatQaFlora(engine=llama_engine, max_tokens=6)


@pytest.fixture(scope="module")
def tool_llm(tmp_path_factory):
    """A tiny model with room for tool schemas: its small BPE vocabulary spends ~250 tokens on one
    tool's JSON, more than the shared fixture's 256-token context."""
    root = tmp_path_factory.mktemp("lc-tools")
    base = build_tiny_model("llama", root / "base", seed=0, context=1024)
    adapters = {f"ad{i}": make_random_adapter(base, root / f"ad{i}", seed=200 + i) for i in range(2)}
    engine = FusionEngine.from_pretrained(base, AdapterCatalog.from_dirs(adapters), progress=False)
    yield ChatQaFlora(engine=engine, max_tokens=8)
    engine.close()


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token, **kwargs) -> None:
        self.tokens.append(token)


# ---------------------------------------------------------------- messages -> chat template
def test_conversation_is_rendered_by_the_chat_template(llama_engine):
    messages = [
        SystemMessage("You add numbers."),
        HumanMessage("What is 1 + 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1", name="add"),
        AIMessage("It is 3."),
        HumanMessage([{"type": "text", "text": "And "}, "2 + 2?"]),
    ]
    chat = to_chat_messages(messages, structured_tool_calls=False)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool", "assistant", "user"]
    text = llama_engine.encode(chat).text
    # the tiny template ignores message.tool_calls, so the call is written the way the model calls tools
    assert '<|assistant|>\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call></s>' in text
    assert "<|tool|>\n3</s>" in text
    assert text.endswith("<|user|>\nAnd 2 + 2?</s>\n<|assistant|>\n")

    structured = to_chat_messages(messages, structured_tool_calls=True)
    call = structured[2]["tool_calls"][0]
    assert call == {
        "id": "c1",
        "type": "function",
        "function": {"name": "add", "arguments": {"a": 1, "b": 2}},
    }
    assert structured[3]["tool_call_id"] == "c1"


def test_tool_error_status_and_chat_message_roles():
    chat = to_chat_messages(
        [
            ChatMessage(role="developer", content="rules"),
            ToolMessage("boom", tool_call_id="x", status="error"),
        ],
        structured_tool_calls=False,
    )
    assert chat[0] == {"role": "system", "content": "rules"}
    assert chat[1]["content"] == "Error: boom"


@pytest.mark.parametrize(
    "message",
    [
        HumanMessage([{"type": "image", "url": "https://example.com/cat.png"}]),
        ChatMessage(role="critic", content="hm"),
        FunctionMessage(name="f", content="1"),
    ],
)
def test_messages_the_template_cannot_express_raise_clearly(llm, message):
    with pytest.raises(ChatTemplateError, match="message 1"):
        llm.invoke([HumanMessage("hi"), message])


def test_prompt_errors_surface_as_value_errors(llm):
    with pytest.raises(EmptyPromptError):
        llm.invoke("   ")
    with pytest.raises(ContextLengthError):
        llm.invoke("word " * 400)


def test_token_count_matches_the_prompt_the_model_gets(llm):
    counted = llm.get_num_tokens_from_messages(QUESTION)
    assert counted == llm.invoke(QUESTION).usage_metadata["input_tokens"]
    assert llm.get_num_tokens_from_messages([HumanMessage("word " * 400)]) > 256  # counts, never raises
    assert llm.get_token_ids("hello") == llm.engine.tokenizer.encode("hello", add_special_tokens=False)


# ---------------------------------------------------------------- options
def test_generation_options_reach_the_engine(llm):
    greedy = llm.invoke(QUESTION)
    assert llm.invoke(QUESTION, temperature=0).content == greedy.content
    # a tiny nucleus keeps only the most likely token: sampling collapses to greedy
    assert llm.bind(temperature=1.0, top_p=1e-6, seed=3).invoke(QUESTION).content == greedy.content
    sampled = llm.bind(temperature=1.5, seed=11)
    assert sampled.invoke(QUESTION).content == sampled.invoke(QUESTION).content
    short = llm.invoke(QUESTION, max_tokens=2)
    assert short.usage_metadata["output_tokens"] <= 2
    assert short.response_metadata["finish_reason"] in ("stop", "length")


def test_stop_sequences_cut_the_answer_and_are_never_streamed(llama_engine):
    llm = ChatQaFlora(engine=llama_engine, max_tokens=10)
    full = llm.invoke(QUESTION).content
    assert len(full) >= 4
    stop = full[2:4]
    cut = full[: full.index(stop)]
    answer = llm.invoke(QUESTION, stop=[stop])
    assert answer.content == cut
    assert answer.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.content for c in llm.stream(QUESTION, stop=[stop]))
    assert streamed == cut
    assert ChatQaFlora(engine=llama_engine, max_tokens=10, stop=[stop]).invoke(QUESTION).content == cut
    # an explicit empty stop list at call time clears the instance's stop strings
    assert (
        ChatQaFlora(engine=llama_engine, max_tokens=10, stop=[stop]).invoke(QUESTION, stop=[]).content == full
    )


def test_fusion_options_per_instance_bind_and_call(llama_engine):
    llm = ChatQaFlora(engine=llama_engine, max_tokens=3, mode="static")
    static = llm.invoke(QUESTION).response_metadata["fusion"]
    assert static["mode"] == "static"
    assert torch.allclose(torch.tensor(static["matrix"]), torch.full((3, llama_engine.num_layers), 1 / 3))

    base = llm.bind(mode="base").invoke(QUESTION).response_metadata
    assert base["adapters"] == [] and base["fusion"]["mode"] == "base"
    single = llm.invoke(QUESTION, mode="single", adapters=["ad1"]).response_metadata
    assert single["adapters"] == ["ad1"]
    top1 = llm.bind(mode="qaflora", top_k=1).invoke(QUESTION).response_metadata
    assert len(top1["adapters"]) == 1 and set(top1["fusion"]["selection_scores"]) == {"ad0", "ad1", "ad2"}
    restricted = llm.bind(mode="qaflora", adapters=["ad0", "ad2"]).invoke(QUESTION).response_metadata
    assert restricted["adapters"] == ["ad0", "ad2"]
    js = llm.invoke(QUESTION, mode="qaflora", divergence="js").response_metadata["fusion"]
    assert js["mode"] == "qaflora"


def test_model_name_of_one_adapter_runs_that_adapter_alone_as_the_server_names_it(llm):
    name = f"{llm.model_name}:ad1"
    message = llm.invoke(QUESTION, model=name)
    assert message.response_metadata["model_name"] == name
    assert message.response_metadata["adapters"] == ["ad1"]
    assert message.response_metadata["fusion"]["mode"] == "single"
    alone = llm.invoke(QUESTION, mode="single", adapters=["ad1"])
    assert message.content == alone.content  # exactly the adapter alone
    streamed = list(llm.stream(QUESTION, model=name))
    assert streamed[-1].response_metadata["model_name"] == name
    assert "".join(c.content for c in streamed) == message.content
    fused = llm.invoke(QUESTION).response_metadata
    assert fused["model_name"] == llm.model_name  # the next call is fused again
    restricted = ChatQaFlora(engine=llm.engine, adapters=["ad0", "ad2"], top_k=1, max_tokens=6)
    assert restricted.invoke(QUESTION, model=name).response_metadata["adapters"] == ["ad1"]  # model= wins
    with pytest.raises(ValueError, match="only apply to the fused model"):
        llm.invoke(QUESTION, model=name, adapters=["ad0"])
    with pytest.raises(ValueError, match="not one of its names"):
        llm.invoke(QUESTION, model=f"{llm.model_name}:nope")


def test_bad_options_fail_loudly(llama_engine, llm):
    with pytest.raises(ConfigError, match="mdoe"):
        llm.invoke(QUESTION, mdoe="base")
    with pytest.raises(ValueError, match="one base model"):
        llm.invoke(QUESTION, model="gpt-4o")
    assert llm.invoke(QUESTION, model=llm.model_name).content
    with pytest.raises(ValueError, match="temprature"):
        ChatQaFlora(engine=llama_engine, temprature=0.2)
    with pytest.raises(KeyError, match="nope"):
        ChatQaFlora(engine=llama_engine, adapters=["nope"])
    with pytest.raises(ValueError, match="catalog"):
        ChatQaFlora()


def test_models_built_from_paths_share_one_engine(llama_zoo, tmp_path, llama_engine):
    catalog = tmp_path / "catalog.yaml"
    llama_zoo.catalog().to_file(catalog)
    a = ChatQaFlora(base_path=str(llama_zoo.base), catalog=str(catalog), max_tokens=4)
    b = ChatQaFlora(base_path=str(llama_zoo.base), catalog=catalog, temperature=0.3)
    assert a.engine is b.engine is shared_engine(llama_zoo.base, catalog)
    assert a.engine is not llama_engine
    assert a.model_name == llama_engine.model_name
    assert a.profile["max_input_tokens"] == 256 and a.profile["tool_calling"] is True


# ---------------------------------------------------------------- metadata and callbacks
def test_metadata_explains_the_answer(llm, llama_engine):
    message = llm.invoke(QUESTION)
    usage = message.usage_metadata
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = message.response_metadata
    assert meta["model_name"] == llama_engine.model_name and meta["model_provider"] == "qaflora"
    assert meta["adapters"] == ["ad0", "ad1", "ad2"]
    matrix = torch.tensor(meta["fusion"]["matrix"])
    assert matrix.shape == (3, llama_engine.num_layers)
    assert torch.allclose(matrix.sum(dim=0), torch.ones(llama_engine.num_layers), atol=1e-4)
    json.dumps(meta)  # a trace can store it as is
    reference = llama_engine.fusion_weights(to_chat_messages(QUESTION, structured_tool_calls=False))
    assert torch.allclose(matrix, reference.matrix.float(), atol=1e-4)


def test_streaming_callbacks_and_last_chunk_metadata(llm):
    handler = Tokens()
    chunks = list(llm.stream(QUESTION, config={"callbacks": [handler]}))
    text = "".join(c.content for c in chunks)
    assert text == llm.invoke(QUESTION).content
    assert "".join(handler.tokens) == text and len(handler.tokens) >= len(chunks) - 1
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1
    last = chunks[-1]
    assert last.chunk_position == "last" and last.usage_metadata["output_tokens"] >= 1
    assert all("model_name" not in c.response_metadata for c in chunks[:-1])
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.response_metadata["model_name"] == llm.model_name
    assert full.response_metadata["fusion"]["adapters"] == ["ad0", "ad1", "ad2"]


def test_invoke_with_streaming_true_feeds_token_callbacks(llama_engine):
    llm = ChatQaFlora(engine=llama_engine, max_tokens=6, streaming=True)
    handler = Tokens()
    message = llm.invoke(QUESTION, config={"callbacks": [handler]})
    assert "".join(handler.tokens) == message.content and message.content
    assert message.usage_metadata["output_tokens"] >= 1


def test_trace_handler_records_each_call_in_a_chain(llm):
    handler = FusionTraceHandler()
    llm.bind(mode="logo", top_k=1).invoke(QUESTION, config={"callbacks": [handler]})
    llm.invoke(QUESTION, config={"callbacks": [handler]})
    first, second = handler.records
    assert first["mode"] == "logo" and len(first["adapters"]) == 1
    assert second["mode"] == "qaflora" and set(second["mean"]) == {"ad0", "ad1", "ad2"}


# ---------------------------------------------------------------- batching: no cross-talk
BATCH = [
    "Solve 12 plus 7 and answer in Russian.",
    "What is the capital of France?",
    [SystemMessage("You write code."), HumanMessage("def add(a, b): return a + b")],
]


def _alone(llm):
    return [llm.invoke(q) for q in BATCH]


def _same(batched, alone):
    for got, ref in zip(batched, alone, strict=True):
        assert got.content == ref.content
        assert torch.allclose(
            torch.tensor(got.response_metadata["fusion"]["matrix"]),
            torch.tensor(ref.response_metadata["fusion"]["matrix"]),
            atol=1e-4,
        )


def test_batch_gives_each_query_its_own_weights(llm):
    alone = _alone(llm)
    matrices = [torch.tensor(m.response_metadata["fusion"]["matrix"]) for m in alone]
    assert not torch.allclose(matrices[0], matrices[1], atol=1e-4), "queries should weigh differently"
    _same(llm.batch(BATCH), alone)


async def test_abatch_gives_each_query_its_own_weights(llm):
    alone = _alone(llm)
    _same(await llm.abatch(BATCH), alone)


# ---------------------------------------------------------------- async: truly async
async def _stall(make_call) -> tuple[object, float, float]:
    """Run a call next to a ticker; return (result, longest gap between ticks, call duration)."""
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = time.perf_counter()
    result = await make_call()
    elapsed = time.perf_counter() - start
    task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(ticks) if a >= start]
    return result, max(gaps, default=elapsed), elapsed


async def test_async_paths_never_block_the_event_loop(llama_engine, monkeypatch):
    llm = ChatQaFlora(engine=llama_engine, max_tokens=24)
    expected = llm.invoke(QUESTION).content

    def forbidden(*args, **kwargs):
        raise AssertionError("async path used the engine's blocking API")

    monkeypatch.setattr(llama_engine, "generate", forbidden)
    monkeypatch.setattr(llama_engine, "stream", forbidden)

    async def astream() -> str:
        return "".join([c.content async for c in llm.astream(QUESTION)])

    for make_call in (lambda: llm.ainvoke(QUESTION), astream):
        result, stall, elapsed = await _stall(make_call)
        assert getattr(result, "content", result) == expected
        # a blocked loop shows up as one gap about as long as the whole generation
        assert stall < elapsed / 2, f"event loop stalled {stall:.3f}s of {elapsed:.3f}s"


def test_timeout_cancels_and_the_engine_stays_usable(llama_engine):
    llm = ChatQaFlora(engine=llama_engine, max_tokens=24, timeout=1e-4)
    with pytest.raises(TimeoutError):
        llm.invoke(QUESTION)
    with pytest.raises(TimeoutError):
        list(llm.stream(QUESTION))
    with pytest.raises(TimeoutError):
        asyncio.run(llm.ainvoke(QUESTION))
    assert llm.invoke(QUESTION, timeout=60, max_tokens=2).content


# ---------------------------------------------------------------- tool calls: parser
def test_parser_reads_hermes_calls_and_keeps_the_text():
    text = (
        'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>{"name": "lookup", "arguments": "{\\"term\\": \\"你好\\"}"}</tool_call>'
    )
    parsed = parse_tool_calls(text, ["add", "lookup"])
    assert parsed.content == "Let me add.\n\n"
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("lookup", {"term": "你好"}),
    ]
    assert all(c["id"].startswith("call_") for c in parsed.tool_calls)
    assert parsed.tool_calls[0]["id"] != parsed.tool_calls[1]["id"]
    assert parsed.invalid_tool_calls == []


@pytest.mark.parametrize(
    ("text", "name", "args"),
    [
        ('<tool_call>{"name": "add", "arguments": {"a": 1}}', "add", {"a": 1}),  # cut before </tool_call>
        ('<tool_call>{"name": "add", "parameters": {"a": 2}}</tool_call>', "add", {"a": 2}),
        ('<tool_call>{"name": "lookup"}</tool_call>', "lookup", {}),
        ('  {"name": "add", "arguments": {"a": 3}}  ', "add", {"a": 3}),  # bare JSON call
    ],
)
def test_parser_variants(text, name, args):
    parsed = parse_tool_calls(text, ["add", "lookup"])
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [(name, args)]
    assert parsed.content == ""


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('<tool_call>{"name": "add", "arguments": {"a": </tool_call>', "not JSON"),
        ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', "unknown tool"),
        ('<tool_call>{"arguments": {}}</tool_call>', "no 'name'"),
        ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', "JSON object"),
        ("<tool_call>[1, 2]</tool_call>", "JSON object"),
    ],
)
def test_parser_turns_malformed_calls_into_invalid_tool_calls(text, error):
    parsed = parse_tool_calls(text, ["add"])
    assert parsed.tool_calls == []
    assert len(parsed.invalid_tool_calls) == 1 and error in parsed.invalid_tool_calls[0]["error"]
    call = parsed.invalid_tool_calls[0]
    assert call["args"] == text.removeprefix("<tool_call>").removesuffix("</tool_call>").strip()
    if '"name": "add"' in text:
        assert call["name"] == "add"


def test_parser_leaves_plain_text_alone():
    assert parse_tool_calls("just words {not json}", ["add"]).content == "just words {not json}"
    assert parse_tool_calls('{"name": "add"}', ["add"]).tool_calls == []  # JSON, but not a call
    assert parse_tool_calls('{"name": "add", "arguments": {}}', None).tool_calls == []


@pytest.mark.parametrize(
    "text",
    [
        'Sure: <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call> done',
        "No tools <tool here, just text <tool_ca",
        '{"name": "add", "arguments": {"a": 5}}',
        "{not a call at all}",
        '  \n<tool_call>{"name": "nope"}</tool_call>',
    ],
)
def test_stream_splitter_adds_up_to_the_parse_of_the_whole_text(text):
    whole = parse_tool_calls(text, ["add"])
    for size in (1, 3, 7):
        splitter = ToolCallStreamSplitter(["add"])
        streamed = "".join(splitter.feed(text[i : i + size]) for i in range(0, len(text), size))
        assert "<tool_call>" not in streamed
        rest = splitter.finish()
        assert streamed + rest.content == whole.content
        assert [c["args"] for c in rest.tool_calls] == [c["args"] for c in whole.tool_calls]
        assert len(rest.invalid_tool_calls) == len(whole.invalid_tool_calls)


def test_tool_choice_spellings():
    names = ["add", "lookup"]
    assert normalize_tool_choice(None, names) is None
    assert normalize_tool_choice("auto", names) is None
    assert normalize_tool_choice("none", names) == "none"
    assert normalize_tool_choice("required", names) == normalize_tool_choice(True, names) == "any"
    assert normalize_tool_choice({"type": "function", "function": {"name": "add"}}, names) == "add"
    with pytest.raises(ValueError, match="bound tools"):
        normalize_tool_choice("rm_rf", names)
    assert template_supports_tools("{% if tools %}...{% endif %}")
    assert not template_supports_tools("{{ messages }}") and not template_supports_tools(None)


# ---------------------------------------------------------------- tool calls: through the model
def test_bind_tools_renders_tools_and_a_tool_round_trip_runs(tool_llm):
    llm = tool_llm
    bound = llm.bind_tools([add, lookup])
    plain = llm.get_num_tokens_from_messages(QUESTION)
    answer = bound.invoke(QUESTION)
    with_tools = llm.get_num_tokens_from_messages(QUESTION, tools=[add, lookup])
    assert answer.usage_metadata["input_tokens"] == with_tools > plain  # the tools are in the prompt
    history = [
        HumanMessage("What is 1 + 2?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1"),
    ]
    assert isinstance(bound.invoke(history), AIMessage)
    assert bound.invoke(QUESTION, tool_choice="none").usage_metadata["input_tokens"] == plain
    with pytest.raises(ValueError, match="bound tools"):
        llm.bind_tools([add], tool_choice="lookup")


def test_forced_tool_choice_is_one_valid_call_for_the_model(tool_llm):
    """Random weights, yet every forced answer is one call, valid under the tool's parameters:
    the engine's grammar writes what the model cannot (given room for a whole call)."""
    schemas = {t.name: t.tool_call_schema.model_json_schema() for t in (add, lookup)}
    for choice in ("add", "lookup", "any"):
        bound = tool_llm.bind_tools([add, lookup], tool_choice=choice).bind(max_tokens=120)
        for question in (QUESTION, "What is 1 + 2?", "Define entropy."):
            message = bound.invoke(question)
            assert message.invalid_tool_calls == [] and len(message.tool_calls) == 1, message
            call = message.tool_calls[0]
            assert choice == "any" or call["name"] == choice
            jsonschema.validate(call["args"], schemas[call["name"]])


def test_auto_tool_choice_lets_the_model_write_text(tool_llm):
    message = tool_llm.bind_tools([add, lookup]).invoke(QUESTION)  # 8 tokens of free text, or a call
    assert message.invalid_tool_calls == [] or message.response_metadata["finish_reason"] == "length"


def test_forced_tool_choice_under_a_short_budget(tool_llm):
    """8 tokens cannot hold a call: the answer is cut (``length``), never turned into a valid,
    executable call, and a stream gives the same verdict as invoke."""
    forced = tool_llm.bind_tools([add, lookup], tool_choice="add")
    message = forced.invoke(QUESTION)
    assert message.response_metadata["finish_reason"] == "length"
    assert message.tool_calls == []
    streamed = None
    for chunk in forced.stream(QUESTION):
        streamed = chunk if streamed is None else streamed + chunk
    assert isinstance(streamed, AIMessageChunk)
    assert streamed.content == message.content
    # LangChain's chunk aggregation repairs truncated JSON, and must not turn a cut call into a
    # valid one
    assert streamed.tool_calls == []
    assert len(streamed.invalid_tool_calls) == len(message.invalid_tool_calls)


class Person(BaseModel):
    """A person."""

    name: str = Field(max_length=12)
    age: int


@pytest.fixture
def roomy_llm(tool_llm) -> ChatQaFlora:
    """The tool model with room for a whole JSON answer."""
    return ChatQaFlora(engine=tool_llm.engine, max_tokens=120)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_is_an_instance_of_the_schema_every_time(roomy_llm, method):
    structured = roomy_llm.with_structured_output(Person, method=method)
    prompts = ["Alice is 30.", "Bob, 41 years old.", "Who is Carol?", "Tell me about Dan."]
    for person in structured.batch(prompts):
        assert isinstance(person, Person)
    as_dict = roomy_llm.with_structured_output(Person.model_json_schema(), method=method)
    jsonschema.validate(as_dict.invoke("Alice is 30."), Person.model_json_schema())


def test_json_mode_gives_a_json_object_and_streams_it(roomy_llm):
    structured = roomy_llm.with_structured_output(None, method="json_mode")
    value = structured.invoke("Reply in JSON.")
    assert isinstance(value, dict)
    assert list(structured.stream("Reply in JSON."))[-1] == value


def test_structured_output_with_raw_and_clear_errors(tool_llm, roomy_llm):
    out = roomy_llm.with_structured_output(Person, method="json_schema", include_raw=True)
    result = out.invoke("Alice is 30.")
    assert isinstance(result["parsed"], Person) and result["parsing_error"] is None
    assert json.loads(result["raw"].content) == result["parsed"].model_dump()
    with pytest.raises(ValueError, match="method"):
        tool_llm.with_structured_output(Person, method="xml")
    with pytest.raises(ValueError, match="needs a schema"):
        tool_llm.with_structured_output(None, method="json_schema")
    with pytest.raises(ValueError, match="response_format must be"):
        tool_llm.invoke("hi", response_format={"type": "json_schema"})
    with pytest.raises(ValueError, match="cannot be combined"):
        tool_llm.bind_tools([add]).invoke("hi", response_format={"type": "json_object"})
    assert isinstance(tool_llm.invoke("hi"), AIMessage)  # the model is still usable


def test_structured_output_by_default_forces_a_valid_call_to_the_schema(roomy_llm):
    out = roomy_llm.with_structured_output(Person, include_raw=True).invoke("Alice is 30.")
    raw = out["raw"]
    assert raw.invalid_tool_calls == [] and [c["name"] for c in raw.tool_calls] == ["Person"]
    assert isinstance(out["parsed"], Person) and out["parsed"].model_dump() == raw.tool_calls[0]["args"]
