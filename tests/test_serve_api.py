"""The OpenAI-compatible server over real HTTP (uvicorn on loopback): shapes, options, streams, metrics.

The tiny random model writes gibberish, so every answer is checked against the engine
itself: greedy decoding is deterministic, and the server must produce exactly what a
direct engine call with the same messages and options produces.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from prometheus_client.parser import text_string_to_metric_families

MESSAGES = [{"role": "user", "content": "Solve 12 plus 7 and answer in Russian."}]
MAX = 8


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def chat(server, **body) -> dict:
    response = post(server, "/v1/chat/completions", {"model": "base", "messages": MESSAGES, **body})
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(server, path: str, body: dict) -> list[str]:
    """The ``data:`` payloads of a streamed response, in order."""
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def metric_samples(server) -> dict[tuple[str, tuple], float]:
    text = httpx.get(server.url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# ---------------------------------------------------------------------- models, health
def test_models_lists_the_fused_model_and_every_adapter(server, llama_engine):
    data = httpx.get(server.url + "/v1/models").json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert ids == ["base", "base:ad0", "base:ad1", "base:ad2"]
    assert all(m["object"] == "model" and m["owned_by"] == "qaflora" for m in data["data"])
    assert data["data"][0]["adapters"] == llama_engine.adapter_names
    assert {m["parent"] for m in data["data"][1:]} == {"base"}
    one = httpx.get(server.url + "/v1/models/base:ad1").json()
    assert one["id"] == "base:ad1" and one["parent"] == "base"


def test_health_reports_the_engine_idle(server):
    response = httpx.get(server.url + "/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model": "base",
        "adapters": ["ad0", "ad1", "ad2"],
        "running": 0,
        "queued": 0,
    }


# ---------------------------------------------------------------------- chat completions
def test_chat_completion_is_the_engines_answer_with_its_fusion_weights(server, llama_engine):
    body = chat(server, max_tokens=MAX)
    completion = ChatCompletion.model_validate(body)  # the shape OpenAI's own client parses
    direct = llama_engine.generate(MESSAGES, max_new_tokens=MAX)
    assert completion.object == "chat.completion" and completion.model == "base"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == direct.text
    assert choice.finish_reason == direct.finish_reason
    assert completion.usage.prompt_tokens == direct.usage.prompt_tokens
    assert completion.usage.completion_tokens == direct.usage.completion_tokens
    assert completion.usage.total_tokens == direct.usage.total_tokens
    fusion = body["fusion"]
    assert fusion["mode"] == "qaflora" and fusion["adapters"] == direct.weights.adapters
    assert len(fusion["matrix"]) == 3 and len(fusion["matrix"][0]) == llama_engine.num_layers
    for column in zip(*fusion["matrix"], strict=True):
        assert sum(column) == pytest.approx(1.0, abs=1e-4)


def test_max_completion_tokens_wins_over_max_tokens(server):
    body = chat(server, max_tokens=9, max_completion_tokens=3, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


def test_adapter_model_name_is_that_adapter_alone(server, llama_engine):
    body = chat(server, model="base:ad1", max_tokens=MAX)
    direct = llama_engine.generate(MESSAGES, max_new_tokens=MAX, mode="single", adapters=["ad1"])
    assert body["model"] == "base:ad1"
    assert body["choices"][0]["message"]["content"] == direct.text
    assert body["fusion"]["mode"] == "single" and body["fusion"]["adapters"] == ["ad1"]
    assert body["fusion"]["matrix"] == [[1.0] * llama_engine.num_layers]


def test_fusion_field_reaches_the_engine(server, llama_engine):
    layers = llama_engine.num_layers
    per_layer = [round(0.25 * (i + 1), 2) for i in range(layers)]
    fusion = {"mode": "oracle", "oracle_weights": {"ad0": 0.5, "ad2": per_layer}}
    body = chat(server, max_tokens=MAX, fusion=fusion)
    direct = llama_engine.generate(MESSAGES, max_new_tokens=MAX, **fusion)
    assert body["choices"][0]["message"]["content"] == direct.text
    assert body["fusion"]["adapters"] == ["ad0", "ad2"]
    assert body["fusion"]["matrix"] == [[0.5] * layers, per_layer]

    top1 = chat(server, max_tokens=MAX, fusion={"top_k": 1})
    assert len(top1["fusion"]["adapters"]) == 1
    assert top1["fusion"]["selection_scores"].keys() == {"ad0", "ad1", "ad2"}


def test_sampling_with_a_seed_is_reproducible_and_equals_the_engine(server, llama_engine):
    options = {"temperature": 1.3, "top_p": 0.9, "seed": 11, "max_tokens": 12}
    first = chat(server, **options)["choices"][0]["message"]["content"]
    second = chat(server, **options)["choices"][0]["message"]["content"]
    direct = llama_engine.generate(MESSAGES, max_new_tokens=12, temperature=1.3, top_p=0.9, seed=11)
    assert first == second == direct.text


def test_stop_string_is_cut_from_the_answer(server, llama_engine):
    full = llama_engine.generate(MESSAGES, max_new_tokens=16, ignore_eos=True).text
    stop = full[6:9]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    body = chat(server, max_tokens=16, ignore_eos=True, stop=[stop])
    content = body["choices"][0]["message"]["content"]
    assert content == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_unknown_harmless_openai_fields_are_accepted(server):
    body = chat(
        server, max_tokens=2, user="someone", metadata={"a": "b"}, store=False, n=1, presence_penalty=0
    )
    assert body["usage"]["completion_tokens"] >= 1


# ---------------------------------------------------------------------- streaming
def test_chat_stream_sse_chunks_add_up_to_the_answer(server, llama_engine):
    direct = llama_engine.generate(MESSAGES, max_new_tokens=MAX)
    events = sse_events(
        server,
        "/v1/chat/completions",
        {"model": "base", "messages": MESSAGES, "max_tokens": MAX, "stream": True},
    )
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == direct.text
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == direct.finish_reason
    assert last["fusion"]["adapters"] == direct.weights.adapters
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert "usage" not in last  # not asked for


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(server, llama_engine):
    direct = llama_engine.generate(MESSAGES, max_new_tokens=MAX)
    events = sse_events(
        server,
        "/v1/chat/completions",
        {
            "model": "base:ad0",
            "messages": MESSAGES,
            "max_tokens": MAX,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    payloads = [json.loads(e) for e in events[:-1]]
    usage_chunk = payloads[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == direct.usage.prompt_tokens
    assert usage_chunk["fusion"]["adapters"] == ["ad0"]
    assert all(p["usage"] is None for p in payloads[:-1])  # OpenAI: null on every other chunk


def test_stop_strings_never_stream(server, llama_engine):
    full = llama_engine.generate(MESSAGES, max_new_tokens=16, ignore_eos=True).text
    stop = full[6:9]
    events = sse_events(
        server,
        "/v1/chat/completions",
        {
            "model": "base",
            "messages": MESSAGES,
            "max_tokens": 16,
            "ignore_eos": True,
            "stop": stop,
            "stream": True,
        },
    )
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == full[: full.index(stop)]


# ---------------------------------------------------------------------- completions
def test_completion_of_raw_text_is_the_engines_formatted_answer(server, llama_engine):
    prompt = "def add(a, b): return"
    response = post(server, "/v1/completions", {"model": "base:ad2", "prompt": prompt, "max_tokens": MAX})
    completion = Completion.model_validate(response.json())
    direct = llama_engine.generate(
        prompt, formatted=True, max_new_tokens=MAX, mode="single", adapters=["ad2"]
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].text == direct.text
    assert completion.usage.prompt_tokens == direct.usage.prompt_tokens
    assert response.json()["fusion"]["adapters"] == ["ad2"]


def test_completion_default_budget_is_openais_16_tokens(server):
    response = post(
        server, "/v1/completions", {"model": "base", "prompt": "The patient has", "ignore_eos": True}
    )
    assert response.json()["usage"]["completion_tokens"] == 16


def test_completion_of_several_prompts_answers_each_in_order(server, llama_engine):
    prompts = ["The patient has a fever;", "Write a list: 1, 2,"]
    body = post(server, "/v1/completions", {"model": "base", "prompt": prompts, "max_tokens": MAX}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for prompt, choice in zip(prompts, body["choices"], strict=True):
        assert choice["text"] == llama_engine.generate(prompt, formatted=True, max_new_tokens=MAX).text
    assert len(body["fusion"]) == 2


def test_completion_stream(server, llama_engine):
    prompt = "Translate to Spanish: the cat"
    direct = llama_engine.generate(prompt, formatted=True, max_new_tokens=MAX)
    events = sse_events(
        server,
        "/v1/completions",
        {
            "model": "base",
            "prompt": prompt,
            "max_tokens": MAX,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert "".join(p["choices"][0]["text"] for p in payloads if p["choices"]) == direct.text
    assert payloads[-2]["choices"][0]["finish_reason"] == direct.finish_reason
    assert payloads[-1]["usage"]["completion_tokens"] == direct.usage.completion_tokens


# ---------------------------------------------------------------------- concurrency
async def test_concurrent_requests_with_different_fusion_never_cross(server, llama_engine):
    """Streams and plain requests, each with its own fusion, at once: each gets its own answer."""
    layers = llama_engine.num_layers
    variants = [
        ({"model": "base:ad0"}, {"mode": "single", "adapters": ["ad0"]}),
        ({"model": "base:ad2"}, {"mode": "single", "adapters": ["ad2"]}),
        ({"fusion": {"mode": "base"}}, {"mode": "base"}),
        (
            {"fusion": {"mode": "oracle", "oracle_weights": {"ad1": [1.5] * layers}}},
            {"mode": "oracle", "oracle_weights": {"ad1": [1.5] * layers}},
        ),
        ({"fusion": {"mode": "qaflora", "top_k": 2}}, {"mode": "qaflora", "top_k": 2}),
    ]
    questions = ["Solve 12 plus 7.", "def add(a, b):", "The patient has a fever."]
    cases = [(q, v) for q in questions for v in variants]
    expected = [
        llama_engine.generate(q, max_new_tokens=MAX, ignore_eos=True, **options).text
        for q, (_, options) in cases
    ]
    assert len(set(expected)) >= len(cases) - 2, "the variants should give distinguishable answers"

    async def ask(client: httpx.AsyncClient, index: int) -> str:
        question, (fields, _) = cases[index]
        body = {
            "model": "base",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": MAX,
            "ignore_eos": True,
            **fields,
        }
        if index % 2:  # every other one streams
            body["stream"] = True
            text = ""
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        text += chunk["choices"][0]["delta"].get("content") or ""
            return text
        response = await client.post("/v1/chat/completions", json=body)
        return response.json()["choices"][0]["message"]["content"]

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        answers = await asyncio.gather(*(ask(client, i) for i in range(len(cases))))
    assert answers == expected
    batch = metric_samples(server)
    assert batch[("qaflora_batch_size_count", ())] == len(cases)
    assert batch[("qaflora_batch_size_sum", ())] > len(cases), "concurrent requests should share batches"


# ---------------------------------------------------------------------- metrics
def test_metrics_count_requests_tokens_latency_batches_and_adapters(server):
    a = chat(server, max_tokens=4)
    b = chat(server, model="base:ad1", max_tokens=5)
    sse_events(
        server,
        "/v1/chat/completions",
        {"model": "base", "messages": MESSAGES, "max_tokens": 3, "stream": True},
    )
    missing = post(server, "/v1/chat/completions", {"model": "nope", "messages": MESSAGES})
    assert missing.status_code == 404
    samples = metric_samples(server)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    chat_ep = "/v1/chat/completions"
    assert value("qaflora_requests_total", endpoint=chat_ep, status="200") == 3
    assert value("qaflora_requests_total", endpoint=chat_ep, status="404") == 1
    assert value("qaflora_errors_total", type="not_found_error", code="model_not_found") == 1
    assert value("qaflora_request_latency_seconds_count", endpoint=chat_ep) == 4
    assert value("qaflora_time_to_first_token_seconds_count", endpoint=chat_ep) == 1
    prompt_tokens = a["usage"]["prompt_tokens"] + b["usage"]["prompt_tokens"]
    assert value("qaflora_prompt_tokens_total") == prompt_tokens + a["usage"]["prompt_tokens"]
    completion = a["usage"]["completion_tokens"] + b["usage"]["completion_tokens"]
    assert value("qaflora_completion_tokens_total") >= completion + 1
    assert value("qaflora_batch_size_count") == 3
    assert value("qaflora_adapter_selected_total", adapter="ad1") == 3  # fused twice (all 3 adapters) + alone
    assert value("qaflora_adapter_selected_total", adapter="ad0") == 2
    assert value("qaflora_requests_running") == 0 and value("qaflora_requests_queued") == 0
    assert value("qaflora_client_disconnects_total", endpoint=chat_ep) == 0


def test_each_app_has_its_own_metrics(llama_engine):
    from qaflora_integrations.serve import BackgroundServer, create_app

    with BackgroundServer(create_app(llama_engine)) as one, BackgroundServer(create_app(llama_engine)) as two:
        chat(one, max_tokens=2)
        assert metric_samples(one)[("qaflora_batch_size_count", ())] == 1
        assert metric_samples(two)[("qaflora_batch_size_count", ())] == 0
