"""The framework-free Hermes parser, :mod:`qaflora.toolcalls` (LangChain types: test_langchain_chat)."""

from __future__ import annotations

from qaflora.toolcalls import (
    InvalidCall,
    ParsedToolCall,
    ToolCallStreamSplitter,
    format_tool_call,
    parse_tool_calls,
)


def test_parse_gives_plain_calls_and_invalid_calls() -> None:
    text = (
        'Let me look.<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {"a": </tool_call>'
        '<tool_call>{"name": "rm", "arguments": {}}'
    )
    parsed = parse_tool_calls(text, ["add"])
    assert parsed.content == "Let me look."
    assert len(parsed.calls) == 1 and isinstance(parsed.calls[0], ParsedToolCall)
    assert (parsed.calls[0].name, parsed.calls[0].arguments) == ("add", {"a": 1, "b": 2})
    assert parsed.calls[0].id.startswith("call_")
    assert all(isinstance(c, InvalidCall) for c in parsed.invalid)
    assert [(c.name, c.error.split(":")[0]) for c in parsed.invalid] == [
        ("add", "not JSON"),
        ("rm", "unknown tool 'rm'; available tools are ['add']"),
    ]
    assert parsed.invalid[0].raw == '{"name": "add", "arguments": {"a":'


def test_bare_json_call_and_arguments_as_string() -> None:
    bare = parse_tool_calls('  {"name": "add", "arguments": "{\\"a\\": 3}"}  ', ["add"])
    assert bare.content == "" and [(c.name, c.arguments) for c in bare.calls] == [("add", {"a": 3})]
    assert parse_tool_calls('{"name": "add", "arguments": {}}', None).calls == []


def test_format_round_trips_through_parse() -> None:
    text = format_tool_call("lookup", {"query": "café", "k": [1, 2]})
    assert "café" in text  # written as the model would, not \\u-escaped
    parsed = parse_tool_calls(text, ["lookup"])
    assert [(c.name, c.arguments) for c in parsed.calls] == [("lookup", {"query": "café", "k": [1, 2]})]


def test_stream_splitter_holds_back_the_call() -> None:
    text = 'Sure <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    splitter = ToolCallStreamSplitter(["add"])
    streamed = "".join(splitter.feed(text[i : i + 3]) for i in range(0, len(text), 3))
    parsed = splitter.finish()
    assert streamed == "Sure" and streamed + parsed.content == "Sure "  # the rest comes with the end
    assert [(c.name, c.arguments) for c in parsed.calls] == [("add", {"a": 1})]
