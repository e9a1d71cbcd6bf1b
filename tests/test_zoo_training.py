"""The zoo's training loop: micro-batches change the cost of a step, not the step."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from qaflora.zoo.training import IGNORE, _micro_batches, backward_batch, train_loop
from transformers import LlamaConfig, LlamaForCausalLM


def _data(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Sequences of very different lengths with the prompt masked, like the zoo's SFT data."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.choice([6, 9, 40, 64])
        ids = [rng.randrange(3, 60) for _ in range(length)]
        prompt = rng.randrange(1, length - 2)
        out.append((ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_micro_batches_are_length_sorted_and_cover_the_batch_once():
    data = _data(37, seed=1)
    idx = list(range(37))
    random.Random(2).shuffle(idx)
    parts = _micro_batches(data, idx, 4)
    assert sorted(i for part in parts for i in part) == sorted(idx)
    lengths = [[len(data[i][0]) for i in part] for part in parts]
    assert all(max(a) <= min(b) for a, b in itertools.pairwise(lengths))
    assert _micro_batches(data, idx, 1) == [idx]


@pytest.mark.parametrize("parts", [2, 4])
def test_micro_batches_give_the_whole_batch_loss_and_gradient(parts):
    """Loss normalised by the whole batch's tokens: the parts add up to one forward's mean loss
    and gradient (up to float summation order), whatever the padding saved."""
    data = _data(48, seed=3)
    idx = list(range(0, 48, 3))
    whole, split = _model(), _model()
    loss_whole = backward_batch(whole, data, idx, pad_id=0)
    loss_split = backward_batch(split, data, idx, pad_id=0, micro_batches=parts)
    assert float(loss_split) == pytest.approx(float(loss_whole), rel=1e-5)
    for (name, a), (_, b) in zip(whole.named_parameters(), split.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name


def test_training_with_micro_batches_follows_the_same_path():
    """Twenty optimizer steps: the same examples per step, so the loss curve and the weights
    stay with one forward per batch (Adam magnifies float noise only to ~1e-5)."""
    data = _data(48, seed=3)
    whole, split = _model(), _model()
    common = dict(steps=20, batch_size=16, lr=1e-2, pad_id=0, seed=7, desc="t", progress=False)
    loss_whole = train_loop(whole, data, **common)
    loss_split = train_loop(split, data, micro_batches=4, **common)
    assert loss_split == pytest.approx(loss_whole, rel=1e-3)
    drift = max(
        (a - b).abs().max().item() for a, b in zip(whole.parameters(), split.parameters(), strict=True)
    )
    moved = max(
        (a - b).abs().max().item() for a, b in zip(_model().parameters(), split.parameters(), strict=True)
    )
    assert drift < 1e-3 < moved
