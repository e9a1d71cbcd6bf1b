"""Property-based tests (hypothesis) where hand-picked cases cannot cover the space.

* Streaming with stop strings, through the engine's real stream path and the tiny model's
  byte-level BPE tokenizer: random seeds give random token sequences (multi-byte characters
  assembled from byte tokens, invalid bytes), and stops are cut from that very text at random
  places, so they straddle token and character boundaries. The streamed pieces always add up
  to the non-streamed text, and no stop ever leaks.
* The Hermes tool-call parser never raises, whatever the text; valid calls round-trip; its
  stream splitter adds up to the parse of the whole text.
* A catalog file full of junk raises :class:`CatalogError`, never another exception.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from qaflora import AdapterCatalog
from qaflora.errors import CatalogError

from qaflora_integrations.langchain.tools import CLOSE_TAG, OPEN_TAG, ToolCallStreamSplitter, parse_tool_calls

PROMPT = "Привет, как дела? Hola, ¿qué tal?"
NEW_TOKENS = 20
SEEDS = st.integers(min_value=0, max_value=11)
# Text with what makes stop handling hard: multi-byte characters (2, 3 and 4 bytes in UTF-8)
# and the replacement character's neighbours, mixed with ASCII.
ODD_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_characters="\ufffd"),
        st.sampled_from(list("aé€😀Пк<>{} \n")),
    ),
    max_size=12,
)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------ streaming with stop strings


@pytest.fixture(scope="module")
def unstopped(llama_engine):
    """The sampled answer of each seed without any stop string (the reference text)."""
    cache: dict[int, str] = {}

    def text_of(seed: int) -> str:
        if seed not in cache:
            cache[seed] = _generate(llama_engine, seed, None).text
        return cache[seed]

    return text_of


def _options(seed: int, stop: list[str] | None) -> dict:
    return {"max_new_tokens": NEW_TOKENS, "ignore_eos": True, "temperature": 1.0, "seed": seed, "stop": stop}


def _generate(engine, seed: int, stop: list[str] | None):
    return engine.generate(PROMPT, **_options(seed, stop))


@st.composite
def stops_cut_from(draw, text: str) -> list[str]:
    """1-3 stop strings: pieces of ``text`` (any boundaries) and arbitrary multi-byte strings."""
    clean = [segment for segment in text.split("\ufffd") if segment]
    stops: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if clean and draw(st.booleans()):
            segment = draw(st.sampled_from(clean))
            start = draw(st.integers(min_value=0, max_value=len(segment) - 1))
            end = draw(st.integers(min_value=start + 1, max_value=min(len(segment), start + 6)))
            stops.append(segment[start:end])
        else:
            stops.append(draw(ODD_TEXT.filter(bool)))
    return stops


@FUZZ
@given(seed=SEEDS, data=st.data())
def test_streamed_text_equals_generated_text_and_never_leaks_a_stop(llama_engine, unstopped, seed, data):
    reference = unstopped(seed)
    stops = data.draw(stops_cut_from(reference), label="stops")
    assume(all(s.strip() for s in stops))  # whitespace-only stops are valid but say little

    generated = _generate(llama_engine, seed, stops)
    pieces, final = [], None
    for item in llama_engine.stream(PROMPT, **_options(seed, stops)):
        pieces.append(item.text)
        if item.result is not None:
            final = item.result
    streamed = "".join(pieces)

    assert final is not None
    assert streamed == final.text == generated.text
    for stop in stops:
        assert stop not in streamed
    # the same tokens were sampled: the text is the reference cut just before a stop, or all of it
    assert reference.startswith(streamed)
    event("cut at a stop" if streamed != reference else "no stop occurred")
    event("multi-byte stop" if any(len(s.encode()) > len(s) for s in stops) else "ASCII stops")
    if streamed != reference:
        assert any(reference[len(streamed) :].startswith(stop) for stop in stops)


# ------------------------------------------------------------------ Hermes tool calls

TOOL_NAMES = ["add", "lookup", "weather_now"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# Text made of the parser's own vocabulary, so tags, braces and JSON meet in every order.
HERMES_FRAGMENTS = st.lists(
    st.one_of(
        st.sampled_from(
            [OPEN_TAG, CLOSE_TAG, "<tool_", "{", "}", '"name"', ":", '"arguments"', ",", '"add"', "\n", " "]
        ),
        JSON_VALUES.map(json.dumps),
        st.text(max_size=6),
    ),
    max_size=14,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(), HERMES_FRAGMENTS), names=st.one_of(st.none(), st.just(TOOL_NAMES)))
def test_hermes_parser_never_raises(text, names):
    parsed = parse_tool_calls(text, names)
    assert isinstance(parsed.content, str)
    for call in parsed.tool_calls:
        assert isinstance(call["name"], str) and call["name"]
        assert isinstance(call["args"], dict)
        if names is not None:
            assert call["name"] in names


@settings(max_examples=100, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(TOOL_NAMES), st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3)),
        min_size=1,
        max_size=3,
    ),
    before=st.text(max_size=10).filter(lambda t: "<" not in t),
)
def test_hermes_calls_round_trip(calls, before):
    text = before + "".join(
        f"{OPEN_TAG}{json.dumps({'name': name, 'arguments': args})}{CLOSE_TAG}" for name, args in calls
    )
    parsed = parse_tool_calls(text, TOOL_NAMES)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == calls
    assert parsed.invalid_tool_calls == []
    assert parsed.content == (before if before.strip() else "")


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(st.text(max_size=40), HERMES_FRAGMENTS), size=st.integers(min_value=1, max_value=7))
def test_tool_call_stream_splitter_adds_up_to_the_whole_parse(text, size):
    whole = parse_tool_calls(text, TOOL_NAMES)
    splitter = ToolCallStreamSplitter(TOOL_NAMES)
    streamed = "".join(splitter.feed(text[i : i + size]) for i in range(0, len(text), size))
    rest = splitter.finish()
    assert OPEN_TAG not in streamed
    assert streamed + rest.content == whole.content
    calls = [(c["name"], c["args"]) for c in rest.tool_calls]
    assert calls == [(c["name"], c["args"]) for c in whole.tool_calls]


# ------------------------------------------------------------------ catalog files

YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
)
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
ENTRY_KEYS = ["name", "path", "description", "kind", "languages", "enabled", "junk"]
# Structures close to a real catalog, with junk in every field.
CATALOG_LIKE = st.fixed_dictionaries(
    {"adapters": st.one_of(YAML_VALUES, st.lists(st.dictionaries(st.sampled_from(ENTRY_KEYS), YAML_VALUES)))},
    optional={"base_model": YAML_VALUES, "extra": YAML_VALUES},
)


def _write(tmp: Path, suffix: str, content: bytes) -> Path:
    path = tmp / f"catalog{suffix}"
    path.write_bytes(content)
    return path


def _load_expecting_catalog_error(path: Path) -> None:
    try:
        AdapterCatalog.from_file(path)
    except CatalogError:
        return
    # a junk file may happen to be a valid catalog (paths are checked when adapters load)


@settings(max_examples=150, deadline=None)
@given(content=st.binary(max_size=200), suffix=st.sampled_from([".yaml", ".yml", ".json", ".txt"]))
def test_catalog_file_of_random_bytes_raises_catalog_error(tmp_path_factory, content, suffix):
    _load_expecting_catalog_error(_write(tmp_path_factory.mktemp("bytes"), suffix, content))


@settings(max_examples=150, deadline=None)
@given(data=CATALOG_LIKE, as_json=st.booleans())
def test_catalog_file_of_junk_structures_raises_catalog_error(tmp_path_factory, data, as_json):
    text = json.dumps(data) if as_json else yaml.safe_dump(data, allow_unicode=True)
    _load_expecting_catalog_error(
        _write(tmp_path_factory.mktemp("junk"), ".json" if as_json else ".yaml", text.encode())
    )


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=120))
def test_catalog_file_of_random_text_raises_catalog_error(tmp_path_factory, text):
    _load_expecting_catalog_error(_write(tmp_path_factory.mktemp("text"), ".yaml", text.encode()))
