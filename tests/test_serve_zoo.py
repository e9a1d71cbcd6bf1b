"""The shipped demo zoo behind the server, called with the official ``openai`` client:
the adapter model names answer their domain, fused answers equal the engine's, and the
``fusion`` field of every answer says which adapters made it. Also ``qaflora serve`` itself,
started as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from qaflora.testing import free_loopback_port
from qaflora.zoo.world import DEFAULT_EVAL_SEED, is_correct, make_examples

from qaflora_integrations.serve import BackgroundServer, create_app

MAX = 6


@pytest.fixture(scope="module")
def zoo_client(zoo_engine):
    with BackgroundServer(create_app(zoo_engine, model_name="qaflora-zoo")) as server:
        yield openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_models_are_the_zoo_and_its_adapters(zoo_client):
    models = zoo_client.models.list().data
    assert [m.id for m in models] == [
        "qaflora-zoo",
        "qaflora-zoo:math",
        "qaflora-zoo:medical",
        "qaflora-zoo:code",
        "qaflora-zoo:tools",
        "qaflora-zoo:reading",
        "qaflora-zoo:lang_zo",
        "qaflora-zoo:lang_ve",
    ]
    kinds = {m.id: m.model_extra["kind"] for m in models[1:]}
    assert kinds["qaflora-zoo:math"] == "domain" and kinds["qaflora-zoo:lang_zo"] == "language"
    assert kinds["qaflora-zoo:tools"] == "tools" and kinds["qaflora-zoo:reading"] == "reading"


@pytest.mark.parametrize("domain", ["math", "medical", "code"])
def test_adapter_models_answer_their_domain(zoo_client, zoo_engine, domain):
    examples = make_examples(domain, "en", 8, seed=DEFAULT_EVAL_SEED)
    answers = []
    for example in examples:
        response = zoo_client.chat.completions.create(
            model=f"qaflora-zoo:{domain}", messages=example.messages, max_tokens=MAX
        )
        direct = zoo_engine.generate(example.messages, max_new_tokens=MAX, mode="single", adapters=[domain])
        assert response.choices[0].message.content == direct.text
        assert response.model_extra["fusion"]["adapters"] == [domain]
        answers.append(response.choices[0].message.content)
    correct = sum(is_correct(a, e) for a, e in zip(answers, examples, strict=True))
    assert correct >= 6, f"{domain}: {correct}/8 (the adapter scores >= 90 % on 60 such queries)"


def test_fused_composite_answer_equals_the_engine_and_names_its_adapters(zoo_client, zoo_engine):
    fusion = {"mode": "qaflora"}  # the default policy over the whole catalog
    for example in make_examples("math", "zo", 3, seed=DEFAULT_EVAL_SEED):
        stream = zoo_client.chat.completions.create(
            model="qaflora-zoo",
            messages=example.messages,
            max_tokens=MAX,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"fusion": fusion},
        )
        chunks = list(stream)
        direct = zoo_engine.generate(example.messages, max_new_tokens=MAX, **fusion)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.text
        weights = chunks[-1].model_extra["fusion"]
        assert weights["adapters"] == direct.weights.adapters
        assert set(weights["adapters"]) == {"math", "lang_zo"}  # what a math question in Zorbic needs
        assert weights["mode"] == "qaflora"


@pytest.mark.parametrize("options", [[], ["--plan-ahead"]], ids=["default", "plan-ahead"])
def test_qaflora_serve_command_serves_the_shipped_zoo(options):
    """The console command end to end: a process on loopback, answered, stopped by Ctrl-C."""
    port = free_loopback_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from qaflora.cli import main; main()",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *options,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "qaflora serve did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()][:2] == ["base", "base:math"]
        reply = client.chat.completions.create(
            model="base:math",
            messages=[{"role": "user", "content": "what is two plus three ?"}],
            max_tokens=MAX,
        )
        assert reply.choices[0].message.content
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "serving base" in output
    assert ("(planning ahead)" in output) == ("--plan-ahead" in options)
    assert "Traceback" not in output and "Warning" not in output, output
