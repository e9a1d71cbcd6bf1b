"""Bad input over HTTP: OpenAI's error shape, the right status, a message naming the cause,
and an engine that keeps serving afterwards. Checked raw and through the official client."""

from __future__ import annotations

import httpx
import openai
import pytest

USER = [{"role": "user", "content": "Solve 12 plus 7."}]
LONG = "fever " * 400  # over the tiny model's 256-token context
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat_body(**fields):
    return {"model": "base", "messages": USER, **fields}


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
NOT_FOUND = "model_not_found"
CONTEXT = "context_length_exceeded"


def case(name, body, status, param, words, *, code=None, path=CHAT):
    """One bad request: its status, error param and code, and words its message must contain."""
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return pytest.param(path, body, status, kind, code, param, words, id=name)


CASES = [
    # model names and fusion
    case("unknown model", chat_body(model="gpt-4o"), 404, "model", ["gpt-4o", "base:ad0"], code=NOT_FOUND),
    case(
        "unknown adapter model", chat_body(model="base:nope"), 404, "model", ["nope", "ad0"], code=NOT_FOUND
    ),
    case(
        "unknown adapter in fusion",
        chat_body(fusion={"adapters": ["ad0", "zz"]}),
        404,
        "fusion.adapters",
        ["zz"],
        code=NOT_FOUND,
    ),
    case(
        "unknown oracle adapter",
        chat_body(fusion={"mode": "oracle", "oracle_weights": {"zz": 1.0}}),
        404,
        "fusion.adapters",
        ["zz"],
        code=NOT_FOUND,
    ),
    case(
        "unknown fusion key",
        chat_body(fusion={"mode": "static", "topk": 2}),
        400,
        "fusion",
        ["topk", "top_k"],
    ),
    case("bad fusion mode", chat_body(fusion={"mode": "magic"}), 400, "fusion.mode", ["qaflora", "magic"]),
    case("single without adapter", chat_body(fusion={"mode": "single"}), 400, "fusion", ["single"]),
    case(
        "oracle weights per layer of wrong length",
        chat_body(fusion={"mode": "oracle", "oracle_weights": {"ad0": [1.0]}}),
        400,
        "fusion",
        ["layers"],
    ),
    case(
        "fusion on an adapter model", chat_body(model="base:ad1", fusion={"top_k": 1}), 400, "fusion", ["ad1"]
    ),
    case("top_k zero", chat_body(fusion={"top_k": 0}), 400, "fusion", ["top_k"]),
    # sampling values and unsupported options
    case("temperature too high", chat_body(temperature=3), 400, "temperature", ["temperature", "2"]),
    case("negative temperature", chat_body(temperature=-1), 400, "temperature", ["temperature"]),
    case("top_p zero", chat_body(top_p=0), 400, "top_p", ["top_p"]),
    case("top_p above one", chat_body(top_p=1.5), 400, "top_p", ["top_p"]),
    case("max_tokens zero", chat_body(max_tokens=0), 400, "max_tokens", ["max_tokens"]),
    case("empty stop string", chat_body(stop=[""]), 400, None, ["stop"]),
    case("n above one", chat_body(n=2), 400, "n", ["n is not supported"]),
    case("logprobs", chat_body(logprobs=True), 400, "logprobs", ["logprobs"]),
    case("presence penalty", chat_body(presence_penalty=0.5), 400, "presence_penalty", ["presence_penalty"]),
    case("legacy functions", chat_body(functions=[{"name": "f"}]), 400, "functions", ["functions"]),
    case(
        "stream_options without stream",
        chat_body(stream_options={"include_usage": True}),
        400,
        "stream_options",
        ["stream"],
    ),
    # context window
    case(
        "prompt over the context",
        chat_body(messages=[{"role": "user", "content": LONG}]),
        400,
        "messages",
        ["256"],
        code=CONTEXT,
    ),
    case(
        "prompt plus max_tokens over the context",
        chat_body(max_tokens=250),
        400,
        "messages",
        ["256", "250"],
        code=CONTEXT,
    ),
    # messages
    case("no messages", {"model": "base"}, 400, "messages", ["required"]),
    case("empty messages", chat_body(messages=[]), 400, "messages", ["at least 1"]),
    case(
        "unknown role",
        chat_body(messages=[{"role": "robot", "content": "hi"}]),
        400,
        "messages.0.role",
        ["robot"],
    ),
    case(
        "empty conversation",
        chat_body(messages=[{"role": "user", "content": "  "}]),
        400,
        "messages",
        ["no message with content"],
    ),
    case(
        "image part",
        chat_body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ]
        ),
        400,
        "messages.0.content.1.type",
        ["image_url", "text only"],
    ),
    case(
        "tool message without call id",
        chat_body(messages=[*USER, {"role": "tool", "content": "sunny"}]),
        400,
        "messages.1",
        ["tool_call_id"],
    ),
    case(
        "tool call arguments not JSON",
        chat_body(
            messages=[
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{city"},
                        }
                    ],
                },
            ]
        ),
        400,
        "messages.1.tool_calls.0.function.arguments",
        ["not JSON"],
    ),
    # tools and formats
    case("tool_choice without tools", chat_body(tool_choice="required"), 400, "tool_choice", ["tools"]),
    case(
        "tool_choice naming an unknown tool",
        chat_body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "book_flight"}}),
        400,
        "tool_choice",
        ["book_flight", "get_weather"],
    ),
    case("tool defined twice", chat_body(tools=[TOOL, TOOL]), 400, "tools", ["get_weather"]),
    case(
        "json_schema without schema",
        chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
        400,
        "response_format.json_schema.schema",
        ["required"],
    ),
    case(
        "json_schema type without json_schema",
        chat_body(response_format={"type": "json_schema"}),
        400,
        "response_format",
        ["needs 'json_schema'"],
    ),
    case(
        "unknown response format",
        chat_body(response_format={"type": "yaml"}),
        400,
        "response_format.type",
        ["yaml"],
    ),
    case(
        "tools and a response format together",
        chat_body(tools=[TOOL], response_format={"type": "json_object"}),
        400,
        "response_format",
        ["together"],
    ),
    # completions
    case(
        "empty completion prompt",
        {"model": "base", "prompt": "   "},
        400,
        "prompt",
        ["empty"],
        path=COMPLETIONS,
    ),
    case(
        "completion prompt over the context",
        {"model": "base", "prompt": LONG},
        400,
        "prompt",
        ["256"],
        code=CONTEXT,
        path=COMPLETIONS,
    ),
    case(
        "second completion prompt over the context",
        {"model": "base", "prompt": ["fine", LONG]},
        400,
        "prompt.1",
        ["256"],
        code=CONTEXT,
        path=COMPLETIONS,
    ),
    case(
        "stream of several prompts",
        {"model": "base", "prompt": ["a b", "c d"], "stream": True},
        400,
        "prompt",
        ["one prompt"],
        path=COMPLETIONS,
    ),
    case("echo", {"model": "base", "prompt": "a b", "echo": True}, 400, "echo", ["echo"], path=COMPLETIONS),
    case(
        "completion unknown model",
        {"model": "base:zz", "prompt": "a b"},
        404,
        "model",
        ["zz"],
        code=NOT_FOUND,
        path=COMPLETIONS,
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "kind", "code", "param", "words"), CASES)
def test_bad_request_gets_its_openai_error(server, path, body, status, kind, code, param, words):
    response = httpx.post(server.url + path, json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind
    assert error["code"] == code
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error["message"]


def test_malformed_json_is_a_400(server):
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=b'{"model": "base", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"model=base", "not valid JSON"),
    ],
)
def test_body_that_is_not_a_json_object_is_a_400(server, content, words):
    response = httpx.post(server.url + "/v1/chat/completions", content=content)  # no content-type header
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_unknown_route_and_wrong_method_are_openai_errors(server):
    missing = httpx.get(server.url + "/v1/engines")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = httpx.get(server.url + "/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()
    model = httpx.get(server.url + "/v1/models/base:zz")
    assert model.status_code == 404 and model.json()["error"]["code"] == "model_not_found"


def test_official_client_raises_its_own_errors_with_our_message(server):
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="base:zz", messages=USER)
        assert missing.value.code == "model_not_found" and "zz" in missing.value.message
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(
                model="base", messages=[{"role": "user", "content": "fever " * 400}]
            )
        assert too_long.value.code == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as fusion:
            client.chat.completions.create(model="base", messages=USER, extra_body={"fusion": {"k": 2}})
        assert "['k']" in fusion.value.message
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="base", messages=USER, stream=True, temperature=9)


def test_errors_leave_the_engine_serving_and_are_counted(server):
    for bad in CASES[:6]:
        path, body = bad.values[:2]
        httpx.post(server.url + path, json=body, timeout=60)
    ok = httpx.post(server.url + "/v1/chat/completions", json=chat_body(max_tokens=3), timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["running"] == health["queued"] == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert 'qaflora_errors_total{code="model_not_found",type="not_found_error"} 4.0' in metrics
    assert 'qaflora_requests_total{endpoint="/v1/chat/completions",status="404"} 4.0' in metrics
