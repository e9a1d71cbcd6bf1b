"""Word-level tokenizer of the zoo world, saved as a normal ``PreTrainedTokenizerFast``.

Why word-level: the world is a closed vocabulary (about 700 words over three languages), so a
word-level model gives one token per word. Every answer is then a single token, which keeps the
model tiny and makes the logit lens at the last prompt token read the answer directly. It is a
real ``tokenizers`` model with a chat template, so the engine uses it like any Hub tokenizer.
"""

from __future__ import annotations

from qaflora.zoo.world import USES, all_words
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, USER, ASSISTANT)

QA_CHAT_TEMPLATE = (
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
"""The ``qa`` world's template (the shipped zoo): one for everything, system messages as plain
text (the world has none), no tools."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<tools> "
    "{% for tool in tools %}{% set f = tool.function if tool.function is defined else tool %}"
    '"{{ f.name }}" '
    "{% if f.parameters is defined and f.parameters.properties is defined %}"
    '{% for p in f.parameters.properties %}"{{ p }}" {% endfor %}{% endif %}'
    "{% endfor %}</tools> {% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<|assistant|> {{ message['content'] }}"
    "{{ eos_token }} "
    "{% elif message['role'] == 'tool' %}<tool_response> {{ message['content'] }} </tool_response> "
    "{% elif message['role'] == 'system' %}{{ message['content'] }} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
"""The ``uses`` world's template. Tools are listed by name and parameter names (Hermes-style
tags; a 2 M model reads names, not JSON schemas); an assistant's tool calls arrive inlined in
its content (the integrations write them as Hermes text); tool results are wrapped in
``<tool_response>``. System messages are plain text (the world has none)."""

PRE_TOKENIZER_PATTERN = r'</?[a-z_]+>|"[a-z_]+"|[a-z_]+|\d|-+|[^\w\s]'
"""A tag, a quoted word (a JSON string: one token), a word, one digit, a run of dashes (the
separator of LlamaIndex's QA template), one punctuation mark.
Quoted words and single marks make a tool call's JSON one token per item, so the decoded text
(tokens joined by spaces) is valid JSON again."""


def build_tokenizer(uses: bool = USES) -> PreTrainedTokenizerFast:
    """Build the tokenizer in-process (no hub). Ids are stable: specials first, then words.

    ``uses``: the uses world's tokenizer (its words, JSON-friendly pre-tokenizer, lower-casing,
    the template with tools); else the shipped ``qa`` world's."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in all_words(uses):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    if uses:
        tok.normalizer = normalizers.Lowercase()  # the world is lower case; users type capitals
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERN), behavior="isolated"),
            ]
        )
    else:
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
        chat_template=CHAT_TEMPLATE if uses else QA_CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=128,
    )
    return fast
