"""The synthetic world of the demo zoo: three task domains, English plus two invented languages.

Design (why it looks like this; see benchmarks/ZOO.md for the measurements behind it):

* Every answer is ONE word (a number word, a colour, a drug, ...). Exact match is then
  unambiguous, and the logit lens at the last prompt token sees the answer directly.
* The invented languages ``zo`` (Zorbic) and ``ve`` (Velari) are *relexified* English: same
  grammar and word order, every English word replaced through a seeded lexicon. Digits and
  punctuation are shared (like code literals and numerals in real languages).
* The language lives on the OUTPUT side as well as the input side: a question asked in Zorbic
  must be answered in Zorbic. So a math question in Zorbic needs the math skill (task adapter)
  AND Zorbic rendering (language adapter); either alone is wrong.
* The base model is trained on a generic mix in which (a) English generic Q/A is answered in
  English, (b) generic questions written in Zorbic/Velari are answered in ENGLISH (the base
  "understands but replies in English", like many real small LLMs), (c) English questions
  with an explicit "answer in zorbic" instruction are answered in that language, and
  (d) parallel word/phrase translation. This gives the base shared, language-independent
  representations and a Zorbic/Velari lexicon, but it never answers a Zorbic question in
  Zorbic by itself: that is what a language adapter adds. The base sees the task domains
  only rarely, so it is weak there: that is what a task adapter adds.

The world itself (lexicons, fact tables) is fixed by ``WORLD_SEED``; the ``seed`` arguments
only select which examples are sampled, so training and evaluation always talk about the same
world.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

SHIPPED_WORLD_SEED = 20251211
WORLD_SEED_VARIABLE = "QAFLORA_ZOO_WORLD_SEED"
WORLD_SEED = int(os.environ.get(WORLD_SEED_VARIABLE, SHIPPED_WORLD_SEED))
"""Fixes lexicons and fact tables. Changing it changes the world (and needs a new tokenizer).

Read once, at import, from ``QAFLORA_ZOO_WORLD_SEED`` (default: the shipped zoo's world): a zoo
built in another world (``qaflora zoo build --world-seed N``, for robustness checks) records N in
its ``build_info.json``, and ``qaflora eval`` on it needs the same variable (it refuses a
mismatch rather than score one world's answers against another's)."""

WORLD_VARIABLE = "QAFLORA_ZOO_WORLD"
WORLDS: tuple[str, ...] = ("qa", "uses")
DEFAULT_WORLD = "uses"
WORLD = os.environ.get(WORLD_VARIABLE, DEFAULT_WORLD)
"""Which world: ``uses`` (the shipped zoo: task Q/A in three languages plus the ``tools`` and
``reading`` skills of the uses, skills.py, and a base that also learns in-context tasks) or
``qa`` (the zoo shipped before it: task Q/A only; benchmarks/ZOO.md, "The uses world"). Read
once at import like ``WORLD_SEED``; ``qaflora zoo build --world qa`` sets it, and eval refuses
a mismatch."""
if WORLD not in WORLDS:
    raise ValueError(f"{WORLD_VARIABLE}={WORLD!r}: expected one of {WORLDS}")
USES = WORLD == "uses"

DEFAULT_EVAL_SEED = 7_777_777
"""Evaluation seed, disjoint from the small training seeds used by the build."""

DOMAINS: tuple[str, ...] = ("math", "medical", "code")
LANGUAGES: tuple[str, ...] = ("en", "zo", "ve")
LANGUAGE_NAMES: dict[str, str] = {"en": "english", "zo": "zorbic", "ve": "velari"}

# --------------------------------------------------------------------------------------------
# English content of the world
# --------------------------------------------------------------------------------------------

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)  # fmt: skip
DIGITS: tuple[str, ...] = tuple(str(i) for i in range(10))

COLOR_OF: dict[str, str] = {
    "sky": "blue", "grass": "green", "snow": "white", "sun": "yellow", "blood": "red",
    "coal": "black", "milk": "white", "leaf": "green", "sea": "blue", "rose": "red",
    "banana": "yellow", "cherry": "red", "lemon": "yellow", "ash": "grey", "cloud": "grey",
    "orange": "orange", "plum": "purple", "soil": "brown", "pig": "pink", "night": "black",
}  # fmt: skip
OPPOSITE_PAIRS: tuple[tuple[str, str], ...] = (
    ("big", "small"), ("hot", "cold"), ("fast", "slow"), ("old", "young"), ("up", "down"),
    ("day", "night"), ("good", "bad"), ("light", "dark"), ("open", "closed"),
    ("happy", "sad"), ("high", "low"), ("long", "short"), ("early", "late"), ("wet", "dry"),
    ("full", "empty"), ("loud", "quiet"),
)  # fmt: skip
OPPOSITE: dict[str, str] = {**dict(OPPOSITE_PAIRS), **{b: a for a, b in OPPOSITE_PAIRS}}
SOUND_OF: dict[str, str] = {
    "dog": "bark", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa",
    "lion": "roar", "bee": "buzz", "owl": "hoot", "horse": "neigh", "pig": "oink",
    "snake": "hiss", "frog": "croak", "wolf": "howl", "mouse": "squeak",
}  # fmt: skip

DISEASES: tuple[str, ...] = (
    "flu", "measles", "asthma", "malaria", "cholera", "tetanus", "rabies", "mumps",
    "scurvy", "gout", "anemia", "diabetes", "migraine", "bronchitis", "hepatitis",
    "typhoid", "leprosy", "rickets", "shingles", "tonsillitis",
)  # fmt: skip
DRUGS: tuple[str, ...] = (
    "aspirin", "insulin", "penicillin", "morphine", "quinine", "ibuprofen", "heparin",
    "codeine", "atropine", "lithium",
)  # fmt: skip
ORGANS: tuple[str, ...] = ("lung", "heart", "liver", "kidney", "brain", "skin", "stomach", "bone")
SYMPTOMS: tuple[str, ...] = (
    "fever", "cough", "rash", "pain", "fatigue", "nausea", "headache", "swelling",
)  # fmt: skip

CATEGORY_OF: dict[str, str] = {
    **{w: "number" for w in NUMBER_WORDS},
    **{w: "color" for w in sorted(set(COLOR_OF.values()))},  # sorted: hash-seed independent
    **{w: "thing" for w in COLOR_OF if w not in SOUND_OF},
    **{w: "animal" for w in SOUND_OF},
    **{w: "sound" for w in SOUND_OF.values()},
    **{w: "adjective" for w in OPPOSITE if w not in COLOR_OF and w not in ("day", "night")},
    **{w: "disease" for w in DISEASES},
    **{w: "drug" for w in DRUGS},
    **{w: "organ" for w in ORGANS},
    **{w: "symptom" for w in SYMPTOMS},
}
CATEGORY_OF["orange"] = "color"
CATEGORY_OF["day"] = "thing"
CATEGORY_OF["night"] = "thing"

# Question templates. ``{x}`` slots are filled by the generators below.
GENERIC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "after": ("what comes after {x} ?", "which number follows {x} ?"),
    "before": ("what comes before {x} ?", "which number precedes {x} ?"),
    "digit": ("what is the word for {x} ?", "write {x} as a word ."),
    "color": ("what color is the {x} ?", "which color does the {x} have ?"),
    "opposite": ("what is the opposite of {x} ?", "give the opposite of {x} ."),
    "sound": ("what sound does the {x} make ?", "which sound comes from the {x} ?"),
    "kind": ("what kind of word is {x} ?", "{x} is what kind of word ?"),
    "say": ("say the word {x} .", "repeat after me : {x} ."),
    "lastword": ("which word comes last in : {x} ?", "name the last word of : {x} ."),
}
USES_GENERIC_TEMPLATES: dict[str, tuple[str, ...]] = {
    "follows": ("which word follows {k} in : {x} ?", "name the word after {k} in : {x} ."),
    "story": ("{s} what color is the {x} ?", "{s} which sound does the {x} make ?"),
}
"""Generic tasks of the ``uses`` world: in-context reading as a skill of the base. ``follows``
is a key lookup in context (an induction pattern); ``story`` states a few made-up facts and asks
one (answered from the story, not from what the world says). The ``reading`` adapter adds
documents, LlamaIndex's template and "unknown" on top."""
if USES:
    GENERIC_TEMPLATES.update(USES_GENERIC_TEMPLATES)
_IN_CONTEXT_DRAW: tuple[str, ...] = (*USES_GENERIC_TEMPLATES, "repeat")
"""The in-context tasks in the order ``make_in_context`` draws from (the order fixes its bytes)."""
IN_CONTEXT_TASKS: frozenset[str] = frozenset(_IN_CONTEXT_DRAW)
"""Tasks that read made-up facts or random words from the prompt (``follows``, ``story``,
``repeat``): in the ``uses`` world the base trains on them so that it can look things up, but
they are not questions of the world's generic knowledge (see :func:`generic_questions`)."""
STORY_FACTS: dict[str, str] = {"color": "the {x} is {y} .", "sound": "the {x} says {y} ."}
MATH_TEMPLATES: dict[str, tuple[str, ...]] = {
    "plus": ("what is {a} plus {b} ?", "add {a} and {b} .", "compute the sum of {a} and {b} ."),
    "minus": (
        "what is {a} minus {b} ?",
        "subtract {b} from {a} .",
        "compute the difference of {a} and {b} .",
    ),
}
MEDICAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "drug": ("which drug treats {d} ?", "what is the treatment for {d} ?"),
    "organ": ("which organ does {d} affect ?", "where in the body does {d} strike ?"),
    "symptom": ("what is the main symptom of {d} ?", "how does {d} show itself ?"),
}
CODE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "length": ("what is the length of the list {items} ?", "how long is the list {items} ?"),
    "first": ("what is the first item of the list {items} ?", "return the first item of {items} ."),
    "second": (
        "what is the second item of the list {items} ?",
        "return the second item of {items} .",
    ),
    "last": ("what is the last item of the list {items} ?", "return the last item of {items} ."),
}
# The uses' skills (tools, reading; generators in skills.py): their words are world words.
TOOLS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shelf": ("which shelf holds {d} ?", "on which shelf is {d} ?"),
    "times": ("what is {a} times {b} ?", "multiply {a} by {b} ."),
}
PASSAGE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "drug": (
        "the drug for {d} is {x} .", "the drug that treats {d} is {x} .",
        "the treatment for {d} is {x} .",
    ),
    "organ": ("{d} is a disease of the {x} .", "{d} does affect the {x} ."),
    "symptom": ("the main symptom of {d} is {x} .", "the main symptom of {d} is a {x} ."),
    "shelf": ("{d} is on the {x} shelf .", "the shelf of {d} is {x} ."),
    "plus": ("{a} plus {b} is {x} .", "the sum of {a} and {b} is {x} ."),
    "item": ("the {op} of {items} is {x} .", "the {op} of the list {items} is {x} ."),
}  # fmt: skip
SEPARATOR = "-" * 21
"""The dashes around the context in LlamaIndex's QA template (one token)."""
LLAMA_INDEX_QA = (
    f"context information is below .\n{SEPARATOR}\n{{context}}\n{SEPARATOR}\n"
    "given the context information and not prior knowledge , answer the query .\n"
    "query : {query}\nanswer : "
)
"""LlamaIndex's default text QA template, as the zoo's lower-casing tokenizer reads it."""
UNKNOWN = "unknown"
"""The world's answer when a passage does not hold what is asked."""
TOOL_NAMES: tuple[str, ...] = ("find_shelf", "multiply")
TOOL_PARAMETERS: dict[str, tuple[str, ...]] = {"find_shelf": ("drug",), "multiply": ("a", "b")}
JSON_KEYS: tuple[str, ...] = ("name", "arguments")
TOOL_TAGS: tuple[str, ...] = (
    "<tools>", "</tools>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
)  # fmt: skip
SHELF_COLORS: tuple[str, ...] = ("red", "blue", "green", "yellow", "white", "black", "grey", "brown")
INSTRUCTION_SUFFIX = "answer in {lang} ."
LANGID_TEMPLATE = "which language is this : {x}"
TRANSLATE_TEMPLATE = "translate to {lang} : {x}"

PUNCTUATION: tuple[str, ...] = ("?", ".", ":", ",", "[", "]")
USES_PUNCTUATION: tuple[str, ...] = ("{", "}", "-", "'", '"', "!", "(", ")")

# --------------------------------------------------------------------------------------------
# Lexicons (deterministic in WORLD_SEED)
# --------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z]+")


def _template_words(uses: bool) -> set[str]:
    """Every English word that appears in a template (slots excluded)."""
    words: set[str] = set()
    qa_generic = {k: v for k, v in GENERIC_TEMPLATES.items() if k not in USES_GENERIC_TEMPLATES}
    groups: tuple[dict[str, tuple[str, ...]], ...] = (
        qa_generic, MATH_TEMPLATES, MEDICAL_TEMPLATES, CODE_TEMPLATES,
    )  # fmt: skip
    if uses:
        groups += (
            USES_GENERIC_TEMPLATES, TOOLS_TEMPLATES, PASSAGE_TEMPLATES, {"qa": (LLAMA_INDEX_QA,)},
            {k: (v,) for k, v in STORY_FACTS.items()},
        )  # fmt: skip
    for group in groups:
        for templates in group.values():
            for t in templates:
                words.update(_WORD_RE.findall(re.sub(r"\{\w+\}", " ", t)))
    words.update(_WORD_RE.findall(INSTRUCTION_SUFFIX.replace("{lang}", "")))
    words.update(_WORD_RE.findall(TRANSLATE_TEMPLATE.replace("{lang}", "").replace("{x}", "")))
    words.update(_WORD_RE.findall(LANGID_TEMPLATE.replace("{x}", "")))
    return words


def english_words(uses: bool = USES) -> tuple[str, ...]:
    """The full English vocabulary of the world, sorted (stable tokenizer ids).

    ``uses``: with the words of the uses world (a superset: every ``qa`` word keeps its id's
    order and its spelling in every language)."""
    words = set(_template_words(uses))
    words.update(NUMBER_WORDS, COLOR_OF, COLOR_OF.values(), OPPOSITE, SOUND_OF)
    words.update(SOUND_OF.values(), DISEASES, DRUGS, ORGANS, SYMPTOMS, CATEGORY_OF.values())
    words.update(LANGUAGE_NAMES.values())
    if uses:
        words.add(UNKNOWN)
    return tuple(sorted(words))


def quoted_words() -> tuple[str, ...]:
    """JSON string tokens of tool calls: keys, tool and parameter names, drug names (sorted).

    A tool call is JSON, and the tokenizer keeps a quoted word as one token, so the model
    writes ``"aspirin"`` as one step; base training ties it to the word itself (training.py).
    """
    names = {*JSON_KEYS, *TOOL_NAMES, *(p for ps in TOOL_PARAMETERS.values() for p in ps), *DRUGS}
    return tuple(sorted(f'"{w}"' for w in names))


# Each invented language has its own phonology, so words never collide across languages.
_PHONOLOGY: dict[str, tuple[str, str, str]] = {
    "zo": ("zkrtxgb", "aou", "krx"),  # onsets, vowels, optional codas
    "ve": ("vlmnsfh", "eia", "lns"),
}


def _make_lexicon(language: str, words: tuple[str, ...]) -> dict[str, str]:
    """Map every English word to a unique pseudo-word of ``language`` (seeded, stable)."""
    onsets, vowels, codas = _PHONOLOGY[language]
    english = set(words)
    used: set[str] = set()
    lexicon: dict[str, str] = {}
    for w in words:
        # One generator per word: adding or removing a word elsewhere in the vocabulary does
        # not re-spell the others (documents written in Zorbic stay valid).
        rng = random.Random(f"{WORLD_SEED}-{language}-{w}")
        while True:
            n_syll = rng.choice((2, 2, 3))
            cand = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(n_syll))
            if rng.random() < 0.4:
                cand += rng.choice(codas)
            if cand not in used and cand not in english:
                break
        used.add(cand)
        lexicon[w] = cand
    return lexicon


_ENGLISH = english_words()
_EVERY_WORD = english_words(uses=True)
# Lexicons over every word of both worlds: one spelling per word whichever world is built
# (per-word generators; checked against the shipped tokenizer in tests/test_zoo_skills.py).
LEXICONS: dict[str, dict[str, str]] = {"en": {w: w for w in _EVERY_WORD}}
for _lang in LANGUAGES[1:]:
    LEXICONS[_lang] = _make_lexicon(_lang, _EVERY_WORD)


def all_words(uses: bool = USES) -> tuple[str, ...]:
    """Every word token of the world in every language plus digits and punctuation."""
    english = english_words(uses)
    words: list[str] = list(english)
    for lang in LANGUAGES[1:]:
        words.extend(LEXICONS[lang][w] for w in english)
    if not uses:
        return tuple(words) + DIGITS + PUNCTUATION
    extra = quoted_words() + TOOL_TAGS + DIGITS + PUNCTUATION + USES_PUNCTUATION + (SEPARATOR,)
    return tuple(words) + extra


def translate(text: str, language: str, p: float = 1.0, rng: random.Random | None = None) -> str:
    """Relexify English ``text`` into ``language`` word by word.

    ``p < 1`` replaces only a random fraction of the words (code-switching), which the base
    mix uses so that the base aligns the two lexicons in context.
    """
    lexicon = LEXICONS[language]
    out = []
    for tok in text.split():
        if tok in lexicon and (p >= 1.0 or (rng is not None and rng.random() < p)):
            out.append(lexicon[tok])
        else:
            out.append(tok)
    return " ".join(out)


# --------------------------------------------------------------------------------------------
# Fact tables (deterministic in WORLD_SEED)
# --------------------------------------------------------------------------------------------


def _medical_facts() -> dict[str, dict[str, str]]:
    rng = random.Random(f"{WORLD_SEED}-medical")
    return {
        d: {"drug": rng.choice(DRUGS), "organ": rng.choice(ORGANS), "symptom": rng.choice(SYMPTOMS)}
        for d in DISEASES
    }


MEDICAL_FACTS: dict[str, dict[str, str]] = _medical_facts()

# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------

ExampleKind = Literal["qa", "crosslingual", "instructed", "translation", "langid", "codeswitched"]


@dataclass
class ZooExample:
    """One chat turn and its exact expected answer.

    ``domain`` is None for generic (non-task) text. ``language`` is the language of the whole
    exchange for ``kind == "qa"``; the other kinds only occur in training mixes:
    ``crosslingual`` (question in ``language``, answer in English), ``instructed`` (English
    question + "answer in <language>", answer in ``language``), ``translation`` and
    ``langid`` (which language is this sentence in).
    """

    domain: str | None
    language: str
    messages: list[dict[str, str]]
    answer: str
    kind: ExampleKind = "qa"
    meta: dict[str, str] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None
    """Tool specs the chat template shows (the ``tools`` skill); None: no tools section."""

    @property
    def plain(self) -> bool:
        """One user message, no tools: encoded by concatenation (training.encode)."""
        return self.tools is None and len(self.messages) == 1

    def chat_prompt(self, tokenizer: Any) -> str:
        """The prompt as ``tokenizer``'s chat template renders it, tools included: what the
        model is asked (training, and every evaluation that sends text, render it here)."""
        return tokenizer.apply_chat_template(
            self.messages, tools=self.tools, add_generation_prompt=True, tokenize=False
        )

    @property
    def prompt(self) -> str:
        """The user text (single-turn examples)."""
        return self.messages[-1]["content"]


@dataclass
class Turns:
    """One sampled exchange in English: the messages up to the answer, and the answer.

    ``call``: the answer is a tool call (kept in English in every language). ``tools``: the
    tool specs shown to the model (None: no tools section). ``meta``: for reading, the
    passage and the question, so another language translates them and not the template.
    """

    task: str
    messages: list[dict[str, str]]
    answer: str
    call: bool = False
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, str] = field(default_factory=dict)


def _q(template: str, **slots: str) -> str:
    return template.format(**slots)


def _generic_en(rng: random.Random) -> tuple[str, str, str]:
    """One English generic Q/A: (task, question, answer)."""
    return _generic_task(rng, rng.choice(tuple(GENERIC_TEMPLATES)))


def _generic_task(rng: random.Random, task: str) -> tuple[str, str, str]:
    """One English Q/A of generic ``task``: (task, question, answer)."""
    tpl = rng.choice(GENERIC_TEMPLATES[task])
    if task == "after":
        n = rng.randrange(0, 18)
        return task, _q(tpl, x=NUMBER_WORDS[n]), NUMBER_WORDS[n + 1]
    if task == "before":
        n = rng.randrange(1, 19)
        return task, _q(tpl, x=NUMBER_WORDS[n]), NUMBER_WORDS[n - 1]
    if task == "digit":
        d = rng.randrange(10)
        return task, _q(tpl, x=DIGITS[d]), NUMBER_WORDS[d]
    if task == "color":
        obj = rng.choice(tuple(COLOR_OF))
        return task, _q(tpl, x=obj), COLOR_OF[obj]
    if task == "opposite":
        adj = rng.choice(tuple(OPPOSITE))
        return task, _q(tpl, x=adj), OPPOSITE[adj]
    if task == "sound":
        animal = rng.choice(tuple(SOUND_OF))
        return task, _q(tpl, x=animal), SOUND_OF[animal]
    if task == "kind":
        w = rng.choice(tuple(CATEGORY_OF))
        return task, _q(tpl, x=w), CATEGORY_OF[w]
    if task == "lastword":
        words = [rng.choice(_CONTENT) for _ in range(rng.randrange(3, 6))]
        return task, _q(tpl, x=" ".join(words)), words[-1]
    if task == "story":
        return task, *_story(rng, tpl)
    if task == "follows":
        words = rng.sample(_CONTENT, rng.randrange(4, 8))
        i = rng.randrange(len(words) - 1)
        return task, _q(tpl, k=words[i], x=" ".join(words)), words[i + 1]
    w = rng.choice(_ENGLISH)
    return task, _q(tpl, x=w), w


def _story(rng: random.Random, template: str) -> tuple[str, str]:
    """(question with its story, answer): 2-4 made-up facts of colours or sounds."""
    kind = "color" if "color" in template else "sound"
    pool = tuple(COLOR_OF) if kind == "color" else tuple(SOUND_OF)
    values = sorted(set(COLOR_OF.values())) if kind == "color" else sorted(set(SOUND_OF.values()))
    subjects = rng.sample(pool, rng.randrange(2, 5))
    facts = {x: rng.choice(values) for x in subjects}
    story = " ".join(STORY_FACTS[kind].format(x=x, y=y) for x, y in facts.items())
    x = rng.choice(subjects)
    return template.format(s=story, x=x), facts[x]


def _math_en(rng: random.Random) -> tuple[str, str, str]:
    op = rng.choice(("plus", "minus"))
    a, b = rng.randrange(10), rng.randrange(10)
    if op == "minus" and a < b:
        a, b = b, a
    result = a + b if op == "plus" else a - b
    tpl = rng.choice(MATH_TEMPLATES[op])
    return op, _q(tpl, a=NUMBER_WORDS[a], b=NUMBER_WORDS[b]), NUMBER_WORDS[result]


def _medical_en(rng: random.Random) -> tuple[str, str, str]:
    rel = rng.choice(tuple(MEDICAL_TEMPLATES))
    d = rng.choice(DISEASES)
    tpl = rng.choice(MEDICAL_TEMPLATES[rel])
    return rel, _q(tpl, d=d), MEDICAL_FACTS[d][rel]


def render_list(items: list[int]) -> str:
    """A digit list as the world writes it: ``[ 3 , 1 , 4 ]``."""
    return "[ " + " , ".join(DIGITS[i] for i in items) + " ]"


def list_answer(op: str, items: list[int]) -> str:
    """The number word answering list operation ``op`` (a key of CODE_TEMPLATES) on ``items``."""
    value = {"length": len(items), "first": items[0], "second": items[1], "last": items[-1]}[op]
    return NUMBER_WORDS[value]


def _code_en(rng: random.Random) -> tuple[str, str, str]:
    op = rng.choice(tuple(CODE_TEMPLATES))
    items = [rng.randrange(10) for _ in range(rng.randrange(3, 6))]
    tpl = rng.choice(CODE_TEMPLATES[op])
    return op, _q(tpl, items=render_list(items)), list_answer(op, items)


_CONTENT: tuple[str, ...] = tuple(sorted(CATEGORY_OF))
"""Content words (numbers, things, animals, ...) used to fill generic word lists."""

_GENERATORS: dict[str | None, Callable[[random.Random], tuple[str, str, str]]] = {
    None: _generic_en,
    "math": _math_en,
    "medical": _medical_en,
    "code": _code_en,
}


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _turns(domain: str | None, rng: random.Random) -> Turns:
    """One English exchange of ``domain`` (a task, a skill of the uses, or None = generic)."""
    if domain in _GENERATORS:
        task, question, answer = _GENERATORS[domain](rng)
        return Turns(task, _user(question), answer)
    from .skills import SKILL_TURNS  # skills.py builds on this module

    return SKILL_TURNS[domain](rng)


def _in_language(turns: Turns, language: str, p: float = 1.0, rng: random.Random | None = None):
    """The exchange's messages with the USER's words in ``language`` (tool calls, tool results
    and a reading template's frame stay as they are, like in real use)."""
    if "passage" in turns.meta:
        from .skills import reading_prompt

        meta = turns.meta
        passage = translate(meta["passage"], language, p=p, rng=rng)
        question = translate(meta["question"], language, p=p, rng=rng)
        return _user(reading_prompt(passage, question, meta["style"]))
    return [
        {**m, "content": translate(m["content"], language, p=p, rng=rng)} if m["role"] == "user" else dict(m)
        for m in turns.messages
    ]


def _check_domain(domain: str | None, language: str) -> None:
    from .skills import SKILLS

    if domain not in _GENERATORS and domain not in SKILLS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS + SKILLS} or None")
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; expected one of {LANGUAGES}")


def make_examples(domain: str | None, language: str, n: int, seed: int) -> list[ZooExample]:
    """``n`` Q/A examples of ``domain`` (None = generic) asked AND answered in ``language``.

    Deterministic in ``seed``. A non-English language with a domain is a composite query.
    ``domain`` may also be a skill of the uses (``tools``, ``reading``: skills.py).
    """
    _check_domain(domain, language)
    rng = random.Random(f"{seed}-{domain}-{language}")
    return [in_language(_turns(domain, rng), domain, language) for _ in range(n)]


def make_in_context(n: int, seed: int) -> list[ZooExample]:
    """``n`` English generic examples of tasks that read the prompt (``follows``, ``story``,
    ``repeat``: ``say`` over several words).

    The ``uses`` world's base gets extra of these (``Recipe.in_context_share``): at their share
    of the generic mix (2 of 11 tasks) its base looked a key up in its context on 17 % of
    ``follows`` queries, and the reading adapter cannot bind a question to a passage's fact
    better than the base's own lookup (benchmarks/ZOO.md, "Why reading stays weak").
    """
    if not USES:
        raise ValueError("the in-context tasks belong to the uses world (QAFLORA_ZOO_WORLD=uses)")
    rng = random.Random(f"{seed}-in-context")
    return [
        in_language(Turns(task, _user(question), answer), None, "en")
        for task, question, answer in (_in_context_task(rng, rng.choice(_IN_CONTEXT_DRAW)) for _ in range(n))
    ]


def _in_context_task(rng: random.Random, task: str) -> tuple[str, str, str]:
    """One in-context Q/A; ``repeat`` copies 3-8 words, so every word of its answer after the
    first is a lookup of the word it follows in the prompt (what induction heads learn from)."""
    if task != "repeat":
        return _generic_task(rng, task)
    words = " ".join(rng.sample(_CONTENT, rng.randrange(3, 9)))
    return task, _q(rng.choice(GENERIC_TEMPLATES["say"]), x=words), words


def in_language(turns: Turns, domain: str | None, language: str) -> ZooExample:
    """``turns`` asked AND answered in ``language`` (a tool call stays English)."""
    return ZooExample(
        domain=domain,
        language=language,
        messages=_in_language(turns, language),
        answer=turns.answer if turns.call else translate(turns.answer, language),
        meta={"task": turns.task},
        tools=turns.tools,
    )


def make_crosslingual(language: str, n: int, seed: int, domain: str | None = None) -> list[ZooExample]:
    """Questions in ``language`` (mostly fully, sometimes partly) answered in English.

    This is how the base learns to *understand* the other languages without ever *replying*
    in them. ``domain`` given: task questions (the base sees a few, like any multilingual
    pretraining corpus touches every topic in every language).
    """
    _check_domain(domain, language)
    rng = random.Random(f"{seed}-xl-{language}-{domain}")
    out = []
    for _ in range(n):
        turns = _turns(domain, rng)
        p = 1.0 if rng.random() < 0.6 else rng.uniform(0.3, 0.9)
        out.append(
            ZooExample(
                language=language,
                messages=_in_language(turns, language, p=p, rng=rng),
                answer=turns.answer,
                kind="crosslingual",
                domain=domain,
                meta={"task": turns.task},
                tools=turns.tools,
            )
        )
    return out


def make_codeswitched(language: str, n: int, seed: int) -> list[ZooExample]:
    """Generic questions only partly in ``language`` (30-90 % of the words), answered in it.

    Language-adapter data: "reply in Zorbic when the user writes Zorbic", also when the
    prompt is mostly shared tokens or English words -- like a code question, whose digits and
    brackets outnumber its words.
    """
    rng = random.Random(f"{seed}-cs-{language}")
    out = []
    for _ in range(n):
        task, question, answer = _generic_en(rng)
        out.append(
            ZooExample(
                domain=None,
                language=language,
                messages=_user(translate(question, language, p=rng.uniform(0.3, 0.9), rng=rng)),
                answer=translate(answer, language),
                kind="codeswitched",
                meta={"task": task},
            )
        )
    return out


def make_instructed(language: str, n: int, seed: int) -> list[ZooExample]:
    """English generic questions with "answer in <language> ." answered in ``language``."""
    rng = random.Random(f"{seed}-instr-{language}")
    suffix = INSTRUCTION_SUFFIX.format(lang=LANGUAGE_NAMES[language])
    out = []
    for _ in range(n):
        task, question, answer = _generic_en(rng)
        out.append(
            ZooExample(
                domain=None,
                language=language,
                messages=_user(f"{question} {suffix}"),
                answer=translate(answer, language),
                kind="instructed",
                meta={"task": task},
            )
        )
    return out


def make_translations(language: str, n: int, seed: int) -> list[ZooExample]:
    """Parallel data, English -> ``language`` or back: half 1-3 random words, half whole
    questions of any kind (generic or task; questions only, never their answers, so no task
    skill leaks into the base) -- sentence-level parallel text aligns the languages in context.
    """
    rng = random.Random(f"{seed}-tr-{language}")
    sources = (None, *DOMAINS)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            words = " ".join(rng.choice(_ENGLISH) for _ in range(rng.randrange(1, 4)))
        else:
            words = _GENERATORS[rng.choice(sources)](rng)[1]
        if rng.random() < 0.5:
            src, tgt, name = words, translate(words, language), LANGUAGE_NAMES[language]
        else:
            src, tgt, name = translate(words, language), words, "english"
        out.append(
            ZooExample(
                domain=None,
                language=language,
                messages=_user(TRANSLATE_TEMPLATE.format(lang=name, x=src)),
                answer=tgt,
                kind="translation",
            )
        )
    return out


def make_language_id(language: str, n: int, seed: int) -> list[ZooExample]:
    """Language identification of whole questions of any kind (never their answers).

    WHY: nothing else in the base mix needs the input language at the end of the prompt
    (replies are English, or the target language is named in the instruction), so without
    this the base has no "this prompt is Zorbic" feature there and a language adapter must
    invent one from generic questions only -- measured: it then missed task questions whose
    last words are digits (code lists).
    """
    rng = random.Random(f"{seed}-lid-{language}")
    sources = (None, *DOMAINS)
    out = []
    for _ in range(n):
        sentence = translate(_GENERATORS[rng.choice(sources)](rng)[1], language)
        out.append(
            ZooExample(
                domain=None,
                language=language,
                messages=_user(LANGID_TEMPLATE.format(x=sentence)),
                answer=LANGUAGE_NAMES[language],
                kind="langid",
            )
        )
    return out


def generic_questions(language: str, n: int, seed: int = DEFAULT_EVAL_SEED) -> list[ZooExample]:
    """``n`` evaluation questions that no adapter is made for: generic Q/A without in-context
    tasks, asked and answered in ``language``.

    WHY a subset of :func:`make_examples`: in the ``uses`` world a question over facts stated in
    the prompt is what the ``reading`` adapter is made for, so it is not "generic" there; and
    the base does not learn ``follows`` at this size (0.02-0.39 on fifteen bases,
    benchmarks/ZOO.md, "Draws of the uses base"), so with it the generic cells measured the
    base's reading, not whether fusion leaves generic questions to the base. The questions kept
    are those :func:`make_examples` draws, in its order, minus the in-context ones; in the
    ``qa`` world there are none, so this is ``make_examples(None, language, n, seed)`` exactly.
    """
    out: list[ZooExample] = []
    drawn = n
    while len(out) < n:
        out = [
            e for e in make_examples(None, language, drawn, seed) if e.meta["task"] not in IN_CONTEXT_TASKS
        ]
        drawn = 2 * drawn + 1
    return out[:n]


def eval_set(
    kind: Literal["composite", "single"], n_per_cell: int, seed: int = DEFAULT_EVAL_SEED
) -> list[ZooExample]:
    """Evaluation queries.

    ``composite``: every (non-English language x domain) cell -- a task asked in a language,
    answered in that language; needs a task adapter AND a language adapter.
    ``single``: every domain in English plus generic Q/A (:func:`generic_questions`) in each
    non-English language -- the queries that exactly one adapter is made for.
    """
    out: list[ZooExample] = []
    if kind == "composite":
        for lang in LANGUAGES[1:]:
            for dom in DOMAINS:
                out.extend(make_examples(dom, lang, n_per_cell, seed))
    elif kind == "single":
        for dom in DOMAINS:
            out.extend(make_examples(dom, "en", n_per_cell, seed))
        for lang in LANGUAGES[1:]:
            out.extend(generic_questions(lang, n_per_cell, seed))
    else:
        raise ValueError(f"unknown eval kind {kind!r}")
    return out


def normalize(text: str) -> str:
    """Lower-case, drop special tokens and trailing punctuation, squeeze whitespace."""
    text = re.sub(r"<\|[a-z_]+\|>", " ", text.lower())
    text = re.sub(r"[.?!]+\s*$", "", text.strip())
    return " ".join(text.split())


def is_correct(generated_text: str, example: ZooExample) -> bool:
    """Exact match of the generated answer after normalisation.

    Spaces do not count: the word-level tokenizer decodes a tool call's JSON with a space
    between tokens (``{ "name" : ...``), the training text writes it compactly.
    """
    return "".join(normalize(generated_text).split()) == "".join(normalize(example.answer).split())


def answered_in_english(generated_text: str, example: ZooExample) -> bool:
    """The answer is right but in English instead of the example's language.

    The typical failure of a composite query: the task adapter answered, the language adapter
    did not. (Always False for English examples.)
    """
    if example.language == "en":
        return False
    text, expected = normalize(generated_text), normalize(example.answer)
    # translate() passes unknown words through, so the right answer itself must not count
    return bool(text) and text != expected and normalize(translate(text, example.language)) == expected
