"""QaFloraLLM against real llama-index-core: metadata, sync/async/streaming, callbacks, options.

The tiny random model answers gibberish, so answers are checked against the engine
itself (greedy decoding is deterministic): the LLM must send exactly the prompt the
engine would build for the same messages, and report the engine's own weights and usage.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
)
from llama_index.core.prompts import PromptTemplate
from pydantic import BaseModel
from pydantic import Field as PydanticField
from qaflora.errors import (
    ChatTemplateError,
    ConfigError,
    ContextLengthError,
    EmptyPromptError,
    RequestTimeoutError,
)

from qaflora_integrations.llama_index import FusionTraceHandler, QaFloraLLM, to_engine_messages

MAX_NEW = 6
QUERIES = [
    "Solve 12 plus 7 and answer in Russian.",
    "def add(a, b): return a + b",
    "The patient has a fever.",
]


class EventLog(BaseEventHandler):
    """Records LLM start/end events with the class name of the LLM that emitted them."""

    events: list[tuple[str, Any]] = Field(default_factory=list)

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMCompletionStartEvent | LLMChatStartEvent):
            self.events.append((type(event).__name__, event.model_dict.get("class_name")))
        elif isinstance(event, LLMCompletionEndEvent | LLMChatEndEvent):
            self.events.append((type(event).__name__, event.response))


@pytest.fixture
def events():
    log = EventLog(events=[])
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(log)
    yield log.events
    dispatcher.event_handlers.remove(log)


@pytest.fixture
def llm(llama_engine) -> QaFloraLLM:
    return QaFloraLLM(llama_engine, max_new_tokens=MAX_NEW)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------- construction


def test_metadata_reports_the_models_window(llm, llama_engine):
    meta = llm.metadata
    assert meta.context_window == llama_engine.context_window == 256
    assert meta.num_output == MAX_NEW
    assert meta.is_chat_model is True
    assert meta.model_name == llama_engine.model_name
    # A larger window than the model's would make LlamaIndex pack prompts that cannot fit.
    assert QaFloraLLM(llama_engine, context_window=4096).metadata.context_window == 256
    assert QaFloraLLM(llama_engine, context_window=200).metadata.context_window == 200
    # Default output budget leaves room for a prompt in a tiny window.
    assert QaFloraLLM(llama_engine).metadata.num_output <= 256 // 4
    with pytest.raises(ConfigError):
        QaFloraLLM(llama_engine, max_new_tokens=256)


def test_built_from_paths_reuses_the_loaded_engine(llama_zoo, tmp_path):
    catalog = llama_zoo.catalog().model_copy(update={"base_model": llama_zoo.base})
    catalog.to_file(tmp_path / "catalog.yaml")
    # The engine cache is process-wide (shared with LangChain): never cleared here, the
    # tiny engine just stays loaded for the session.
    first = QaFloraLLM(catalog=tmp_path / "catalog.yaml", max_new_tokens=3)  # base from the catalog
    second = QaFloraLLM(base_path=llama_zoo.base, catalog=tmp_path / "catalog.yaml", mode="static")
    assert first.engine is second.engine
    assert first.engine.adapter_names == ["ad0", "ad1", "ad2"]
    assert second.complete("hi").additional_kwargs["fusion_weights"]["mode"] == "static"
    assert first.complete("hi").additional_kwargs["fusion_weights"]["mode"] == "qaflora"
    # LlamaIndex serialises components; the dict rebuilds the same LLM on the same engine.
    rebuilt = QaFloraLLM.from_dict(second.to_dict())
    assert rebuilt.engine is first.engine
    assert rebuilt.mode == "static"
    assert rebuilt.base_path == str(llama_zoo.base)


def test_bad_options_fail_at_construction(llama_engine):
    with pytest.raises(ConfigError, match="top_k"):
        QaFloraLLM(llama_engine, generate_kwargs={"top_k": 50})  # sampling top-k is not ours
    with pytest.raises(ConfigError, match="temperature given twice"):
        QaFloraLLM(llama_engine, temperature=0.5, generate_kwargs={"temperature": 0.7})
    with pytest.raises(ConfigError):
        QaFloraLLM(llama_engine, mode="nonsense")
    with pytest.raises(ConfigError):
        QaFloraLLM(llama_engine, fusion_kwargs={"divergence": "hamming"})
    with pytest.raises(Exception, match="unknown adapter"):
        QaFloraLLM(llama_engine, adapters=["nope"])
    with pytest.raises(ConfigError):
        QaFloraLLM(catalog=None)


# ---------------------------------------------------------------------------------- completion


def test_complete_sends_one_user_message_through_the_chat_template(llm, llama_engine):
    expected = llama_engine.generate(user(QUERIES[0]), max_new_tokens=MAX_NEW)
    response = llm.complete(QUERIES[0])
    assert response.text == expected.text
    meta = response.additional_kwargs
    assert meta["adapters"] == expected.adapters == ["ad0", "ad1", "ad2"]
    assert meta["fusion_weights"] == expected.weights.to_dict()
    assert meta["prompt_tokens"] == len(llama_engine.encode(QUERIES[0]).ids)
    assert meta["completion_tokens"] == expected.usage.completion_tokens
    assert meta["total_tokens"] == meta["prompt_tokens"] + meta["completion_tokens"]
    assert response.raw["usage"] == meta["usage"]


def test_complete_formatted_passes_the_prompt_untouched(llm, llama_engine):
    prompt = "<|user|>\nhello</s>\n<|assistant|>\n"
    expected = llama_engine.generate(prompt, formatted=True, max_new_tokens=MAX_NEW)
    response = llm.complete(prompt, formatted=True)
    assert response.text == expected.text
    assert response.additional_kwargs["prompt_tokens"] == len(llama_engine.encode(prompt, formatted=True).ids)
    # Without formatted=True the same text would be wrapped into the template once more.
    wrapped = llm.complete(prompt).additional_kwargs["prompt_tokens"]
    assert wrapped > response.additional_kwargs["prompt_tokens"]


def test_system_prompt_becomes_a_system_message(llama_engine):
    llm = QaFloraLLM(llama_engine, max_new_tokens=MAX_NEW, system_prompt="Be brief.")
    messages = [{"role": "system", "content": "Be brief."}, *user(QUERIES[1])]
    expected = llama_engine.generate(messages, max_new_tokens=MAX_NEW)
    response = llm.complete(QUERIES[1])
    assert response.text == expected.text
    assert response.additional_kwargs["prompt_tokens"] == len(llama_engine.encode(messages).ids)


def test_custom_completion_to_prompt_is_honoured(llama_engine):
    llm = QaFloraLLM(llama_engine, max_new_tokens=MAX_NEW, completion_to_prompt=lambda p: f"Q: {p}\nA:")
    response = llm.complete("hello")
    assert response.additional_kwargs["prompt_tokens"] == len(
        llama_engine.encode("Q: hello\nA:", formatted=True).ids
    )


def test_stream_complete_ends_with_a_chunk_carrying_usage_and_weights(llm):
    full = llm.complete(QUERIES[0])
    chunks = list(llm.stream_complete(QUERIES[0]))
    assert "".join(c.delta for c in chunks) == full.text
    assert chunks[-1].text == full.text
    assert all("fusion_weights" not in c.additional_kwargs for c in chunks[:-1])
    assert chunks[-1].additional_kwargs["fusion_weights"] == full.additional_kwargs["fusion_weights"]
    assert chunks[-1].additional_kwargs["usage"] == full.additional_kwargs["usage"]
    assert chunks[-1].raw["usage"]["completion_tokens"] == full.additional_kwargs["completion_tokens"]


def test_closing_a_stream_early_leaves_the_llm_usable(llm):
    stream = llm.stream_chat([ChatMessage(role="user", content=QUERIES[0])], max_new_tokens=32)
    first = next(stream)
    assert first.delta is not None
    stream.close()
    assert llm.complete(QUERIES[1]).additional_kwargs["completion_tokens"] > 0


def test_streaming_errors_raise_at_call_time_not_at_first_iteration(llm):
    with pytest.raises(EmptyPromptError):
        llm.stream_complete("   ")
    with pytest.raises(ContextLengthError):
        llm.stream_chat([ChatMessage(role="user", content="word " * 400)])
    with pytest.raises(ConfigError):
        llm.stream_complete("hi", mood="happy")
    assert llm.complete("hi").text is not None  # the engine is still fine


# ---------------------------------------------------------------------------------- chat


def test_roles_map_to_chat_template_roles():
    messages = [
        ChatMessage(role=MessageRole.DEVELOPER, content="rules"),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="a"), TextBlock(text="b")]),
        ChatMessage(role=MessageRole.MODEL, content="c"),
        ChatMessage(role=MessageRole.FUNCTION, content="42"),
        ChatMessage(role=MessageRole.CHATBOT, content="d"),
    ]
    assert to_engine_messages(messages) == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "c"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "d"},
    ]
    image = ChatMessage(role="user", blocks=[TextBlock(text="look"), ImageBlock(url="http://x/y.png")])
    with pytest.raises(ChatTemplateError, match="ImageBlock"):
        to_engine_messages([image])


def test_chat_uses_the_base_chat_template(llm, llama_engine):
    history = [
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content=QUERIES[2]),
    ]
    as_dicts = to_engine_messages(history)
    expected = llama_engine.generate(as_dicts, max_new_tokens=MAX_NEW)
    response = llm.chat(history)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == expected.text
    assert response.additional_kwargs["prompt_tokens"] == len(llama_engine.encode(as_dicts).ids)
    assert response.additional_kwargs["fusion_weights"] == expected.weights.to_dict()

    chunks = list(llm.stream_chat(history))
    assert "".join(c.delta for c in chunks) == expected.text
    assert chunks[-1].message.content == expected.text
    assert chunks[-1].additional_kwargs["usage"] == response.additional_kwargs["usage"]


def test_predict_goes_through_chat(llm, llama_engine, events):
    output = llm.predict(PromptTemplate("Say {word}."), word="hello")
    assert output == llama_engine.generate(user("Say hello."), max_new_tokens=MAX_NEW).text
    assert ("LLMChatStartEvent", "QaFloraLLM") in events
    assert not any(name == "LLMCompletionStartEvent" for name, _ in events)


# ---------------------------------------------------------------------------------- options


def test_per_call_and_per_instance_fusion_options(llama_engine):
    llm = QaFloraLLM(llama_engine, max_new_tokens=MAX_NEW, mode="static")
    assert llm.complete("hi").additional_kwargs["fusion_weights"]["mode"] == "static"
    single = llm.complete("hi", mode="single", adapters=["ad1"]).additional_kwargs
    assert single["adapters"] == ["ad1"]
    assert single["fusion_weights"]["mode"] == "single"
    assert llm.complete("hi", max_new_tokens=2).additional_kwargs["completion_tokens"] <= 2
    top = QaFloraLLM(llama_engine, max_new_tokens=2, top_k=2).complete("hi").additional_kwargs
    assert len(top["adapters"]) == 2
    assert len(llm.complete("hi", mode="qaflora", top_k=1).additional_kwargs["adapters"]) == 1  # per call
    js = QaFloraLLM(llama_engine, max_new_tokens=2, fusion_kwargs={"divergence": "js"})
    js_weights = js.complete(QUERIES[0]).additional_kwargs["fusion_weights"]["matrix"]
    kl_weights = llama_engine.fusion_weights(QUERIES[0]).matrix
    assert not torch.allclose(torch.tensor(js_weights), kl_weights.float(), atol=1e-6)
    with pytest.raises(ConfigError):
        llm.complete("hi", mood="happy")
    # The payload LlamaIndex puts on every event names the effective fusion settings.
    assert llm.to_payload()["fusion"]["mode"] == "static"


def test_stop_strings_cut_the_answer(llm):
    text = llm.complete(QUERIES[0], max_new_tokens=12).text
    stop = next((text[i : i + 2] for i in range(1, len(text) - 1) if text[i : i + 2].isprintable()), None)
    assert stop is not None, f"no printable 2-char window in {text!r}"
    cut = llm.complete(QUERIES[0], max_new_tokens=12, stop=[stop])
    assert cut.text == text[: text.find(stop)]
    assert cut.additional_kwargs["finish_reason"] == "stop"
    instance = QaFloraLLM(llm.engine, max_new_tokens=12, stop=stop).complete(QUERIES[0])
    assert instance.text == cut.text


def test_timeouts_cancel_the_request(llama_engine):
    llm = QaFloraLLM(llama_engine, max_new_tokens=64, timeout=1e-4)
    with pytest.raises(RequestTimeoutError):
        llm.complete(QUERIES[0])
    with pytest.raises(RequestTimeoutError):
        list(llm.stream_chat([ChatMessage(role="user", content=QUERIES[0])]))
    with pytest.raises(RequestTimeoutError):
        QaFloraLLM(llama_engine, max_new_tokens=64).complete(QUERIES[0], timeout=1e-4)
    # a generous per-call timeout overrides the instance's
    assert llm.complete(QUERIES[0], timeout=60).additional_kwargs["completion_tokens"] > 0


async def test_async_timeout(llama_engine):
    llm = QaFloraLLM(llama_engine, max_new_tokens=64, timeout=1e-4)
    with pytest.raises(RequestTimeoutError):
        await llm.acomplete(QUERIES[0])
    assert (await llm.acomplete(QUERIES[0], timeout=60)).text is not None


# ---------------------------------------------------------------------------------- callbacks


def test_every_entry_point_is_instrumented(llm, events):
    async def run_async() -> None:
        await llm.acomplete("a")
        await llm.achat([ChatMessage(role="user", content="b")])
        async for _ in await llm.astream_complete("c"):
            pass
        async for _ in await llm.astream_chat([ChatMessage(role="user", content="d")]):
            pass

    llm.complete("e")
    llm.chat([ChatMessage(role="user", content="f")])
    list(llm.stream_complete("g"))
    list(llm.stream_chat([ChatMessage(role="user", content="h")]))
    asyncio.run(run_async())

    starts = [name for name, cls in events if name.endswith("StartEvent") and cls == "QaFloraLLM"]
    ends = [resp for name, resp in events if name.endswith("EndEvent")]
    assert starts.count("LLMCompletionStartEvent") == 4
    assert starts.count("LLMChatStartEvent") == 4
    assert len(ends) == 8
    assert all("fusion_weights" in r.additional_kwargs and r.additional_kwargs["usage"] for r in ends)


def test_token_counting_handler_gets_our_token_counts(llama_engine):
    counter = TokenCountingHandler()
    llm = QaFloraLLM(llama_engine, max_new_tokens=MAX_NEW, callback_manager=CallbackManager([counter]))
    chunks = list(llm.stream_chat([ChatMessage(role="user", content=QUERIES[0])]))
    usage = chunks[-1].additional_kwargs["usage"]
    assert (
        counter.prompt_llm_token_count == usage["prompt_tokens"] == len(llama_engine.encode(QUERIES[0]).ids)
    )
    assert counter.completion_llm_token_count == usage["completion_tokens"]


def test_fusion_trace_handler_collects_weights(llm):
    trace = FusionTraceHandler()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(trace)
    try:
        list(llm.stream_complete(QUERIES[1]))
        llm.chat([ChatMessage(role="user", content=QUERIES[2])])
    finally:
        dispatcher.event_handlers.remove(trace)
    assert len(trace.records) == 2
    assert trace.last["adapters"] == ["ad0", "ad1", "ad2"]
    assert len(trace.last["fusion_weights"]["matrix"]) == 3


# ---------------------------------------------------------------------------------- async


async def test_acomplete_does_not_block_the_event_loop(llm):
    task = asyncio.create_task(llm.acomplete(QUERIES[0], max_new_tokens=8))
    await asyncio.sleep(0)  # the task runs up to its first await
    # CustomLLM's default acomplete would have generated synchronously inside that step.
    assert not task.done()
    assert (await task).additional_kwargs["completion_tokens"] > 0


async def test_concurrent_acomplete_gets_per_query_weights(llm):
    one_by_one = [llm.complete(q) for q in QUERIES]
    together = await asyncio.gather(*(llm.acomplete(q) for q in QUERIES))
    for alone, batched in zip(one_by_one, together, strict=True):
        assert batched.text == alone.text
        a = torch.tensor(alone.additional_kwargs["fusion_weights"]["matrix"])
        b = torch.tensor(batched.additional_kwargs["fusion_weights"]["matrix"])
        assert torch.allclose(a, b, atol=1e-4)
    matrices = [torch.tensor(r.additional_kwargs["fusion_weights"]["matrix"]) for r in together]
    assert not torch.allclose(matrices[0], matrices[1], atol=1e-4)  # each query its own weights


async def test_astream_matches_acomplete(llm):
    full = await llm.acomplete(QUERIES[2])
    chunks = [c async for c in await llm.astream_complete(QUERIES[2])]
    assert "".join(c.delta for c in chunks) == full.text
    assert chunks[-1].additional_kwargs["usage"] == full.additional_kwargs["usage"]
    chat_chunks = [c async for c in await llm.astream_chat([ChatMessage(role="user", content=QUERIES[2])])]
    assert chat_chunks[-1].message.content == full.text
    assert chat_chunks[-1].additional_kwargs["fusion_weights"] == full.additional_kwargs["fusion_weights"]


# ---------------------------------------------------------------------------------- reading hint


@pytest.fixture(scope="module")
def reading_llm(long_zoo):
    """The default policy over the tiny long-context zoo (a query engine's prompt needs room),
    ``ad1`` catalogued ``kind="reading"``; no drift reaches the floor, so an adapter is used only
    when a hint keeps it."""
    from qaflora import FusionEngine

    catalog = long_zoo.catalog(kinds={"ad1": "reading"})
    engine = FusionEngine.from_pretrained(long_zoo.base, catalog, progress=False)
    yield QaFloraLLM(engine, max_new_tokens=2, fusion_kwargs={"relevance_floor": 1e9})
    engine.close()


@pytest.fixture
def trace():
    handler = FusionTraceHandler()
    get_dispatcher().add_event_handler(handler)
    yield handler
    get_dispatcher().event_handlers.remove(handler)


QA = PromptTemplate("Context:\n{context_str}\nQuestion: {query_str}\nAnswer:")


def test_retrieved_context_in_a_template_asks_for_the_reading_adapter(reading_llm, trace):
    reading_llm.predict(QA, context_str="The flu is treated with penicillin.", query_str="which drug ?")
    assert trace.last["adapters"] == ["ad1"]
    assert trace.last["fusion_weights"]["matrix"] == [[1.0] * reading_llm.engine.num_layers]
    reading_llm.predict(QA, context_str="  ", query_str="which drug ?")  # no retrieved text
    reading_llm.predict(PromptTemplate("Say {word}."), word="hello")
    reading_llm.complete("Context: the flu. Question: which drug ?")  # no template, no hint
    assert [r["adapters"] for r in trace.records[1:]] == [[], [], []]
    off = reading_llm.model_copy(update={"reading_hint": False})
    off.predict(QA, context_str="The flu is treated with penicillin.", query_str="which drug ?")
    assert trace.last["adapters"] == []


async def test_the_reading_hint_reaches_streams_and_async_calls_only_of_its_call(reading_llm, trace):
    args = {"context_str": "The flu is treated with penicillin.", "query_str": "which drug ?"}
    "".join(reading_llm.stream(QA, **args))
    await reading_llm.apredict(QA, **args)
    "".join([token async for token in await reading_llm.astream(QA, **args)])
    await asyncio.gather(  # at once: each call keeps its own hint
        reading_llm.apredict(PromptTemplate("Say {word}."), word="hello"), reading_llm.apredict(QA, **args)
    )
    assert [r["adapters"] for r in trace.records[:3]] == [["ad1"]] * 3
    assert sorted(map(tuple, (r["adapters"] for r in trace.records[3:]))) == [(), ("ad1",)]


def test_a_query_engine_answers_with_the_reading_adapter(reading_llm, trace):
    from llama_index.core import Document, MockEmbedding, VectorStoreIndex

    documents = [Document(text="The flu is treated with penicillin.")]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    index.as_query_engine(llm=reading_llm, similarity_top_k=1).query("which drug treats flu ?")
    assert trace.records and all(r["adapters"] == ["ad1"] for r in trace.records)


# ----------------------------------------------------------------------------- structured output


class Person(BaseModel):
    """A person."""

    name: str = PydanticField(max_length=12)
    age: int


@pytest.fixture(scope="module")
def roomy_llm(long_engine) -> QaFloraLLM:
    """The tiny long-context Llama: room for LlamaIndex's schema instructions and a whole answer."""
    return QaFloraLLM(long_engine, max_new_tokens=120)


PERSON_PROMPT = PromptTemplate("Tell me about {who}.")
WHO = ["Alice, 30", "Bob", "Carol the baker", "Dan"]


def test_structured_predict_is_an_instance_of_the_schema_every_time(roomy_llm):
    for who in WHO:
        assert isinstance(roomy_llm.structured_predict(Person, PERSON_PROMPT, who=who), Person)
    response = roomy_llm.as_structured_llm(Person).complete("Who is Eve?")
    assert isinstance(response.raw, Person)
    assert Person.model_validate_json(response.text) == response.raw


def test_structured_predict_without_the_grammar_is_left_to_the_model(roomy_llm):
    """The control: a caller's own constraint (here none) is kept, and random weights write no
    parseable person, so the grammar above is what made every answer parse."""
    with pytest.raises(ValueError):
        roomy_llm.structured_predict(Person, PERSON_PROMPT, llm_kwargs={"constraint": None}, who=WHO[0])


def test_structured_predict_async_and_streamed(roomy_llm):
    async def both() -> list[Person]:
        return await asyncio.gather(
            *(roomy_llm.astructured_predict(Person, PERSON_PROMPT, who=who) for who in WHO[:2])
        )

    assert all(isinstance(person, Person) for person in asyncio.run(both()))
    partials = list(roomy_llm.stream_structured_predict(Person, PERSON_PROMPT, who=WHO[2]))
    assert partials and isinstance(partials[-1], Person)

    async def streamed() -> list[Any]:
        return [
            p async for p in await roomy_llm.astream_structured_predict(Person, PERSON_PROMPT, who=WHO[3])
        ]

    assert isinstance(asyncio.run(streamed())[-1], Person)
