"""Tools, tool choice and response formats: what reaches the chat template and the decoder,
and how Hermes tool calls in the model's text come back as OpenAI ``tool_calls``.

End to end over HTTP, grammar-constrained decoding makes even the tiny random model
answer with a valid call or valid JSON (``tool_choice``, ``response_format``). Free text
never contains a call, so the parsing glue for malformed calls is driven with a real engine
result whose text is replaced; the prompt side (tools and tool history rendered by the real
chat template) is checked against the engine's encoding and the LangChain wrapper's conversion.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import jsonschema
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionChunk
from qaflora import StreamEvent
from qaflora.config import OutputConstraint
from qaflora.errors import DivergenceError

from qaflora_integrations.langchain.messages import to_chat_messages as langchain_chat_messages
from qaflora_integrations.serve.messages import to_chat_messages
from qaflora_integrations.serve.metrics import ServerMetrics
from qaflora_integrations.serve.models import ModelNames
from qaflora_integrations.serve.protocol import ChatCompletionRequest
from qaflora_integrations.serve.responses import chat_completion
from qaflora_integrations.serve.streaming import chat_stream
from qaflora_integrations.serve.translate import chat_call

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
USER = [{"role": "user", "content": "Weather in Paris?"}]
CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def resolve(engine, **fields):
    request = ChatCompletionRequest.model_validate({"model": "base", "messages": USER, **fields})
    return chat_call(engine, ModelNames(engine), request)


# ---------------------------------------------------------------------- request side
@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, "auto"),
        ("auto", "auto"),
        ("required", "required"),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ],
)
def test_tool_choice_becomes_a_tool_call_constraint(long_engine, tool_choice, expected):
    call = resolve(long_engine, tools=[WEATHER, TIME], tool_choice=tool_choice)
    assert call.generation.constraint == OutputConstraint(
        type="tool_call", tools=[WEATHER, TIME], tool_choice=expected
    )
    assert call.tools == [WEATHER, TIME] and call.tool_names == ["get_weather", "get_time"]


def test_tool_choice_none_hides_the_tools(long_engine):
    call = resolve(long_engine, tools=[WEATHER], tool_choice="none")
    assert call.tools is None and call.tool_names is None and call.generation.constraint is None
    assert call.prompt_tokens == len(long_engine.encode(USER).ids)


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, OutputConstraint(type="json_object")),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True},
            },
            OutputConstraint(type="json_schema", json_schema={"type": "object"}),
        ),
    ],
)
def test_response_format_becomes_an_output_constraint(long_engine, response_format, expected):
    assert resolve(long_engine, response_format=response_format).generation.constraint == expected


def test_tools_are_rendered_by_the_chat_template(long_server, long_engine):
    body = {"model": "base", "messages": USER, "max_tokens": 2, "tools": [WEATHER]}
    with_tools = httpx.post(long_server.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert with_tools["usage"]["prompt_tokens"] == len(long_engine.encode(USER, tools=[WEATHER]).ids)
    assert with_tools["usage"]["prompt_tokens"] > len(long_engine.encode(USER).ids)


def _history_openai() -> list[dict]:
    return [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]


def _history_langchain() -> list:
    return [
        HumanMessage(USER[0]["content"]),
        AIMessage("", tool_calls=[{"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}}]),
        ToolMessage("sunny, 21 C", tool_call_id="call_1", name="get_weather"),
    ]


@pytest.mark.parametrize("structured", [True, False])
def test_tool_history_takes_the_langchain_wrappers_shape(structured):
    request = ChatCompletionRequest.model_validate({"model": "base", "messages": _history_openai()})
    ours = to_chat_messages(request.messages, structured_tool_calls=structured)
    assert ours == langchain_chat_messages(_history_langchain(), structured_tool_calls=structured)


def test_tool_history_over_http_reaches_the_template_like_chat_qaflora(long_server, long_engine):
    """ChatOpenAI -> server -> template gives the prompt ChatQaFlora would build in-process."""
    llm = ChatOpenAI(
        model="base", base_url=long_server.base_url, api_key="unused", max_tokens=2, max_retries=0
    )
    reply = llm.bind_tools([WEATHER]).invoke(_history_langchain())
    in_process = langchain_chat_messages(_history_langchain(), structured_tool_calls=False)
    expected = len(long_engine.encode(in_process, tools=[WEATHER]).ids)
    assert reply.usage_metadata["input_tokens"] == expected


# ---------------------------------------------------------------------- answer side
def test_a_hermes_call_in_the_text_becomes_openai_tool_calls(long_engine):
    call = resolve(long_engine, tools=[WEATHER], tool_choice="auto")
    result = long_engine.generate(USER, max_new_tokens=2).model_copy(update={"text": CALL_TEXT})
    completion = chat_completion(call, result)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.type == "function" and tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == {"city": "Paris"}
    assert tool_call.id.startswith("call_")


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',  # not JSON
        '<tool_call>{"name": "book_flight", "arguments": {}}</tool_call>',  # a tool never offered
    ],
)
def test_a_malformed_call_comes_back_as_the_text_the_model_wrote(long_engine, text):
    call = resolve(long_engine, tools=[WEATHER])
    result = long_engine.generate(USER, max_new_tokens=2).model_copy(update={"text": text})
    choice = chat_completion(call, result).choices[0]
    assert choice.message.content == text and choice.message.tool_calls is None
    assert choice.finish_reason == result.finish_reason


class ReplayEngine:
    """Stands in for the engine's ``astream`` only: replays ``text`` in pieces, then a real result."""

    def __init__(self, text: str, result) -> None:
        self.text = text
        self.result = result.model_copy(update={"text": text})

    async def astream(self, query, **kwargs) -> AsyncIterator[StreamEvent]:
        for start in range(0, len(self.text), 5):
            await asyncio.sleep(0)
            yield StreamEvent(text=self.text[start : start + 5])
        yield StreamEvent(text="", result=self.result)


async def _stream_chunks(engine, call, text: str) -> list[dict]:
    result = await engine.agenerate(USER, max_new_tokens=2)
    replay = ReplayEngine(text, result)
    raw = b"".join([piece async for piece in chat_stream(replay, call, ServerMetrics(engine), 0.0)])
    events = [line[len("data: ") :] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        ChatCompletionChunk.model_validate_json(event)
    return [json.loads(e) for e in events[:-1]]


async def test_streamed_tool_call_is_held_back_and_sent_whole(long_engine):
    call = resolve(long_engine, tools=[WEATHER], stream=True)
    chunks = await _stream_chunks(long_engine, call, "Let me check. " + CALL_TEXT)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == "Let me check. "  # as the plain response's content: the call's text never streams
    calls = [
        c["choices"][0]["delta"]["tool_calls"] for c in chunks if c["choices"][0]["delta"].get("tool_calls")
    ]
    assert len(calls) == 1 and calls[0][0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0][0]["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["fusion"]["adapters"]


async def test_streamed_malformed_call_is_sent_as_text(long_engine):
    call = resolve(long_engine, tools=[WEATHER], stream=True)
    text = 'Sure <tool_call>{"name": "get_weather", "arguments": {"city"'
    chunks = await _stream_chunks(long_engine, call, text)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text
    assert chunks[-1]["choices"][0]["finish_reason"] != "tool_calls"


class FailingEngine(ReplayEngine):
    """Streams a piece, then fails the way a broken adapter fails inside the worker."""

    async def astream(self, query, **kwargs) -> AsyncIterator[StreamEvent]:
        yield StreamEvent(text="Hel")
        raise DivergenceError(["ad1"], [2])


async def test_an_engine_failure_mid_stream_ends_it_with_an_openai_error(long_engine):
    call = resolve(long_engine, stream=True)
    result = await long_engine.agenerate(USER, max_new_tokens=2)
    metrics = ServerMetrics(long_engine)
    raw = b"".join([p async for p in chat_stream(FailingEngine("", result), call, metrics, 0.0)])
    events = [line[len("data: ") :] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and error["code"] == "divergence_error"
    assert "ad1" in error["message"]
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "Hel"


# ---------------------------------------------------------------------- enforced over HTTP
FORECAST = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer"}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.fixture
def client(long_server):
    with openai.OpenAI(base_url=long_server.base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_choice_returns_a_valid_call(client, choice):
    reply = client.chat.completions.create(
        model="base", messages=USER, tools=[WEATHER, TIME], tool_choice=choice, max_tokens=120
    )
    (message,) = [c.message for c in reply.choices]
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    (call,) = message.tool_calls
    assert choice == "required" or call.function.name == "get_time"
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_streamed_forced_tool_call_arrives_whole(client):
    chunks = list(
        client.chat.completions.create(
            model="base:ad1",
            messages=USER,
            tools=[WEATHER],
            tool_choice="required",
            max_tokens=120,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_response_format_gives_valid_json(client, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": FORECAST}}
    kwargs = {"model": "base", "messages": USER, "response_format": response_format, "max_tokens": 80}
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(stream=True, **kwargs)
            if c.choices
        )
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content
    jsonschema.validate(json.loads(text), FORECAST)


def test_json_object_response_format_gives_an_object(client):
    reply = client.chat.completions.create(
        model="base", messages=USER, response_format={"type": "json_object"}, max_tokens=60
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_a_schema_that_cannot_be_enforced_is_a_400_before_anything_streams(long_server, stream):
    body = {
        "model": "base",
        "messages": USER,
        "stream": stream,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}},
    }
    response = httpx.post(long_server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format" and "strng" in error["message"]


def test_langchain_tools_and_structured_output_through_the_server(long_server):
    llm = ChatOpenAI(
        model="base", base_url=long_server.base_url, api_key="unused", max_tokens=120, max_retries=0
    )
    message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER["function"]["parameters"])
    structured = llm.with_structured_output(
        {"title": "forecast", "description": "a forecast", **FORECAST}, method="json_schema"
    ).invoke("Forecast for Paris?")
    jsonschema.validate(structured, FORECAST)
