"""A tokenizer the grammar cannot read (the demo zoo's word-level one: its decoder joins words
with spaces, so no token has bytes of its own). Tools must keep working there: under ``auto``
the answer runs free and is parsed for calls, LangChain forces a call by opening it in the
model's answer, the server refuses a forced choice with a 400 naming the cause; structured
output fails with a clear error, and the engine stays usable."""

from __future__ import annotations

import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from pydantic import BaseModel
from qaflora import AdapterCatalog, FusionEngine
from qaflora.errors import ConfigError

from qaflora_integrations.langchain import ChatQaFlora
from qaflora_integrations.serve import BackgroundServer, create_app

REQUEST = "which shelf holds aspirin ?"


@tool
def find_shelf(drug: str) -> str:
    """The shelf a drug is kept on."""
    return "red"


@pytest.fixture(scope="module")
def word_engine(uses_world_zoo):
    catalog = AdapterCatalog.from_file(uses_world_zoo)
    engine = FusionEngine.from_pretrained(catalog.base_model, catalog, progress=False)
    yield engine
    engine.close()


def test_the_zoo_tokenizer_cannot_be_constrained_and_says_why(word_engine):
    assert not word_engine.supports_constraints
    assert not word_engine.supports_constraints  # the verdict is kept, not rebuilt per call
    with pytest.raises(ConfigError, match="cannot read this tokenizer"):
        word_engine.generate(REQUEST, constraint={"type": "json_object"}, max_new_tokens=4)
    assert word_engine.generate(REQUEST, max_new_tokens=4).usage.completion_tokens == 4


def test_langchain_tools_run_free_or_open_the_call(word_engine):
    llm = ChatQaFlora(engine=word_engine, max_tokens=12)
    assert isinstance(llm.bind_tools([find_shelf]).invoke(REQUEST), AIMessage)  # auto: free text
    forced = llm.bind_tools([find_shelf], tool_choice="find_shelf").invoke(REQUEST)
    calls = forced.tool_calls + forced.invalid_tool_calls
    assert [c["name"] for c in calls] == ["find_shelf"]  # opened for the model, named by it

    class Shelf(BaseModel):
        shelf: str

    with pytest.raises(ConfigError, match="cannot read this tokenizer"):
        llm.with_structured_output(Shelf, method="json_schema").invoke(REQUEST)
    assert isinstance(llm.invoke(REQUEST), AIMessage)


def test_server_answers_auto_tools_and_refuses_a_forced_choice_clearly(word_engine):
    spec = {
        "type": "function",
        "function": {
            "name": "find_shelf",
            "parameters": {"type": "object", "properties": {"drug": {"type": "string"}}},
        },
    }
    messages = [{"role": "user", "content": REQUEST}]
    with (
        BackgroundServer(create_app(word_engine, model_name="zoo")) as server,
        openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client,
    ):
        answer = client.chat.completions.create(model="zoo", messages=messages, tools=[spec], max_tokens=8)
        assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
        with pytest.raises(openai.BadRequestError, match="cannot read this tokenizer"):
            client.chat.completions.create(
                model="zoo", messages=messages, tools=[spec], tool_choice="required", max_tokens=8
            )
