"""Generation: options, stop strings, streaming, batching and per-request weights."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from conftest import SHARES

QUERY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Solve 12 plus 7."}]


def test_generate_reports_usage_weights_timings(llama_engine):
    result = llama_engine.generate(QUERY, max_new_tokens=6)
    assert result.usage.prompt_tokens == len(llama_engine.encode(QUERY).ids)
    assert 1 <= result.usage.completion_tokens <= 6
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.finish_reason in ("stop", "length")
    assert result.adapters == ["ad0", "ad1", "ad2"]
    assert result.weights.matrix.shape == (3, llama_engine.num_layers)
    assert result.timings.weigh > 0 and result.timings.prefill > 0
    assert result.model_name == llama_engine.model_name
    meta = result.metadata()
    assert meta["fusion"]["adapters"] == ["ad0", "ad1", "ad2"]
    assert meta["usage"]["total_tokens"] == result.usage.total_tokens


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(llama_engine):
    first = llama_engine.generate(QUERY, max_new_tokens=8)
    second = llama_engine.generate(QUERY, max_new_tokens=8)
    assert first.token_ids == second.token_ids
    a = llama_engine.generate(QUERY, max_new_tokens=8, temperature=1.5, seed=7)
    b = llama_engine.generate(QUERY, max_new_tokens=8, temperature=1.5, seed=7)
    assert a.token_ids == b.token_ids
    others = {
        tuple(llama_engine.generate(QUERY, max_new_tokens=8, temperature=1.5, seed=s).token_ids)
        for s in range(4)
    }
    assert len(others) > 1, "different seeds should be able to give different samples"


def test_top_p_tiny_equals_greedy(llama_engine):
    greedy = llama_engine.generate(QUERY, max_new_tokens=6)
    nucleus = llama_engine.generate(QUERY, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=3)
    assert nucleus.token_ids == greedy.token_ids


def test_max_new_tokens_gives_length_finish(llama_engine):
    result = llama_engine.generate(QUERY, max_new_tokens=3, mode="base")
    if result.finish_reason == "length":
        assert result.usage.completion_tokens == 3
    else:
        assert result.usage.completion_tokens <= 3


def test_stop_string_is_cut_and_not_streamed(llama_engine):
    full = llama_engine.generate(QUERY, max_new_tokens=12)
    assert len(full.text) >= 3, "the tiny model should produce some text"
    stop = full.text[2:4]
    stopped = llama_engine.generate(QUERY, max_new_tokens=12, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text
    assert full.text.startswith(stopped.text)
    streamed = "".join(e.text for e in llama_engine.stream(QUERY, max_new_tokens=12, stop=stop))
    assert streamed == stopped.text


def test_stream_concatenation_equals_generate(llama_engine):
    events = list(llama_engine.stream(QUERY, max_new_tokens=10))
    assert events[-1].result is not None and events[-1].text == ""
    assert all(e.result is None for e in events[:-1])
    assert "".join(e.text for e in events) == events[-1].result.text
    assert events[-1].result.text == llama_engine.generate(QUERY, max_new_tokens=10).text


def test_closing_a_stream_early_cancels_it(llama_engine):
    stream = llama_engine.stream(QUERY, max_new_tokens=200, mode="base")
    next(stream)
    stream.close()
    # the engine keeps serving after a cancelled request
    assert llama_engine.generate(QUERY, max_new_tokens=2).usage.completion_tokens >= 1


def test_batch_answers_equal_single_answers(llama_engine):
    queries = [
        "Solve 12 plus 7.",
        [{"role": "user", "content": "What is the capital of France? Answer in Spanish."}],
        "def add(a, b):",
        "Привет, как дела?",
    ]
    batched = llama_engine.generate_batch(queries, max_new_tokens=8)
    assert all(r.timings.batch_size == len(queries) for r in batched)
    for query, result in zip(queries, batched, strict=True):
        alone = llama_engine.generate(query, max_new_tokens=8)
        assert result.token_ids == alone.token_ids
        torch.testing.assert_close(result.weights.matrix, alone.weights.matrix, rtol=1e-4, atol=1e-5)


def test_batch_with_mixed_modes_and_lengths(llama_engine):
    a = llama_engine.generate("Solve 12 plus 7.", max_new_tokens=3, mode="base")
    b = llama_engine.generate("def add(a, b):", max_new_tokens=9, mode="single", adapters=["ad2"])
    jobs = [
        ("Solve 12 plus 7.", dict(max_new_tokens=3, mode="base")),
        ("def add(a, b):", dict(max_new_tokens=9, mode="single", adapters=["ad2"])),
    ]
    results = [None, None]

    def run(i):
        results[i] = llama_engine.generate(jobs[i][0], **jobs[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0].token_ids == a.token_ids
    assert results[1].token_ids == b.token_ids


def test_threads_with_different_weights_get_their_own_output(llama_engine):
    """Concurrent requests with different oracle weights must not see each other's weights."""
    layers = llama_engine.num_layers
    configs = [
        {"mode": "oracle", "oracle_weights": {"ad0": 1.0}},
        {"mode": "oracle", "oracle_weights": {"ad2": [2.0] * layers}},
        {"mode": "base"},
        {"mode": "oracle", "oracle_weights": {"ad1": 0.7, "ad2": 0.3}},
    ]
    expected = [llama_engine.generate(QUERY, max_new_tokens=8, **c).token_ids for c in configs]
    assert len({tuple(e) for e in expected}) > 1, "the configs should lead to different outputs"
    results: dict[int, list[int]] = {}
    barrier = threading.Barrier(len(configs) * 2)

    def worker(index: int) -> None:
        barrier.wait()
        results[index] = llama_engine.generate(
            QUERY, max_new_tokens=8, **configs[index % len(configs)]
        ).token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(configs) * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index, tokens in results.items():
        assert tokens == expected[index % len(configs)]


async def test_concurrent_astream_each_gets_its_own_text(llama_engine):
    configs = [{"mode": "base"}, {"mode": "single", "adapters": ["ad2"]}, {"mode": "qaflora"}]
    expected = [llama_engine.generate(QUERY, max_new_tokens=8, **c).text for c in configs]

    async def collect(config):
        pieces = []
        final = None
        async for event in llama_engine.astream(QUERY, max_new_tokens=8, **config):
            pieces.append(event.text)
            final = event.result or final
        return "".join(pieces), final

    outputs = await asyncio.gather(*(collect(c) for c in configs))
    for (text, final), want in zip(outputs, expected, strict=True):
        assert text == want
        assert final is not None and final.text == want


async def test_agenerate_does_not_block_the_event_loop(llama_engine):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    result = await llama_engine.agenerate(QUERY, max_new_tokens=16, mode="base")
    task.cancel()
    assert result.usage.completion_tokens >= 1
    assert ticks > 1


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "gemma", "phi3", "gpt2"])
def test_generation_runs_on_every_architecture(zoo_factory, arch):
    from qaflora import FusionEngine

    zoo = zoo_factory(arch)
    with FusionEngine.from_pretrained(zoo.base, zoo.catalog(), config=SHARES, progress=False) as engine:
        results = engine.generate_batch(["Solve 12 plus 7.", "def add(a, b): return"], max_new_tokens=5)
        for query, result in zip(["Solve 12 plus 7.", "def add(a, b): return"], results, strict=True):
            assert result.usage.completion_tokens >= 1
            assert engine.generate(query, max_new_tokens=5).token_ids == result.token_ids


def test_timeout_cancels_and_engine_recovers(llama_engine):
    from qaflora.errors import RequestTimeoutError

    with pytest.raises(RequestTimeoutError):
        llama_engine.generate(QUERY, max_new_tokens=200, ignore_eos=True, timeout=0.001)
    with pytest.raises(TimeoutError):
        list(llama_engine.stream(QUERY, max_new_tokens=200, ignore_eos=True, timeout=0.001))
    assert llama_engine.generate(QUERY, max_new_tokens=2).usage.completion_tokens >= 1


async def test_async_timeout(llama_engine):
    from qaflora.errors import RequestTimeoutError

    with pytest.raises(RequestTimeoutError):
        await llama_engine.agenerate(QUERY, max_new_tokens=200, ignore_eos=True, timeout=0.001)
    result = await llama_engine.agenerate(QUERY, max_new_tokens=2, timeout=30)
    assert result.usage.completion_tokens >= 1


def test_assistant_prefix_is_continued(llama_engine):
    plain = llama_engine.encode(QUERY)
    prefixed = llama_engine.encode(QUERY, assistant_prefix="<tool_call>")
    assert prefixed.text == plain.text + "<tool_call>"
    assert len(prefixed.ids) > len(plain.ids)
    result = llama_engine.generate(QUERY, assistant_prefix="<tool_call>", max_new_tokens=3)
    assert result.usage.prompt_tokens == len(prefixed.ids)


def test_shared_engine_cache_loads_once(llama_zoo):
    from qaflora.engine_cache import clear_engine_cache, shared_engine

    first = shared_engine(llama_zoo.base, llama_zoo.catalog())
    second = shared_engine(str(llama_zoo.base), llama_zoo.catalog())
    assert first is second
    clear_engine_cache()
    assert first.closed
    third = shared_engine(llama_zoo.base, llama_zoo.catalog())
    assert third is not first and not third.closed
    clear_engine_cache()
