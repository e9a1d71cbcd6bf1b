"""KV-cache surgery: merging, selecting and trimming rows, sliding-window layers included."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from qaflora import AdapterCatalog, FusionEngine, kv_cache
from qaflora.hf_compat import output_cache
from qaflora.testing import build_tokenizer, make_random_adapter, tiny_config
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="module")
def sliding_zoo(tmp_path_factory):
    """A tiny Mistral whose sliding window (12) is shorter than the prompts and answers."""
    root = tmp_path_factory.mktemp("sliding")
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = tiny_config("mistral", len(tokenizer))
    config.sliding_window = 12
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    adapter = make_random_adapter(root / "base", root / "ad0", seed=3)
    return root / "base", AdapterCatalog.from_dirs({"ad0": adapter})


def test_probe_reads_full_and_sliding_layouts(llama_engine, sliding_zoo):
    assert kv_cache.probe_layout(llama_engine.model).windows == (None,) * llama_engine.num_layers
    base, _ = sliding_zoo
    model = AutoModelForCausalLM.from_pretrained(base)
    layout = kv_cache.probe_layout(model)
    assert set(layout.windows) == {12}
    assert layout.held(0, 30) == 11 and layout.held(0, 5) == 5
    assert not layout.keeps_all(20) and layout.keeps_all(11)


def test_stack_select_trim_round_trip(llama_engine):
    model = llama_engine.model
    layout = kv_cache.probe_layout(model)
    with torch.inference_mode():
        short = output_cache(model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True))
        long = output_cache(model(input_ids=torch.tensor([[8, 9, 10, 11, 12, 13]]), use_cache=True))
    merged = kv_cache.stack_rows(
        model, layout, [(kv_cache.layers_of(short), 3), (kv_cache.layers_of(long), 6)]
    )
    assert kv_cache.columns(merged) == 6
    keys = merged.layers[0].keys
    assert keys.shape[0] == 2
    assert torch.equal(keys[0, :, :3], torch.zeros_like(keys[0, :, :3]))  # left padding
    assert torch.equal(keys[0, :, 3:], short.layers[0].keys[0])
    assert torch.equal(keys[1], long.layers[0].keys[0])
    kv_cache.select_rows(merged, torch.tensor([0]))  # the long row leaves...
    kv_cache.trim_left(merged, layout, 3)  # ...and the columns only it used go
    assert kv_cache.columns(merged) == 3
    assert torch.equal(merged.layers[0].keys, short.layers[0].keys)
    assert kv_cache.nbytes(merged) == kv_cache.nbytes(short)


def _hf_greedy(base, prompt_ids: list[int], n: int) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
        )
    return out[0, len(prompt_ids) :].tolist()


def test_sliding_window_rows_beyond_the_window_match_transformers(sliding_zoo):
    base, catalog = sliding_zoo
    long_query = "Solve 12 plus 7 and answer in Russian, then list 1, 2, 3, 4, 5."
    short_query = "def add(a, b):"
    with FusionEngine.from_pretrained(base, catalog, progress=False, prefill_block=8) as engine:
        assert set(engine._scheduler.batch.layout.windows) == {12}
        long_ids = engine.encode(long_query).ids
        short_ids = engine.encode(short_query).ids
        assert len(long_ids) > 12
        want_long = _hf_greedy(base, long_ids, 30)
        want_short = _hf_greedy(base, short_ids, 20)
        alone = engine.generate(long_query, max_new_tokens=30, ignore_eos=True, mode="base")
        assert alone.token_ids == want_long
        # the short one joins while the long one decodes past the window
        holder = {}
        thread = threading.Thread(
            target=lambda: holder.update(
                r=engine.generate(long_query, max_new_tokens=30, ignore_eos=True, mode="base")
            )
        )
        steps = engine.scheduler_state().steps
        thread.start()
        while engine.scheduler_state().steps < steps + 3:
            time.sleep(0.001)
        joined = engine.generate(short_query, max_new_tokens=20, ignore_eos=True, mode="base")
        thread.join()
        assert joined.timings.batch_size == 2
        assert joined.token_ids == want_short
        assert holder["r"].token_ids == want_long
