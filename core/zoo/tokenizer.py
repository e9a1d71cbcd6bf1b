"""Word-level tokenizer of the zoo world, saved as a normal ``PreTrainedTokenizerFast``.

Why word-level: the world is a closed vocabulary (about 700 words over three languages), so a
word-level model gives one token per word. Every answer is then a single token, which keeps the
model tiny and makes the logit lens at the last prompt token read the answer directly. It is a
real ``tokenizers`` model with a chat template, so the engine uses it like any Hub tokenizer.
"""

from __future__ import annotations

from qaflora.zoo.world import all_words
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, USER, ASSISTANT)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<|assistant|> {{ message['content'] }}"
    "{{ eos_token }} "
    "{% elif message['role'] == 'system' %}{{ message['content'] }} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""One template for everything. System messages are plain text (the world has none)."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the tokenizer in-process (no hub). Ids are stable: specials first, then words."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in all_words():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=128,
    )
    return fast
