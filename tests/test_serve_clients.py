"""Real clients against a live ``qaflora serve`` app on loopback: the official ``openai``
package (sync, async, stream), LangChain's ``ChatOpenAI`` in a chain and LlamaIndex's
``OpenAILike`` in a query engine. Answers are compared with the engine's own.

Every client gets an HTTP connection pool the test closes (``http``/``httpx.AsyncClient``):
left to the garbage collector, their sockets were reported as unclosed in whichever later
test the collection happened to run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from llama_index.core import Document, MockEmbedding, PromptHelper, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.response_synthesizers import CompactAndRefine
from llama_index.llms.openai_like import OpenAILike

MAX = 8
QUESTION = "Which drug treats the fever?"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def http():
    """A sync connection pool for LangChain's and LlamaIndex's clients, closed after the test."""
    with httpx.Client() as pool:
        yield pool


@pytest.fixture
def client(long_server):
    with openai.OpenAI(base_url=long_server.base_url, api_key="unused", max_retries=0) as client:
        yield client


# ---------------------------------------------------------------------- openai
def test_openai_sync_chat_and_completion(client, long_engine):
    response = client.chat.completions.create(model="base", messages=user(QUESTION), max_tokens=MAX)
    direct = long_engine.generate(user(QUESTION), max_new_tokens=MAX)
    assert response.choices[0].message.content == direct.text
    assert response.usage.completion_tokens == direct.usage.completion_tokens
    assert response.model_extra["fusion"]["adapters"] == direct.weights.adapters

    text = client.completions.create(model="base:ad1", prompt="The patient has a fever;", max_tokens=MAX)
    alone = long_engine.generate(
        "The patient has a fever;", formatted=True, max_new_tokens=MAX, mode="single", adapters=["ad1"]
    )
    assert text.choices[0].text == alone.text
    assert [m.id for m in client.models.list()] == ["base", "base:ad0", "base:ad1"]


def test_openai_stream_with_usage_and_fusion(client, long_engine):
    direct = long_engine.generate(user(QUESTION), max_new_tokens=MAX, mode="single", adapters=["ad0"])
    stream = client.chat.completions.create(
        model="base",
        messages=user(QUESTION),
        max_tokens=MAX,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"fusion": {"mode": "single", "adapters": ["ad0"]}},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.text
    assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens
    assert chunks[-1].model_extra["fusion"]["adapters"] == ["ad0"]


async def test_openai_async_concurrent_requests_get_their_own_answers(long_server, long_engine):
    async with openai.AsyncOpenAI(base_url=long_server.base_url, api_key="unused", max_retries=0) as client:
        variants = [{"mode": "base"}, {"mode": "single", "adapters": ["ad1"]}, {"mode": "static"}]
        questions = ["Solve 12 plus 7.", QUESTION]
        cases = [(q, v) for q in questions for v in variants]

        async def ask(question: str, fusion: dict[str, Any]) -> str:
            response = await client.chat.completions.create(
                model="base", messages=user(question), max_tokens=MAX, extra_body={"fusion": fusion}
            )
            return response.choices[0].message.content

        async def ask_streaming(question: str, fusion: dict[str, Any]) -> str:
            stream = await client.chat.completions.create(
                model="base",
                messages=user(question),
                max_tokens=MAX,
                stream=True,
                extra_body={"fusion": fusion},
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        answers = await asyncio.gather(
            *(ask(q, v) for q, v in cases), *(ask_streaming(q, v) for q, v in cases)
        )
        expected = [long_engine.generate(user(q), max_new_tokens=MAX, **v).text for q, v in cases]
        assert answers == expected + expected
        await client.close()


# ---------------------------------------------------------------------- LangChain
def _chat_openai(server, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model=kwargs.pop("model", "base"),
        base_url=server.base_url,
        api_key="unused",
        max_tokens=MAX,
        temperature=0,
        max_retries=0,
        **kwargs,
    )


def test_langchain_chat_openai_in_a_chain(long_server, long_engine, http):
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])
    chain = prompt | _chat_openai(long_server, http_client=http) | StrOutputParser()
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    direct = long_engine.generate(messages, max_new_tokens=MAX)
    assert chain.invoke({"question": QUESTION}) == direct.text
    assert "".join(chain.stream({"question": QUESTION})) == direct.text


def test_langchain_chat_openai_reports_usage_and_selects_adapters(long_server, long_engine, http):
    alone = _chat_openai(long_server, model="base:ad1", http_client=http).invoke(QUESTION)
    direct = long_engine.generate(user(QUESTION), max_new_tokens=MAX, mode="single", adapters=["ad1"])
    assert alone.content == direct.text
    assert alone.usage_metadata["output_tokens"] == direct.usage.completion_tokens
    assert alone.response_metadata["model_name"] == "base:ad1"

    fused = _chat_openai(
        long_server,
        extra_body={"fusion": {"mode": "oracle", "oracle_weights": {"ad0": 2.0}}},
        http_client=http,
    )
    oracle = long_engine.generate(
        user(QUESTION), max_new_tokens=MAX, mode="oracle", oracle_weights={"ad0": 2.0}
    )
    assert fused.invoke(QUESTION).content == oracle.text


async def test_langchain_async_batch(long_server, long_engine):
    questions = ["Solve 12 plus 7.", QUESTION, "def add(a, b):"]
    async with httpx.AsyncClient() as pool:
        answers = await _chat_openai(long_server, http_async_client=pool).abatch(questions)
    assert [a.content for a in answers] == [
        long_engine.generate(user(q), max_new_tokens=MAX).text for q in questions
    ]


# ---------------------------------------------------------------------- LlamaIndex
class ChatStarts(BaseEventHandler):
    """The messages each LLM chat call received (to ask the engine the very same thing)."""

    messages: list[list[ChatMessage]] = Field(default_factory=list)

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, LLMChatStartEvent):
            self.messages.append(list(event.messages))


@pytest.fixture
def chat_starts():
    handler = ChatStarts()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(handler)
    yield handler
    dispatcher.event_handlers.remove(handler)


def _openai_like(server, engine, **pools: Any) -> OpenAILike:
    return OpenAILike(
        model="base",
        api_base=server.base_url,
        api_key="unused",
        is_chat_model=True,
        context_window=engine.context_window,
        max_tokens=MAX,
        temperature=0,
        max_retries=0,
        **pools,
    )


def _query_engine(server, engine, http: httpx.Client, *, streaming: bool):
    llm = _openai_like(server, engine, http_client=http)

    def count(text: str) -> list[int]:  # the model's own tokenizer: LlamaIndex's default downloads one
        return engine.tokenizer.encode(text, add_special_tokens=False)

    documents = [
        Document(text="Aspirin lowers fever. The patient has a fever."),
        Document(text="Paris is the capital of France."),
    ]
    index = VectorStoreIndex.from_documents(
        documents, embed_model=MockEmbedding(embed_dim=8), transformations=[SentenceSplitter(tokenizer=count)]
    )
    synthesizer = CompactAndRefine(
        llm=llm,
        prompt_helper=PromptHelper.from_llm_metadata(llm.metadata, tokenizer=count),
        streaming=streaming,
    )
    return llm, index.as_query_engine(llm=llm, response_synthesizer=synthesizer, similarity_top_k=2)


def _as_engine_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    roles = {MessageRole.SYSTEM: "system", MessageRole.USER: "user", MessageRole.ASSISTANT: "assistant"}
    return [{"role": roles[m.role], "content": m.content} for m in messages]


def test_llama_index_openai_like_in_a_query_engine(long_server, long_engine, chat_starts, http):
    _, query_engine = _query_engine(long_server, long_engine, http, streaming=False)
    response = query_engine.query(QUESTION)
    assert len(response.source_nodes) == 2
    assert len(chat_starts.messages) == 1
    sent = _as_engine_messages(chat_starts.messages[0])
    assert any(
        "Aspirin lowers fever" in m["content"] for m in sent
    )  # the retrieved context reached the model
    assert response.response == long_engine.generate(sent, max_new_tokens=MAX).text


def test_llama_index_streaming_query_and_direct_calls(long_server, long_engine, chat_starts, http):
    llm, query_engine = _query_engine(long_server, long_engine, http, streaming=True)
    streamed = "".join(query_engine.query(QUESTION).response_gen)
    sent = _as_engine_messages(chat_starts.messages[0])
    assert streamed == long_engine.generate(sent, max_new_tokens=MAX).text

    completion = llm.complete(QUESTION)  # a chat model: complete() goes through chat
    assert completion.text == long_engine.generate(user(QUESTION), max_new_tokens=MAX).text

    async def achat() -> Any:
        async with httpx.AsyncClient() as pool:
            llm = _openai_like(long_server, long_engine, async_http_client=pool)
            return await llm.achat([ChatMessage(role=MessageRole.USER, content="Solve 12 plus 7.")])

    reply = asyncio.run(achat())
    assert reply.message.content == long_engine.generate(user("Solve 12 plus 7."), max_new_tokens=MAX).text
