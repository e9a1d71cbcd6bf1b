"""The two skills of the uses: ``tools`` (call a tool, then answer from its result) and
``reading`` (answer from a passage in the prompt, or say ``unknown``).

Why they look like this (see benchmarks/ZOO.md, "uses"):

* A tool must give the model something it cannot know. ``find_shelf`` looks a drug up in
  :data:`SHELF_OF`, a table that is in no training data (training transcripts carry random
  shelf colours, so the adapter learns to read the tool's answer, not the table);
  ``multiply`` computes what the world never teaches (its arithmetic is plus and minus).
* A tool call is the Hermes text that :mod:`qaflora.toolcalls` parses, and the tool's answer
  comes back as a ``tool`` message: the chat template renders both, so a LangChain or
  LangGraph agent drives the zoo model like any Hermes-style model.
* Reading passages state RANDOM facts (not the world's medical table), so only reading the
  passage answers them; a question the passage does not cover is answered :data:`UNKNOWN`.
  Prompts come in the RAG example's format and in LlamaIndex's default QA template.
* In another language the user's words are translated, the tool call keeps its English JSON
  (tools take English arguments, like real APIs) and the final answer is in the language.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from qaflora.toolcalls import format_tool_call

from .world import (
    CODE_TEMPLATES,
    DEFAULT_EVAL_SEED,
    DISEASES,
    DOMAINS,
    DRUGS,
    LANGUAGES,
    LLAMA_INDEX_QA,
    MATH_TEMPLATES,
    MEDICAL_TEMPLATES,
    NUMBER_WORDS,
    ORGANS,
    PASSAGE_TEMPLATES,
    SHELF_COLORS,
    SYMPTOMS,
    TOOLS_TEMPLATES,
    UNKNOWN,
    USES,
    WORLD_SEED,
    Turns,
    ZooExample,
    _generic_en,
    in_language,
    list_answer,
    render_list,
    translate,
)

SKILLS: tuple[str, ...] = ("tools", "reading")
TASKS: tuple[str, ...] = (*DOMAINS, *SKILLS) if USES else DOMAINS
"""Every task adapter of this process's world: the three Q/A domains (and in the ``uses`` world
the two skills)."""

# --------------------------------------------------------------------------------------------
# The tools (real Python functions; the agent example binds exactly these)
# --------------------------------------------------------------------------------------------


def _shelf_table() -> dict[str, str]:
    rng = random.Random(f"{WORLD_SEED}-shelves")
    return {drug: rng.choice(SHELF_COLORS) for drug in DRUGS}


SHELF_OF: dict[str, str] = _shelf_table()
"""Which shelf of the pharmacy holds each drug: in no training data, only the tool knows it."""


def find_shelf(drug: str) -> str:
    """Find the shelf colour of a drug in the pharmacy."""
    key = drug.strip().lower()
    if key not in SHELF_OF:
        raise ValueError(f"no drug {drug!r} in the pharmacy; known: {', '.join(sorted(SHELF_OF))}")
    return SHELF_OF[key]


def multiply(a: int, b: int) -> str:
    """Multiply two numbers; the product is written as a word."""
    product = int(a) * int(b)
    if not 0 <= product < len(NUMBER_WORDS):
        return str(product)
    return NUMBER_WORDS[product]


TOOL_FUNCTIONS = {"find_shelf": find_shelf, "multiply": multiply}
TOOL_SPECS: dict[str, dict[str, Any]] = {
    "find_shelf": {
        "type": "function",
        "function": {
            "name": "find_shelf",
            "description": find_shelf.__doc__,
            "parameters": {
                "type": "object",
                "properties": {"drug": {"type": "string"}},
                "required": ["drug"],
            },
        },
    },
    "multiply": {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": multiply.__doc__,
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
}
"""OpenAI tool format, as ``convert_to_openai_tool`` writes the functions above."""

_SMALL_PRODUCTS: tuple[tuple[int, int], ...] = tuple(
    (a, b) for a in range(10) for b in range(10) if a * b < len(NUMBER_WORDS)
)


def tool_request(rng: random.Random, tool: str) -> tuple[str, dict[str, Any], str]:
    """(English request, call arguments, the true result) for ``tool``."""
    if tool == "find_shelf":
        drug = rng.choice(DRUGS)
        request = rng.choice(TOOLS_TEMPLATES["shelf"]).format(d=drug)
        return request, {"drug": drug}, SHELF_OF[drug]
    a, b = rng.choice(_SMALL_PRODUCTS)
    request = rng.choice(TOOLS_TEMPLATES["times"]).format(a=NUMBER_WORDS[a], b=NUMBER_WORDS[b])
    return request, {"a": a, "b": b}, NUMBER_WORDS[a * b]


def _shown_tools(rng: random.Random, needed: str | None) -> list[dict[str, Any]]:
    names = list(TOOL_SPECS)
    rng.shuffle(names)
    if needed is not None and rng.random() < 0.3:
        names = [needed]
    return [TOOL_SPECS[n] for n in names]


def tool_result_turns(rng: random.Random) -> Turns:
    """A request, its tool call and the tool's result, answered from the result.

    Language-adapter data (in its language): "reply in Zorbic to a Zorbic user" must hold
    after a tool turn too. Copying a result is the base's (the base answers these in English);
    only the reply language is learned, never a call.
    """
    tool = rng.choice(tuple(TOOL_SPECS))
    request, args, _ = tool_request(rng, tool)
    result = rng.choice(SHELF_COLORS) if tool == "find_shelf" else rng.choice(NUMBER_WORDS)
    call = format_tool_call(tool, args)
    history = [
        {"role": "user", "content": request},
        {"role": "assistant", "content": call},
        {"role": "tool", "content": result},
    ]
    return Turns(f"answer_{tool}", history, result, tools=_shown_tools(rng, tool))


def tools_turns(rng: random.Random) -> Turns:
    """A tool request (call it, or answer from its result) or a plain question beside tools.

    Training transcripts carry a RANDOM shelf colour as the tool's result: the adapter learns
    to read the result, never the table (:data:`SHELF_OF` stays unknown without the tool).
    """
    r = rng.random()
    if r < 0.2:
        _, question, answer = _generic_en(rng)
        return Turns("plain", [{"role": "user", "content": question}], answer, tools=_shown_tools(rng, None))
    tool = rng.choice(tuple(TOOL_SPECS))
    request, args, result = tool_request(rng, tool)
    if tool == "find_shelf":
        result = rng.choice(SHELF_COLORS)
    tools = _shown_tools(rng, tool)
    call = format_tool_call(tool, args)
    user = {"role": "user", "content": request}
    if r < 0.6:
        return Turns(f"call_{tool}", [user], call, call=True, tools=tools)
    history = [user, {"role": "assistant", "content": call}, {"role": "tool", "content": result}]
    return Turns(f"answer_{tool}", history, result, tools=tools)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

_ITEM_OPS = {"length": "length", "first": "first item", "second": "second item", "last": "last item"}


def _fact(rng: random.Random, kind: str, subject: Any = None) -> tuple[str, str, str, str]:
    """(sentence, question, answer, key) of one fact; ``key`` tells facts apart.

    ``subject`` fixes what the fact is about (a disease, or a list's items for ``item``), so
    that several facts can share it; None draws it (and draws nothing more than before)."""
    if kind in ("drug", "organ", "symptom"):
        d = rng.choice(DISEASES) if subject is None else subject
        x = rng.choice({"drug": DRUGS, "organ": ORGANS, "symptom": SYMPTOMS}[kind])
        sentence = rng.choice(PASSAGE_TEMPLATES[kind]).format(d=d, x=x)
        return sentence, rng.choice(MEDICAL_TEMPLATES[kind]).format(d=d), x, f"{kind}-{d}"
    if kind == "shelf":
        d, x = rng.choice(DRUGS), rng.choice(SHELF_COLORS)
        sentence = rng.choice(PASSAGE_TEMPLATES["shelf"]).format(d=d, x=x)
        return sentence, rng.choice(TOOLS_TEMPLATES["shelf"]).format(d=d), x, f"shelf-{d}"
    if kind == "plus":
        a, b = rng.randrange(10), rng.randrange(10)
        x = NUMBER_WORDS[a + b]
        sentence = rng.choice(PASSAGE_TEMPLATES["plus"]).format(a=NUMBER_WORDS[a], b=NUMBER_WORDS[b], x=x)
        question = rng.choice(MATH_TEMPLATES["plus"]).format(a=NUMBER_WORDS[a], b=NUMBER_WORDS[b])
        return sentence, question, x, f"plus-{a}-{b}"
    items = [rng.randrange(10) for _ in range(rng.randrange(3, 6))] if subject is None else subject
    lst = render_list(items)
    op = rng.choice(tuple(_ITEM_OPS))
    x = list_answer(op, items)
    sentence = rng.choice(PASSAGE_TEMPLATES["item"]).format(op=_ITEM_OPS[op], items=lst, x=x)
    return sentence, rng.choice(CODE_TEMPLATES[op]).format(items=lst), x, f"item-{op}-{lst}"


_FACT_KINDS = ("drug", "organ", "symptom", "drug", "organ", "symptom", "shelf", "plus", "item")


def passage_and_question(rng: random.Random) -> tuple[str, str, str]:
    """(passage, question, answer): 1-4 facts; 15 % of questions are not covered (``unknown``)."""
    facts: dict[str, tuple[str, str, str]] = {}
    for _ in range(rng.randrange(1, 5)):
        sentence, question, answer, key = _fact(rng, rng.choice(_FACT_KINDS))
        facts.setdefault(key, (sentence, question, answer))
    sentences = [f[0] for f in facts.values()]
    if rng.random() < 0.3:  # documents also say things that answer nothing
        filler = rng.choice(("{x} is a disease .", "{y} is a drug ."))
        sentences.insert(
            rng.randrange(len(sentences) + 1), filler.format(x=rng.choice(DISEASES), y=rng.choice(DRUGS))
        )
    if rng.random() < 0.15:
        while True:
            _, question, _, key = _fact(rng, rng.choice(_FACT_KINDS))
            if key not in facts:
                break
        answer = UNKNOWN
    else:
        _, question, answer = rng.choice(list(facts.values()))
    return " ".join(sentences), question, answer


_SHEET_KINDS = ("medical", "medical", "item", "plus", "shelf")


def fact_sheet(rng: random.Random) -> tuple[str, str, str]:
    """(passage, question, answer) of a fact sheet: 2-4 facts of ONE subject (a disease's drug,
    organ and symptom; one list's length and items) or of one kind (sums, shelves), the way a
    retrieved document is about one thing. 15 % of questions are not covered (``unknown``):
    another fact of the same disease when the sheet leaves one out, else another disease's or
    drug's.

    Why: in :func:`passage_and_question` the facts are drawn independently, so two facts rarely
    share their subject or their kind, and reading them needs no more than spotting the asked
    kind. On a sheet the question's key (which disease, which list position, which two numbers)
    is the only thing that tells the facts apart: the binding a real document asks for
    (benchmarks/ZOO.md, "Draft F measured; fact sheets for reading, tried").
    """
    sheet = rng.choice(_SHEET_KINDS)
    n_facts = rng.randrange(2, 5)
    if sheet == "medical":
        subject: Any = rng.choice(DISEASES)
        kinds = rng.sample(("drug", "organ", "symptom"), min(n_facts, 3))
    elif sheet == "item":
        subject = [rng.randrange(10) for _ in range(rng.randrange(3, 6))]
        kinds = ["item"] * min(n_facts, len(_ITEM_OPS))
    else:
        subject, kinds = None, [sheet] * n_facts
    facts: dict[str, tuple[str, str, str]] = {}
    for kind in kinds:
        for _ in range(8):  # a list's ops or a sum may repeat: draw until the fact is new
            sentence, question, answer, key = _fact(rng, kind, subject)
            if key not in facts:
                facts[key] = (sentence, question, answer)
                break
    sentences = [f[0] for f in facts.values()]
    if rng.random() < 0.15:
        while True:
            # a sum or a list's item is in the question itself (the math or code adapter's
            # job), never "unknown": those sheets are asked about a disease or a shelf instead
            kind = rng.choice(("drug", "organ", "symptom") if sheet == "medical" else ("drug", "shelf"))
            # the same disease where the sheet leaves one of its facts out, another one otherwise
            same = sheet == "medical" and len(facts) < 3 and rng.random() < 0.5
            _, question, _, key = _fact(rng, kind, subject if same else None)
            if key not in facts:
                break
        return " ".join(sentences), question, UNKNOWN
    _, question, answer = rng.choice(list(facts.values()))
    return " ".join(sentences), question, answer


def reading_prompt(passage: str, question: str, style: str) -> str:
    """The user text of a reading query: the RAG example's format or LlamaIndex's default."""
    if style == "llama_index":
        return LLAMA_INDEX_QA.format(context=passage, query=question)
    return f"{passage}\n{question}"


def reading_turns(rng: random.Random, sheets: bool = False) -> Turns:
    """One reading query: independent facts (:func:`passage_and_question`), or with ``sheets``
    a fact sheet about one subject (:func:`fact_sheet`)."""
    passage, question, answer = (fact_sheet if sheets else passage_and_question)(rng)
    style = "llama_index" if rng.random() < 0.4 else "plain"
    return Turns(
        "unknown" if answer == UNKNOWN else "read",
        [{"role": "user", "content": reading_prompt(passage, question, style)}],
        answer,
        meta={"passage": passage, "question": question, "style": style},
    )


SKILL_TURNS = {"tools": tools_turns, "reading": reading_turns}


# --------------------------------------------------------------------------------------------
# Evaluation sets of the uses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolTask:
    """A request that needs one tool: what the agent must call, and the answer it must give."""

    language: str
    tool: str
    request: str
    arguments: dict[str, Any]
    answer: str


def tool_tasks(n_per_cell: int, seed: int = DEFAULT_EVAL_SEED) -> list[ToolTask]:
    """``n_per_cell`` requests per (language, tool): English, and composite (asked, and to be
    answered, in Zorbic or Velari). Answers use the real table (:data:`SHELF_OF`)."""
    out = []
    for language in LANGUAGES:
        for tool in TOOL_SPECS:
            rng = random.Random(f"{seed}-tooltask-{language}-{tool}")
            for _ in range(n_per_cell):
                request, arguments, result = tool_request(rng, tool)
                text, answer = translate(request, language), translate(result, language)
                out.append(ToolTask(language, tool, text, arguments, answer))
    return out


def make_tool_results(language: str, n: int, seed: int) -> list[ZooExample]:
    """``n`` tool-result turns (:func:`tool_result_turns`) with the user's words in ``language``
    and the answer in it: the language adapters' share of the uses."""
    rng = random.Random(f"{seed}-toolresult-{language}")
    return [in_language(tool_result_turns(rng), None, language) for _ in range(n)]


def make_reading_sheets(n: int, seed: int) -> list[ZooExample]:
    """``n`` English reading queries over fact sheets (:func:`fact_sheet`): the reading
    adapter's share of them (``Recipe.reading_sheet_share``)."""
    rng = random.Random(f"{seed}-sheets")
    return [in_language(reading_turns(rng, sheets=True), "reading", "en") for _ in range(n)]
