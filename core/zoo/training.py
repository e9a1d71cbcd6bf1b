"""CPU training of the tiny Llama base and its PEFT LoRA adapters.

Kept deliberately plain (hand-written loop, no ``Trainer``): the whole zoo must build on two CPU
cores in minutes, and a plain loop has no hidden data-loader / logging overhead.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from qaflora.hf_quiet import ignore_library_internal_deprecations
from qaflora.zoo.world import LANGUAGES, LEXICONS, ZooExample, quoted_words
from torch import nn
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

IGNORE = -100
LORA_TARGETS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)  # fmt: skip
BASE_NAME = "qaflora-zoo-base"
"""Stable name written into the base config and every adapter_config.json (no tmp paths)."""


@dataclass(frozen=True)
class ModelSize:
    """Llama shape of the base. The defaults are the shipped zoo; ``quick`` is for tests."""

    hidden: int = 192
    intermediate: int = 512
    layers: int = 4
    heads: int = 4


def make_base(vocab_size: int, size: ModelSize, tokenizer: PreTrainedTokenizerBase, seed: int):
    """A freshly initialised ``LlamaForCausalLM``."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config)
    model.config._name_or_path = BASE_NAME
    model.name_or_path = BASE_NAME
    return model


class LexiconTied(nn.Module):
    """Embedding / LM-head matrix whose rows are tied across languages during base training.

    Row of word w in language L = shared[w] + lang[L]. WHY: real multilingual LLMs map
    translations of a word to nearby representations because they see enormous amounts of
    multilingual text; a 2M-parameter model trained for minutes on ~10^4 examples per language
    does not (measured: task adapters trained on English did not fire on Zorbic questions, so
    no task + language pair could compose). Tying emulates that alignment. It only constrains
    the base during its training: ``materialize`` turns it into ordinary untied ``Embedding``
    and ``Linear`` weights, so the saved model is a plain ``LlamaForCausalLM`` and adapters
    are trained on it like on any Llama.
    """

    def __init__(self, shared_index: torch.Tensor, lang_index: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.register_buffer("shared_index", shared_index, persistent=False)
        self.register_buffer("lang_index", lang_index, persistent=False)
        n_shared, n_lang = int(shared_index.max()) + 1, int(lang_index.max()) + 1
        self.shared = nn.Parameter(torch.randn(n_shared, dim) * 0.02)
        self.lang = nn.Parameter(torch.randn(n_lang, dim) * 0.02)

    def matrix(self) -> torch.Tensor:
        has_lang = (self.lang_index > 0).to(self.lang.dtype)[:, None]
        return self.shared[self.shared_index] + self.lang[self.lang_index] * has_lang


class TiedEmbedding(LexiconTied):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.matrix())


class TiedHead(LexiconTied):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.matrix().T


def lexicon_index(tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
    """For every token id: its shared row (translations share one) and its language (0=none)."""
    vocab = tokenizer.get_vocab()
    owner: dict[str, tuple[str, int]] = {}
    for li, lang in enumerate(LANGUAGES, start=1):
        for en_word, word in LEXICONS[lang].items():
            owner[word] = (en_word, li)
    # a JSON string token ("aspirin" in a tool call) is one more rendering of its word
    for quoted in quoted_words():
        owner[quoted] = (quoted.strip('"'), len(LANGUAGES) + 1)
    rows: dict[str, int] = {}
    shared = torch.zeros(len(vocab), dtype=torch.long)
    langs = torch.zeros(len(vocab), dtype=torch.long)
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        key, li = owner.get(tok, (tok, 0))
        shared[i] = rows.setdefault(key, len(rows))
        langs[i] = li
    return shared, langs


def tie_lexicon(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
    """Swap in cross-lingually tied embedding and head (for base training only)."""
    shared, langs = lexicon_index(tokenizer)
    dim = model.config.hidden_size
    model.model.embed_tokens = TiedEmbedding(shared, langs, dim)
    model.lm_head = TiedHead(shared, langs, dim)


def materialize(model: LlamaForCausalLM) -> None:
    """Replace tied modules by plain ``nn.Embedding`` / ``nn.Linear`` with the same weights."""
    emb, head = model.model.embed_tokens, model.lm_head
    if isinstance(emb, TiedEmbedding):
        with torch.no_grad():
            weight = emb.matrix().detach().clone()
        new = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=model.config.pad_token_id)
        new.weight = nn.Parameter(weight)
        model.model.embed_tokens = new
    if isinstance(head, TiedHead):
        with torch.no_grad():
            weight = head.matrix().detach().clone()
        new_head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        new_head.weight = nn.Parameter(weight)
        model.lm_head = new_head


def encode(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ZooExample],
    answer_only: bool,
    answer_only_tasks: frozenset[str] = frozenset(),
) -> list[tuple[list[int], list[int]]]:
    """Token ids + labels, the prompt equal to ``apply_chat_template`` output.

    Plain single-turn examples are built by concatenation instead of Jinja because the base
    mix has ~10^5 examples; tool transcripts and the like go through the chat template.
    ``answer_only`` masks the prompt (SFT); the base instead learns the whole sequence, which
    is what gives it a model of the question languages. ``answer_only_tasks`` masks the prompt
    of just those tasks (``meta["task"]``) in a full-sequence mix: a random word list is noise
    to predict, while its answer is the one token that teaches the lookup.
    """
    t = tokenizer
    head = [t.bos_token_id, t.convert_tokens_to_ids("<|user|>")]
    asst = t.convert_tokens_to_ids("<|assistant|>")
    prompts = t([ex.prompt if ex.plain else "" for ex in examples], add_special_tokens=False)["input_ids"]
    answers = t([ex.answer for ex in examples], add_special_tokens=False)["input_ids"]
    out = []
    for ex, p, a in zip(examples, prompts, answers, strict=True):
        if ex.plain:
            prompt = [*head, *p, asst]
        else:
            prompt = t(ex.chat_prompt(t), add_special_tokens=False)["input_ids"]
        ids = prompt + a + [t.eos_token_id]
        masked = answer_only or ex.meta.get("task") in answer_only_tasks
        n_masked = len(prompt) if masked else 1
        labels = [IGNORE] * n_masked + ids[n_masked:]
        out.append((ids, labels))
    return out


def _batches(data, batch_size: int, steps: int, seed: int, buckets: int = 1) -> Iterator[list[int]]:
    """Row indices of random batches; ``buckets > 1``: of similar length.

    Why length buckets (the ``uses`` world): passages and tool transcripts are 3-4x longer than
    the world's questions, and one of them in a random batch of 64 pads the other 63 to its
    length (measured: the base ran at 2 steps/s instead of 5). A window of ``buckets`` batches
    is still a uniform random draw; only its split into batches follows length, and the
    batches of a window come in random order. ``buckets=1`` is the shipped zoo's plain order.
    """
    rng = random.Random(seed)
    order: list[int] = []
    ready: list[list[int]] = []
    for _ in range(steps):
        if not ready:
            while len(order) < batch_size * buckets:
                extra = list(range(len(data)))
                rng.shuffle(extra)
                order.extend(extra)
            window, order = order[: batch_size * buckets], order[batch_size * buckets :]
            if buckets > 1:
                window.sort(key=lambda i: len(data[i][0]))
            ready = [window[j : j + batch_size] for j in range(0, len(window), batch_size)]
            rng.shuffle(ready)
        yield ready.pop()


def _padded(data, idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, labels, mask)`` of the rows ``idx``, right-padded to their longest sequence."""
    length = max(len(data[i][0]) for i in idx)
    ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(idx), length), dtype=torch.long)
    for row, i in enumerate(idx):
        x, y = data[i]
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, labels, mask


def _micro_batches(data, idx: list[int], parts: int) -> list[list[int]]:
    """The rows of ONE batch split into ``parts`` groups of similar length (``parts=1``: as drawn).

    Why: one long transcript pads every row of a random batch to its length. Accumulating the
    gradient of length-sorted parts computes the same batch gradient (up to float summation
    order) on a fraction of the padding, without changing which examples share an optimizer
    step -- unlike length buckets, which did change it and cost the code adapter 27 points.
    """
    if parts <= 1:
        return [idx]
    ordered = sorted(idx, key=lambda i: len(data[i][0]))
    size = math.ceil(len(ordered) / parts)
    return [ordered[j : j + size] for j in range(0, len(ordered), size)]


def _supervised_tokens(data, idx: list[int]) -> int:
    """Tokens that carry a loss in the rows ``idx`` (the causal shift drops each first label)."""
    return sum(sum(1 for label in data[i][1][1:] if label != IGNORE) for i in idx)


def backward_batch(
    model: torch.nn.Module, data, idx: list[int], pad_id: int, micro_batches: int = 1
) -> torch.Tensor:
    """Accumulate the gradient of the mean token loss of batch ``idx``; return that loss.

    ``micro_batches > 1`` runs length-sorted parts (:func:`_micro_batches`), each loss summed
    over its tokens and divided by the WHOLE batch's token count, so the parts add up to the
    batch's mean and its gradient."""
    parts = _micro_batches(data, idx, micro_batches)
    if len(parts) == 1:
        ids, labels, mask = _padded(data, idx, pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach()
    total = _supervised_tokens(data, idx)
    loss = torch.zeros(())
    for part in parts:
        ids, labels, mask = _padded(data, part, pad_id)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=total)
        out.loss.backward()
        loss = loss + out.loss.detach()
    return loss


def _lr_lambda(steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    return f


def train_loop(
    model: torch.nn.Module,
    data: list[tuple[list[int], list[int]]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int,
    desc: str,
    progress: bool,
    weight_decay: float = 0.0,
    buckets: int = 1,
    micro_batches: int = 1,
) -> float:
    """AdamW with warmup + cosine decay; returns the mean loss of the last 10 % of steps.

    ``micro_batches > 1`` accumulates each batch's gradient over length-sorted parts
    (:func:`_micro_batches`); ``1`` is the shipped zoo's single forward per batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, max(1, steps // 20)))
    model.train()
    tail: list[float] = []
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=True, mininterval=1.0)
    with deterministic_algorithms():
        for step, idx in enumerate(_batches(data, batch_size, steps, seed, buckets)):
            loss = backward_batch(model, data, idx, pad_id, micro_batches)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step >= steps * 0.9:
                tail.append(loss.item())
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update(1)
    bar.close()
    model.eval()
    return sum(tail) / max(1, len(tail))


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms(True)``, then restore the setting.

    Why: with two intra-op threads, two runs of the same 150 base steps gave the same loss to
    five digits but different weights (some backward kernel accumulates in thread order), and a
    full build drifted into a visibly different zoo. With deterministic kernels the same runs
    are bit-identical at the same speed (measured: 34 s either way; one thread is also
    deterministic but 1.65x slower).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def lora_config(rank: int) -> LoraConfig:
    """LoRA on every linear of every layer, like real Llama LoRAs."""
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )


def train_lora(
    base: LlamaForCausalLM,
    data: list[tuple[list[int], list[int]]],
    *,
    name: str,
    rank: int,
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int,
    progress: bool,
    buckets: int = 1,
    micro_batches: int = 1,
) -> tuple[PeftModel, float]:
    """Train one adapter on ``base`` (left unchanged) and return the PeftModel and tail loss."""
    torch.manual_seed(seed)
    # get_peft_model injects layers in place: work on a copy so ``base`` stays clean.
    with ignore_library_internal_deprecations():  # PEFT's own read of a deprecated attribute
        peft_model = get_peft_model(copy.deepcopy(base), lora_config(rank), adapter_name=name)
    loss = train_loop(
        peft_model,
        data,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        pad_id=pad_id,
        seed=seed,
        desc=f"adapter {name}",
        progress=progress,
        buckets=buckets,
        micro_batches=micro_batches,
    )
    return peft_model, loss
