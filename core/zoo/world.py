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
from typing import Literal

SHIPPED_WORLD_SEED = 20251211
WORLD_SEED_VARIABLE = "QAFLORA_ZOO_WORLD_SEED"
WORLD_SEED = int(os.environ.get(WORLD_SEED_VARIABLE, SHIPPED_WORLD_SEED))
"""Fixes lexicons and fact tables. Changing it changes the world (and needs a new tokenizer).

Read once, at import, from ``QAFLORA_ZOO_WORLD_SEED`` (default: the shipped zoo's world): a zoo
built in another world (``qaflora zoo build --world-seed N``, for robustness checks) records N in
its ``build_info.json``, and ``qaflora eval`` on it needs the same variable (it refuses a
mismatch rather than score one world's answers against another's)."""

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
INSTRUCTION_SUFFIX = "answer in {lang} ."
LANGID_TEMPLATE = "which language is this : {x}"
TRANSLATE_TEMPLATE = "translate to {lang} : {x}"

PUNCTUATION: tuple[str, ...] = ("?", ".", ":", ",", "[", "]")

# --------------------------------------------------------------------------------------------
# Lexicons (deterministic in WORLD_SEED)
# --------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z]+")


def _template_words() -> set[str]:
    """Every English word that appears in a template (slots excluded)."""
    words: set[str] = set()
    groups = (GENERIC_TEMPLATES, MATH_TEMPLATES, MEDICAL_TEMPLATES, CODE_TEMPLATES)
    for group in groups:
        for templates in group.values():
            for t in templates:
                words.update(_WORD_RE.findall(re.sub(r"\{\w+\}", " ", t)))
    words.update(_WORD_RE.findall(INSTRUCTION_SUFFIX.replace("{lang}", "")))
    words.update(_WORD_RE.findall(TRANSLATE_TEMPLATE.replace("{lang}", "").replace("{x}", "")))
    words.update(_WORD_RE.findall(LANGID_TEMPLATE.replace("{x}", "")))
    return words


def english_words() -> tuple[str, ...]:
    """The full English vocabulary of the world, sorted (stable tokenizer ids)."""
    words = set(_template_words())
    words.update(NUMBER_WORDS, COLOR_OF, COLOR_OF.values(), OPPOSITE, SOUND_OF)
    words.update(SOUND_OF.values(), DISEASES, DRUGS, ORGANS, SYMPTOMS, CATEGORY_OF.values())
    words.update(LANGUAGE_NAMES.values())
    return tuple(sorted(words))


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
LEXICONS: dict[str, dict[str, str]] = {"en": {w: w for w in _ENGLISH}}
for _lang in LANGUAGES[1:]:
    LEXICONS[_lang] = _make_lexicon(_lang, _ENGLISH)


def all_words() -> tuple[str, ...]:
    """Every word token of the world in every language plus digits and punctuation."""
    words: list[str] = list(_ENGLISH)
    for lang in LANGUAGES[1:]:
        words.extend(LEXICONS[lang][w] for w in _ENGLISH)
    return tuple(words) + DIGITS + PUNCTUATION


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

    @property
    def prompt(self) -> str:
        """The user text (single-turn examples)."""
        return self.messages[-1]["content"]


def _q(template: str, **slots: str) -> str:
    return template.format(**slots)


def _generic_en(rng: random.Random) -> tuple[str, str, str]:
    """One English generic Q/A: (task, question, answer)."""
    task = rng.choice(tuple(GENERIC_TEMPLATES))
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
    w = rng.choice(_ENGLISH)
    return task, _q(tpl, x=w), w


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


def _code_en(rng: random.Random) -> tuple[str, str, str]:
    op = rng.choice(tuple(CODE_TEMPLATES))
    items = [rng.randrange(10) for _ in range(rng.randrange(3, 6))]
    lst = "[ " + " , ".join(DIGITS[i] for i in items) + " ]"
    value = {
        "length": len(items),
        "first": items[0],
        "second": items[1],
        "last": items[-1],
    }[op]
    tpl = rng.choice(CODE_TEMPLATES[op])
    return op, _q(tpl, items=lst), NUMBER_WORDS[value]


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


def make_examples(domain: str | None, language: str, n: int, seed: int) -> list[ZooExample]:
    """``n`` Q/A examples of ``domain`` (None = generic) asked AND answered in ``language``.

    Deterministic in ``seed``. A non-English language with a domain is a composite query.
    """
    if domain not in _GENERATORS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS} or None")
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; expected one of {LANGUAGES}")
    rng = random.Random(f"{seed}-{domain}-{language}")
    gen = _GENERATORS[domain]
    out = []
    for _ in range(n):
        task, question, answer = gen(rng)
        out.append(
            ZooExample(
                domain=domain,
                language=language,
                messages=_user(translate(question, language)),
                answer=translate(answer, language),
                meta={"task": task},
            )
        )
    return out


def make_crosslingual(language: str, n: int, seed: int, domain: str | None = None) -> list[ZooExample]:
    """Questions in ``language`` (mostly fully, sometimes partly) answered in English.

    This is how the base learns to *understand* the other languages without ever *replying*
    in them. ``domain`` given: task questions (the base sees a few, like any multilingual
    pretraining corpus touches every topic in every language).
    """
    rng = random.Random(f"{seed}-xl-{language}-{domain}")
    gen = _GENERATORS[domain]
    out = []
    for _ in range(n):
        task, question, answer = gen(rng)
        p = 1.0 if rng.random() < 0.6 else rng.uniform(0.3, 0.9)
        out.append(
            ZooExample(
                language=language,
                messages=_user(translate(question, language, p=p, rng=rng)),
                answer=answer,
                kind="crosslingual",
                domain=domain,
                meta={"task": task},
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


def eval_set(
    kind: Literal["composite", "single"], n_per_cell: int, seed: int = DEFAULT_EVAL_SEED
) -> list[ZooExample]:
    """Evaluation queries.

    ``composite``: every (non-English language x domain) cell -- a task asked in a language,
    answered in that language; needs a task adapter AND a language adapter.
    ``single``: every domain in English plus generic Q/A in each non-English language -- the
    queries that exactly one adapter is made for.
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
            out.extend(make_examples(None, lang, n_per_cell, seed))
    else:
        raise ValueError(f"unknown eval kind {kind!r}")
    return out


def normalize(text: str) -> str:
    """Lower-case, drop special tokens and trailing punctuation, squeeze whitespace."""
    text = re.sub(r"<\|[a-z_]+\|>", " ", text.lower())
    text = re.sub(r"[.?!]+\s*$", "", text.strip())
    return " ".join(text.split())


def is_correct(generated_text: str, example: ZooExample) -> bool:
    """Exact match of the generated answer after normalisation."""
    return normalize(generated_text) == normalize(example.answer)


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
