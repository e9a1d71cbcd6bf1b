"""Tiny random models and adapters, built in-process, for tests, demos and benchmarks.

No model can be downloaded here, and users testing their integration should not
need one either: these helpers build a small causal LM of a chosen family with
a real (trained-in-milliseconds) BPE tokenizer and chat template, save it with
``save_pretrained``, and create random PEFT LoRA adapters for it
(``init_lora_weights=False``), so every load goes through the real
``from_pretrained`` paths.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from .hf_quiet import quiet_transformers

Architecture = Literal["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2"]
ARCHITECTURES: tuple[str, ...] = ("llama", "mistral", "qwen2", "gemma", "phi3", "gpt2")

CHAT_TEMPLATE = (
    "{% if tools %}<|system|>\nTools: {{ tools | tojson }}\n"
    'Call a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call></s>\n{% endif %}'
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]

_CORPUS = [
    "Solve 12 plus 7 and answer in Russian.",
    "What is the capital of France? Paris is the capital.",
    "def add(a, b): return a + b",
    "The patient has a fever; aspirin lowers fever.",
    "Translate to Spanish: the cat sleeps. El gato duerme.",
    "Write a list: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "Привет, как дела? Hola, ¿qué tal? Bonjour!",
    "The quick brown fox jumps over the lazy dog 0123456789 {}[]()<>:;,.!?'\"+-*/=_",
]

LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def build_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with chat special tokens and a chat template."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(
    arch: Architecture, vocab_size: int, *, hidden: int = 64, layers: int = 3, context: int = 256
) -> PretrainedConfig:
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    llama_like = dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        **common,
    )
    if arch == "llama":
        return LlamaConfig(**llama_like)
    if arch == "mistral":
        return MistralConfig(sliding_window=context, **llama_like)
    if arch == "qwen2":
        return Qwen2Config(**llama_like)
    if arch == "gemma":
        return GemmaConfig(head_dim=hidden // 4, **llama_like)
    if arch == "phi3":
        return Phi3Config(
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=context,
            original_max_position_embeddings=context,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=context,
            vocab_size=vocab_size,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")


def build_tiny_model(
    arch: Architecture,
    path: str | Path,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 3,
    context: int = 256,
) -> Path:
    """Create, randomly initialise and save a tiny causal LM with its tokenizer at ``path``."""
    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    config = tiny_config(arch, len(tokenizer), hidden=hidden, layers=layers, context=context)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with quiet_transformers():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_random_adapter(
    base_path: str | Path,
    out_path: str | Path,
    *,
    seed: int,
    rank: int = 4,
    alpha: float = 8.0,
    targets: list[str] | None = None,
    arch: Architecture | None = None,
    strength: float = 1.0,
) -> Path:
    """Save a random LoRA (``init_lora_weights=False``) for the model at ``base_path``.

    ``strength`` scales B, so tests can make an adapter matter more or less.
    """
    torch.manual_seed(seed)
    with quiet_transformers():
        base = AutoModelForCausalLM.from_pretrained(str(base_path))
    if targets is None:
        family = arch or _family(base.config.model_type)
        targets = LORA_TARGETS[family]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        init_lora_weights=False,
        fan_in_fan_out=base.config.model_type == "gpt2",
        lora_dropout=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base, config)
    if strength != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(strength)
    model.save_pretrained(str(out_path))
    return Path(out_path)


def _family(model_type: str) -> str:
    return model_type if model_type in LORA_TARGETS else "llama"


# Ray's own fixed and default ports (GCS 6379, dashboard 8265, client server 10001, workers
# 10002-19999, dashboard agent 52365, ...) and Linux's ephemeral range (32768-60999, where every
# bind to port 0 lands) both lie outside this band.
_TEST_PORTS = range(20_000, 32_768)


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 now, for a server a test starts in another process.

    Not ``bind(0)``: that returns an ephemeral port, and a Ray runtime started next binds its own
    services to ephemeral and default ports; a port returned that way was once taken by Ray's
    dashboard agent (52365) before the test's server bound it (CI, 2026-12-02).
    """
    import random
    import socket

    for port in random.sample(_TEST_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {_TEST_PORTS.start}-{_TEST_PORTS.stop - 1}")
