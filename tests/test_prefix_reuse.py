"""Prefix reuse: a cache hit gives exactly what a miss gives; the cache stays within its budget."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARES
from qaflora import FusionEngine
from qaflora.prefix_cache import PrefixCache

SYSTEM = {"role": "system", "content": "You are a careful assistant. Answer briefly, in the language asked."}
TURN_1 = [SYSTEM, {"role": "user", "content": "Solve 12 plus 7 and answer in Russian."}]


def turn_2(answer: str) -> list[dict]:
    return [
        *TURN_1,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Now the capital of France, in Spanish."},
    ]


def make_engine(zoo, **options) -> FusionEngine:
    return FusionEngine.from_pretrained(
        zoo.base, zoo.catalog(), config=SHARES, progress=False, prefill_block=8, **options
    )


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2"])
def test_weighing_reuse_gives_the_tokens_and_weights_of_a_miss(zoo_factory, arch):
    with make_engine(zoo_factory(arch)) as engine:
        first = engine.generate(TURN_1, max_new_tokens=8)
        second_prompt = turn_2(first.text)
        engine.clear_prefix_cache()
        miss = engine.generate(second_prompt, max_new_tokens=10)
        engine.clear_prefix_cache()
        engine.generate(TURN_1, max_new_tokens=8)  # the earlier turn stores the shared prefix
        hits_before = engine.scheduler_state().cache_hit_blocks
        hit = engine.generate(second_prompt, max_new_tokens=10)
        state = engine.scheduler_state()
        assert state.cache_hit_blocks > hits_before, "the second turn should reuse blocks"
        assert state.weigh_tokens_reused > 0
        assert hit.token_ids == miss.token_ids
        assert torch.equal(hit.weights.matrix, miss.weights.matrix), "weights must be bitwise the same"
        # the same prompt again reuses its own fused prefill too (same weights): still the same answer
        again = engine.generate(second_prompt, max_new_tokens=10)
        assert again.token_ids == miss.token_ids


@pytest.mark.parametrize("arch", ["llama", "mistral", "gpt2"])
def test_weights_once_per_conversation_reuses_weights_and_kv_exactly(zoo_factory, arch):
    with make_engine(zoo_factory(arch)) as engine:
        first = engine.generate(TURN_1, max_new_tokens=8, conversation_weights="once")
        second_prompt = turn_2(first.text)
        hits_before = engine.scheduler_state().cache_hit_blocks
        second = engine.generate(second_prompt, max_new_tokens=10, conversation_weights="once")
        assert torch.equal(second.weights.matrix, first.weights.matrix), "the conversation keeps its weights"
        assert second.timings.weigh == 0.0
        assert engine.scheduler_state().conversations >= 1
        assert engine.scheduler_state().cache_hit_blocks > hits_before
        assert engine.scheduler_state().prefill_tokens_reused > 0  # the answer's prefill reused the history
        # the miss: same weights given explicitly, nothing cached
        engine.clear_prefix_cache()
        oracle = {
            name: row.tolist() for name, row in zip(first.weights.adapters, first.weights.matrix, strict=True)
        }
        miss = engine.generate(second_prompt, max_new_tokens=10, mode="oracle", oracle_weights=oracle)
        assert torch.equal(miss.weights.matrix, first.weights.matrix)
        assert second.token_ids == miss.token_ids
        # a different conversation is weighed for itself
        other = engine.generate(
            [{"role": "user", "content": "def add(a, b):"}], max_new_tokens=4, conversation_weights="once"
        )
        assert other.timings.weigh > 0.0


def test_cache_on_and_off_give_identical_conversations(llama_zoo):
    with make_engine(llama_zoo) as cached, make_engine(llama_zoo, prefix_cache_mb=0) as uncached:
        messages = [SYSTEM]
        for turn in range(4):
            messages.append({"role": "user", "content": f"Step {turn}: add {turn} and {turn + 5}."})
            a = cached.generate(messages, max_new_tokens=6)
            b = uncached.generate(messages, max_new_tokens=6)
            assert a.token_ids == b.token_ids
            assert torch.equal(a.weights.matrix, b.weights.matrix)
            messages.append({"role": "assistant", "content": a.text or "ok"})
        assert cached.scheduler_state().cache_hit_blocks > 0
        assert uncached.scheduler_state().cached_bytes == 0
        assert uncached.scheduler_state().cache_hit_blocks == 0


def test_engine_cache_stays_within_its_byte_budget(llama_zoo):
    budget_mb = 0.05
    with make_engine(llama_zoo, prefix_cache_mb=budget_mb) as engine:
        for i in range(6):
            engine.generate(f"Prompt number {i}: tell me about topic {i * 7}.", max_new_tokens=2)
            state = engine.scheduler_state()
            assert 0 < state.cached_bytes <= budget_mb * 2**20
        assert engine.prefix_cache.stats().evictions > 0


def _block(nbytes_per_tensor: int = 64, seed: float = 0.0):
    n = nbytes_per_tensor // 4
    return [(torch.full((1, 1, n), float(seed)), torch.full((1, 1, n), float(seed)))]  # one layer: 2 x nbytes


def test_lru_evicts_least_recently_used_and_keeps_chain_heads():
    cache = PrefixCache(max_bytes=3 * 128, block_size=2)
    a = [1, 2, 3, 4]
    b = [5, 6, 7, 8]
    cache.store("ns", a, {0: _block(seed=1), 1: _block(seed=2)})
    cache.store("ns", b, {0: _block(seed=3), 1: _block(seed=4)})
    assert cache.nbytes <= cache.max_bytes and len(cache) == 3
    # a's tail went first: its head (shared by more prompts) outlives it
    assert [blk[0][0][0, 0, 0].item() for blk in cache.lookup("ns", a, 2)] == [1.0]
    # touching a's head made b's tail the least recently used
    cache.store("ns", [9, 9], {0: _block(seed=5)})
    assert len(cache.lookup("ns", b, 2)) == 1
    assert len(cache.lookup("ns", a, 2)) == 1
    assert cache.stats().evictions == 2


def test_lookup_matches_tokens_exactly_and_respects_namespaces():
    cache = PrefixCache(max_bytes=1 << 20, block_size=2)
    ids = [1, 2, 3, 4, 5, 6]
    cache.store("x", ids, {0: _block(seed=1), 1: _block(seed=2), 2: _block(seed=3)})
    assert len(cache.lookup("x", ids, 3)) == 3
    assert len(cache.lookup("x", ids, 2)) == 2  # never more than asked
    assert len(cache.lookup("x", [1, 2, 3, 9, 5, 6], 3)) == 1  # a changed token ends the match
    assert len(cache.lookup("x", [9, 2, 3, 4], 2)) == 0
    assert cache.lookup("y", ids, 3) == []  # another namespace (other adapters or weights)
    off = PrefixCache(max_bytes=0, block_size=2)
    off.store("x", ids, {0: _block()})
    assert len(off) == 0 and off.lookup("x", ids, 3) == []
