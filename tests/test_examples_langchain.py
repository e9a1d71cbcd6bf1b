"""The LangChain examples run end to end: on the shipped demo zoo when it exists (their
defaults), else on the tiny random model; a few tokens each."""

from __future__ import annotations

import importlib.util
import re
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
    for question in module.DEFAULT_QUESTIONS * 3:  # longer than the tiny model's 256-token context
        assert isinstance(chain.invoke({"question": question}, config=config), str)
    history = chain.get_session_history("s").messages
    assert len(history) == 2 * 3 * len(module.DEFAULT_QUESTIONS)


@pytest.mark.parametrize("runner", ["lcel", "langgraph"])
def test_agent_pipeline_routes_and_works_with_different_fusion_options(model_args, runner, capsys):
    args, names = model_args
    module = load_example("agent_pipeline")
    assert (
        module.main([*args, "--runner", runner, "--request", "what is two plus five ? answer in zorbic ."])
        == 0
    )
    out = capsys.readouterr().out
    route = re.search(r"router \(logo, top_k=1\): (\S+)", out)
    assert route and route.group(1) in names
    worker = re.search(r"worker \(qaflora\): (.+)", out)
    assert worker
    picked = re.findall(r"(\S+)=\d\.\d\d", worker.group(1))
    assert 1 <= len(picked) <= 2 and set(picked) <= set(names)


def _paths(args: list[str]) -> dict[str, str]:
    options = dict(zip(args[::2], args[1::2], strict=True))
    if "--catalog" not in options:
        return {"catalog": str(shipped_catalog_path())}
    return {"base_path": options["--base"], "catalog": options["--catalog"]}
