"""The demo world's skills of the uses (tools, reading): their data, and how the zoo tokenizer
carries tool calls and LlamaIndex's QA template. No model needed: the tokenizer is built here."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qaflora import AdapterCatalog
from qaflora.evaluation.suite import check_world
from qaflora.toolcalls import format_tool_call, parse_tool_calls
from qaflora.zoo import shipped_catalog_path
from qaflora.zoo.skills import (
    SHELF_OF,
    TOOL_SPECS,
    fact_sheet,
    find_shelf,
    multiply,
    passage_and_question,
    tool_tasks,
)
from qaflora.zoo.tokenizer import build_tokenizer
from qaflora.zoo.training import encode
from qaflora.zoo.world import (
    DISEASES,
    DRUGS,
    LEXICONS,
    LLAMA_INDEX_QA,
    NUMBER_WORDS,
    TOOL_NAMES,
    TOOL_PARAMETERS,
    UNKNOWN,
    WORLD,
    WORLD_VARIABLE,
    english_words,
    make_examples,
    make_in_context,
    translate,
)
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(uses=True)


def test_the_shipped_uses_world_keeps_every_word_of_the_qa_one():
    """The shipped tokenizer is the uses world's; the qa world's words are all in it, spelled
    the same in every language (the uses world only adds words)."""
    shipped = AutoTokenizer.from_pretrained(shipped_catalog_path().parent / "base").get_vocab()
    qa, uses = build_tokenizer(uses=False).get_vocab(), build_tokenizer(uses=True).get_vocab()
    assert uses == shipped
    assert set(qa) < set(uses)
    assert all(translate(w, "zo") == LEXICONS["zo"][w] for w in english_words(uses=False))


def test_the_shipped_zoo_records_its_world_and_eval_refuses_another(qa_world_zoo):
    root = shipped_catalog_path().parent
    info = json.loads((root / "build_info.json").read_text())
    assert info["world"] == "uses" and info["recipe"]["base_batch_buckets"] == 8
    assert info["recipe"]["adapter_micro_batches"] == 4
    catalog = AdapterCatalog.from_file(shipped_catalog_path())
    assert catalog.names == ["math", "medical", "code", "tools", "reading", "lang_zo", "lang_ve"]
    kinds = {entry.name: entry.kind for entry in catalog.adapters}
    assert kinds["tools"] == "tools" and kinds["lang_zo"] == "language" and kinds["math"] == "domain"
    assert kinds["reading"] == "reading"  # what a query engine's context hint asks for
    template = AutoTokenizer.from_pretrained(catalog.base_model).chat_template
    assert "tools" in template and "<tool_response>" in template
    check_world(shipped_catalog_path())  # this process is in the shipped world: accepted
    assert json.loads((qa_world_zoo.parent / "build_info.json").read_text())["world"] == "qa"
    with pytest.raises(ValueError, match=f"{WORLD_VARIABLE}=qa"):
        check_world(qa_world_zoo)


def test_in_context_tasks_are_refused_outside_the_uses_world():
    """The qa world's base mix has none; drawing them there would change its bytes."""
    code = f"""
import pytest
from qaflora.zoo.world import make_in_context
with pytest.raises(ValueError, match="{WORLD_VARIABLE}=uses"):
    make_in_context(1, seed=0)
print("ok")
"""
    _run_in_world("qa", code)
    assert len(make_in_context(3, seed=0)) == 3  # here, in the uses world


def test_tools_are_real_functions_that_refuse_what_they_do_not_know():
    assert find_shelf("Aspirin ") == SHELF_OF["aspirin"]
    assert multiply(3, 4) == "twelve"
    assert multiply(9, 9) == "81"  # beyond the world's number words: digits
    with pytest.raises(ValueError, match="no drug 'tylenol'"):
        find_shelf("tylenol")


def test_training_transcripts_never_teach_the_shelf_table():
    """Tool results in training are random colours: only calling the tool answers a shelf request."""
    examples = make_examples("tools", "en", 600, seed=3)
    results = [
        (parse_tool_calls(e.messages[1]["content"]).calls[0].arguments, e.answer)
        for e in examples
        if len(e.messages) == 3 and "find_shelf" in e.messages[1]["content"]
    ]
    assert len(results) > 50
    agree = sum(SHELF_OF[arguments["drug"]] == answer for arguments, answer in results)
    assert agree / len(results) < 0.4, "training transcripts follow the table"


def test_composite_tool_requests_keep_the_call_in_english_and_answer_in_the_language():
    for example in make_examples("tools", "zo", 200, seed=5):
        if example.answer.startswith("<tool_call>"):
            (call,) = parse_tool_calls(example.answer).calls
            assert set(call.arguments) <= {"drug", "a", "b"}
            if "drug" in call.arguments:
                assert call.arguments["drug"] in DRUGS
                assert call.arguments["drug"] not in example.messages[0]["content"].split()
        elif len(example.messages) == 3:
            assert example.messages[2]["role"] == "tool"
            assert example.answer == translate(example.messages[2]["content"], "zo")


def test_tool_task_answers_come_from_the_real_tools():
    tasks = tool_tasks(3)
    assert Counter(t.language for t in tasks) == {"en": 6, "zo": 6, "ve": 6}
    for task in tasks:
        result = {"find_shelf": find_shelf, "multiply": multiply}[task.tool](**task.arguments)
        assert task.answer == translate(result, task.language)


@settings(max_examples=60, deadline=None)
@given(
    drug=st.sampled_from(DRUGS),
    a=st.integers(0, 9),
    b=st.integers(0, 9),
    tool=st.sampled_from(sorted(TOOL_SPECS)),
)
def test_a_tool_call_survives_the_zoo_tokenizer(tokenizer, drug, a, b, tool):
    """The model writes a call token by token; decoded (tokens joined by spaces) it parses back."""
    arguments = {"drug": drug} if tool == "find_shelf" else {"a": a, "b": b}
    ids = tokenizer(format_tool_call(tool, arguments), add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    parsed = parse_tool_calls(tokenizer.decode(ids, skip_special_tokens=True))
    assert [(c.name, c.arguments) for c in parsed.calls] == [(tool, arguments)]
    assert not parsed.invalid


def test_llama_index_default_qa_template_reads_as_the_world_writes_it(tokenizer):
    llama_index = pytest.importorskip("llama_index.core.prompts.default_prompts")
    slots = {"context": "flu is a disease .", "query": "which drug treats flu ?"}
    real = llama_index.DEFAULT_TEXT_QA_PROMPT_TMPL.format(
        context_str=slots["context"], query_str=slots["query"]
    )
    ours = LLAMA_INDEX_QA.format(**slots)
    assert tokenizer(real)["input_ids"] == tokenizer(ours)["input_ids"]
    assert tokenizer.unk_token_id not in tokenizer(real)["input_ids"]


def test_reading_answers_are_in_the_passage_or_unknown():
    import random

    rng = random.Random(0)
    samples = [passage_and_question(rng) for _ in range(400)]
    unknown = sum(answer == UNKNOWN for _, _, answer in samples)
    assert 0.08 < unknown / len(samples) < 0.25
    assert all(answer == UNKNOWN or answer in passage.split() for passage, _, answer in samples)


def test_fact_sheets_state_several_facts_of_the_subject_the_question_names():
    """A sheet's facts share a disease or a list, so the question's key is what tells them apart."""
    import random

    rng = random.Random(0)
    samples = [fact_sheet(rng) for _ in range(400)]
    assert 0.08 < sum(answer == UNKNOWN for *_, answer in samples) / len(samples) < 0.25
    assert all(answer == UNKNOWN or answer in passage.split() for passage, _, answer in samples)
    assert all(passage.count(" . ") + passage.endswith(" .") >= 2 for passage, _, _ in samples)
    keyed = 0
    for passage, question, answer in samples:
        sentences = [x for x in passage.split(" . ") if x]
        subject = [d for d in DISEASES if d in question.split()] or (
            [question[question.index("[") : question.index("]") + 1]] if "[" in question else []
        )
        if answer != UNKNOWN and subject and all(subject[0] in x for x in sentences):
            keyed += 1
    assert keyed > 0.4 * len(samples)


def _run_in_world(world: str, code: str) -> None:
    """Run ``code`` in ``world`` (read once, at import); it prints "ok". This process's own world
    runs it here; another needs a fresh process (a second interpreter costs seconds of imports)."""
    if world == WORLD:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"<code run in the {world} world>", "exec"), {})
        assert printed.getvalue().strip() == "ok", printed.getvalue()
        return
    env = {**os.environ, WORLD_VARIABLE: world}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_reading_sheets_and_tool_replay_change_only_the_adapters_they_name():
    """``reading_sheet_share`` changes the reading adapter's own data, ``tool_replay_share`` the
    task adapters' replay (not the tools adapter's); neither touches the base mix (the replay
    pool of every adapter), so a recipe with them keeps the base byte for byte (uses world: its
    own process)."""
    code = """
from dataclasses import replace
from qaflora.zoo.build import QUICK, adapter_mix, base_mix
plain = replace(QUICK, base_examples=300, adapter_examples=200)
sheets = replace(plain, reading_sheet_share=0.5)
pool = base_mix(plain, 0)
assert [e.messages for e in base_mix(sheets, 0)] == [e.messages for e in pool]
a, b = (adapter_mix("reading", r, pool, 0) for r in (plain, sheets))
assert len(a) == len(b)
math = [[e.messages for e in adapter_mix("math", r, pool, 0)] for r in (plain, sheets)]
assert math[0] == math[1]
own = lambda mix: {str(e.messages) for e in mix if e.domain == "reading"}
# half of its own 100: the first 50 of the plain stream, then 50 sheets
assert len(own(a) - own(b)) == 50 and len(own(b) - own(a)) == 50, (len(own(a) - own(b)), len(own(b) - own(a)))
tools = replace(plain, tool_replay_share=0.2)
calls = lambda mix: sum(e.domain == "tools" for e in mix)
code = adapter_mix("code", plain, pool, 0), adapter_mix("code", tools, pool, 0)
assert len(code[0]) == len(code[1]) and calls(code[1]) - calls(code[0]) == 20, calls(code[1])
own_code = lambda mix: [str(e.messages) for e in mix if e.domain == "code"]
assert own_code(code[0]) == own_code(code[1])
same = [[e.messages for e in adapter_mix("tools", r, pool, 0)] for r in (plain, tools)]
assert same[0] == same[1]
print("ok")
"""
    _run_in_world("uses", code)


def test_language_english_changes_only_the_language_adapters_own_data():
    """``language_english`` puts English generic Q/A, answered in English, in place of as many of a
    language adapter's questions in its language; at 0 (the qa world) every mix is what it was, and
    no task adapter or replay changes."""
    code = """
from dataclasses import replace
from qaflora.zoo.build import QUICK, adapter_mix, base_mix
plain = replace(QUICK, base_examples=300, adapter_examples=400)
english = replace(plain, language_english=0.15)
pool = base_mix(plain, 0)
a, b = (adapter_mix("lang_ve", r, pool, 0) for r in (plain, english))
assert len(a) == len(b)
generic = lambda mix, lang: sum(e.kind == "qa" and e.language == lang and e.domain is None for e in mix)
own_en = lambda mix: [e.messages for e in mix if e.kind == "qa" and e.language == "en" and e.domain is None]
assert generic(a, "ve") - generic(b, "ve") == 30, (generic(a, "ve"), generic(b, "ve"))
assert len(own_en(b)) - len(own_en(a)) == 30 and all(m in own_en(b) for m in own_en(a))  # replay as it was
same = [[e.messages for e in adapter_mix("math", r, pool, 0)] for r in (plain, english)]
assert same[0] == same[1]
print("ok")
"""
    _run_in_world("uses", code)


def test_encoded_transcripts_equal_the_chat_template(tokenizer):
    examples = make_examples("tools", "ve", 40, seed=1) + make_examples("reading", "zo", 40, seed=1)
    for example, (ids, labels) in zip(examples, encode(tokenizer, examples, answer_only=True), strict=True):
        text = tokenizer.apply_chat_template(
            example.messages, tools=example.tools, add_generation_prompt=True, tokenize=False
        )
        assert example.chat_prompt(tokenizer) == text
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt
        assert tokenizer.unk_token_id not in ids
        answer = [t for t in labels if t != -100]
        assert tokenizer.decode(answer[:-1]) == tokenizer.decode(tokenizer(example.answer)["input_ids"])
        assert answer[-1] == tokenizer.eos_token_id


def test_answer_only_tasks_mask_the_prompt_of_just_those_tasks(tokenizer):
    """``Recipe.in_context_answer_only``: in the base's full-sequence mix, the named tasks learn
    their answer only; every other example keeps its whole sequence (all but BOS)."""
    examples = make_examples(None, "en", 60, seed=3)
    chosen = examples[0].meta["task"]
    full = encode(tokenizer, examples, answer_only=False)
    some = encode(tokenizer, examples, answer_only=False, answer_only_tasks=frozenset({chosen}))
    sft = encode(tokenizer, examples, answer_only=True)
    assert any(e.meta["task"] != chosen for e in examples)
    for example, f, s, a in zip(examples, full, some, sft, strict=True):
        assert f[0] == s[0] == a[0]
        assert s[1] == (a[1] if example.meta["task"] == chosen else f[1])


def test_tool_specs_name_the_tools_and_parameters_the_vocabulary_holds():
    """world.py lists tool and parameter names for the tokenizer (it cannot import skills.py)."""
    assert {
        name: tuple(spec["function"]["parameters"]["properties"]) for name, spec in TOOL_SPECS.items()
    } == TOOL_PARAMETERS
    assert tuple(TOOL_SPECS) == TOOL_NAMES


def test_number_words_cover_every_small_product():
    assert all(multiply(a, b) in NUMBER_WORDS for a in range(10) for b in range(10) if a * b <= 18)


def test_uses_base_recipe_knobs_add_in_context_tasks_and_a_first_phase():
    """``in_context_share`` adds ``make_in_context`` items to the base mix; a first phase on them
    alone trains (the uses world is fixed at import, so this runs in its own process)."""
    code = """
import math
from dataclasses import replace
from qaflora.zoo.build import QUICK, base_mix, train_base
from qaflora.zoo.tokenizer import build_tokenizer
from collections import Counter
plain = replace(QUICK, base_examples=400)
more = replace(plain, in_context_share=0.25, in_context_warmup_steps=3)
count = lambda recipe: Counter(e.meta.get("task") for e in base_mix(recipe, 0))
assert len(base_mix(more, 0)) == len(base_mix(plain, 0))
assert count(plain)["repeat"] == 0 and count(more)["repeat"] >= 20, count(more)
assert count(more)["follows"] > count(plain)["follows"]
_, _, loss = train_base(build_tokenizer(), more, seed=0, progress=False)
assert math.isfinite(loss)
print("ok")
"""
    _run_in_world("uses", code)


def test_generic_questions_leave_out_the_in_context_tasks_only_in_the_uses_world():
    """The evaluation's generic questions are ``make_examples(None, ...)`` minus the tasks that
    read made-up facts from the prompt (reading's job in the uses world), in the same order; in
    the ``qa`` world that is every generic question, so its tables keep their queries."""
    code = """
from qaflora.zoo.world import eval_set, generic_questions, make_examples
assert generic_questions("zo", 40, 5) == make_examples(None, "zo", 40, 5)
assert eval_set("single", 7, 5)[-7:] == make_examples(None, "ve", 7, 5)
print("ok")
"""
    _run_in_world("qa", code)
    from qaflora.zoo.world import IN_CONTEXT_TASKS, eval_set, generic_questions

    drawn = make_examples(None, "zo", 300, 5)
    kept = generic_questions("zo", 200, 5)
    assert len(kept) == 200 and not any(e.meta["task"] in IN_CONTEXT_TASKS for e in kept)
    assert {e.meta["task"] for e in drawn} & IN_CONTEXT_TASKS == {"follows", "story"}
    assert kept == [e for e in drawn if e.meta["task"] not in IN_CONTEXT_TASKS][:200]
    assert eval_set("single", 9, 5)[-9:] == generic_questions("ve", 9, 5)
