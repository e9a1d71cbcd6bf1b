"""The LangChain examples run end to end: on the shipped demo zoo when it exists (their
defaults), else on the tiny random model; a few tokens each."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from qaflora import AdapterCatalog
from qaflora.zoo import shipped_catalog_path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so type hints (LangGraph's state schema) can be resolved
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_args(llama_zoo, tmp_path_factory) -> tuple[list[str], list[str]]:
    """(command-line arguments, adapter names) of the model the examples run on."""
    shipped = shipped_catalog_path()
    if shipped.is_file():
        return ["--max-new-tokens", "3"], AdapterCatalog.from_file(shipped).names
    catalog = tmp_path_factory.mktemp("lc-examples") / "catalog.yaml"
    llama_zoo.catalog().to_file(catalog)
    args = ["--base", str(llama_zoo.base), "--catalog", str(catalog), "--max-new-tokens", "3"]
    return args, list(llama_zoo.adapters)


def test_multilingual_assistant_prints_adapters_per_turn(model_args, capsys):
    args, names = model_args
    module = load_example("multilingual_assistant")
    questions = ["what is three plus four ? answer in zorbic .", "Solve 12 plus 7 and answer in Russian."]
    assert module.main([*args, "--top-k", "2", *(x for q in questions for x in ("--question", q))]) == 0
    out = capsys.readouterr().out
    turns = re.findall(r"adapters: qaflora: (.+)", out)
    assert len(turns) == 2
    for line in turns:
        picked = re.findall(r"(\S+)=\d\.\d\d", line)
        assert len(picked) <= 2 and set(picked) <= set(names)


def test_multilingual_assistant_keeps_history_within_the_context(model_args):
    args, _ = model_args
    module = load_example("multilingual_assistant")
    llm = module.ChatQaFlora(**_paths(args), max_tokens=3)
    chain = module.build_chain(llm, system="Answer briefly.")
    config = {"configurable": {"session_id": "s"}}
    for question in module.DEFAULT_QUESTIONS * 2:
        assert isinstance(chain.invoke({"question": question}, config=config), str)
    history = chain.get_session_history("s").messages
    assert len(history) == 2 * 2 * len(module.DEFAULT_QUESTIONS)
    # the whole history no longer fits: every later turn had to be trimmed to the context
    assert llm.get_num_tokens_from_messages(history) > llm.engine.context_window


def test_agent_runs_the_react_loop_and_prints_each_steps_weights(uses_world_zoo, capsys):
    names = AdapterCatalog.from_file(uses_world_zoo).names
    module = load_example("agent_pipeline")
    args = ["--catalog", str(uses_world_zoo), "--max-new-tokens", "24"]  # a tool call is ~15 tokens
    assert module.main([*args, "--request", "which shelf holds aspirin ?"]) == 0
    out = capsys.readouterr().out
    steps = re.findall(r"model \[(.*?)\]: (.*)", out)
    assert steps, out
    for weights, _ in steps:
        picked = re.findall(r"(\S+)=\d\.\d\d", weights)
        assert weights == "base" or (picked and set(picked) <= set(names))
    assert "answer:" in out


def test_agent_refuses_a_model_that_cannot_be_shown_tools(llama_zoo, tmp_path, capsys):
    """A base whose chat template never renders ``tools``: the agent says so before any call."""
    from transformers import AutoTokenizer

    base = tmp_path / "base"
    shutil.copytree(llama_zoo.base, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}</s>{% endfor %}"
    tokenizer.save_pretrained(base)
    catalog = tmp_path / "catalog.yaml"
    llama_zoo.catalog().to_file(catalog)
    module = load_example("agent_pipeline")
    assert module.main(["--base", str(base), "--catalog", str(catalog), "--request", "x"]) == 2
    assert "cannot show tools" in capsys.readouterr().err


def test_agent_graph_runs_the_real_tools_on_a_scripted_model():
    """Our glue around LangGraph, with a scripted chat model: the call goes to ToolNode, the real
    tool runs, its result comes back as a ToolMessage and the next model reply ends the loop."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    module = load_example("agent_pipeline")

    class Scripted(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    call = AIMessage("", tool_calls=[{"name": "find_shelf", "args": {"drug": "aspirin"}, "id": "c1"}])
    reply = AIMessage(module.find_shelf("aspirin"))
    agent = module.build_agent(Scripted(messages=iter([call, reply])))
    messages = module.run(agent, "which shelf holds aspirin ?")
    task = module.ToolTask("en", "find_shelf", "which shelf holds aspirin ?", {"drug": "aspirin"}, reply.text)
    assert messages[2].text == module.find_shelf("aspirin")
    assert module.solved(task, messages)
    wrong = module.ToolTask("en", "find_shelf", task.request, {"drug": "insulin"}, reply.text)
    assert not module.solved(wrong, messages)


def _paths(args: list[str]) -> dict[str, str]:
    options = dict(zip(args[::2], args[1::2], strict=True))
    if "--catalog" not in options:
        return {"catalog": str(shipped_catalog_path())}
    return {"base_path": options["--base"], "catalog": options["--catalog"]}
