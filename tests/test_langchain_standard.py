"""LangChain's own standard test suites for chat models, run against ChatQaFlora on a tiny model.

Capability flags are set to what the model under test can really do:

* unit suite: the class implements ``bind_tools`` with ``tool_choice`` (the tiny
  model's chat template has a tools section), so the tool-binding and
  structured-output construction tests run; paths can come from the environment
  (``QAFLORA_BASE_PATH``/``QAFLORA_CATALOG``), so ``test_init_from_env`` runs. The
  one skip is ``test_serdes``: the model is not LangChain-serializable (it holds a
  loaded engine, and a dump would carry machine-local paths);
* integration suite: the tiny model (the long-context one: the suite's tool schemas
  take 300-600 of its character tokens) has random weights and writes gibberish.
  Structured output runs (``method="json_schema"``): grammar-constrained decoding
  makes every answer a valid instance whatever the weights, so the suite's jokes
  parse (room for them and for a whole forced call: 96 new tokens). Tool calling and
  tool choice run: ``tool_choice`` forces a call valid under the tools' schemas (the
  grammar), so forced calls, calls without arguments and tool-message histories pass.
  Seven tool tests are expected to fail (``xfail``, not strict: another torch build's
  numerics may pick other tokens) because they check what a model with the skill would
  write, which random weights do not: ``magic_function(3)`` called with ``{"input": 3}``
  (it writes 7; three tests), a non-empty ``answer_style`` (it writes ""), a Chinese
  customer name (""), and, with no ``tool_choice``, deciding to call at all (two agent-loop
  tests). What they exercise of ours is tested with forced calls in test_langchain_chat.py
  and, with a model that has the skill, by the agent example on the uses-world zoo. JSON mode runs
  (``supports_json_mode``): given a schema, ``method="json_mode"`` constrains the object to
  it, so the suite's keys are there whatever the weights. It reads text only (no
  image/audio/PDF/video flags). ``model=`` per call runs: one ChatQaFlora serves one base
  model, and ``<model>:<adapter>`` (the server's name for one adapter alone) selects that
  adapter, so the suite's override is an adapter of the tiny catalog.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_suite import ChatQaFloraSuiteFlags, ChatQaFloraSuiteModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

ARGUMENT_VALUE = "checks magic_function(3) is called with {'input': 3}; random weights write 7"


@pytest.fixture(scope="module")
def tiny_catalog_file(llama_zoo, tmp_path_factory):
    path = tmp_path_factory.mktemp("lc-standard") / "catalog.yaml"
    llama_zoo.catalog().to_file(path)
    return path


class TestChatQaFloraUnit(ChatQaFloraSuiteModel, ChatModelUnitTests):
    """Built from paths: exercises the shared-engine cache (the suite constructs the model often)."""

    @pytest.fixture(autouse=True)
    def _tiny_model(self, llama_zoo, tiny_catalog_file) -> None:
        type(self).params = {"base_path": str(llama_zoo.base), "catalog": str(tiny_catalog_file)}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        env = {"QAFLORA_BASE_PATH": self.params["base_path"], "QAFLORA_CATALOG": self.params["catalog"]}
        return env, {"temperature": 0.5}, {**self.params, "temperature": 0.5}


class TestChatQaFloraIntegration(ChatQaFloraSuiteFlags, ChatModelIntegrationTests):
    """Around the session's long-context engine; greedy, 96 new tokens (a JSON joke, a forced call)."""

    @pytest.fixture(autouse=True)
    def _tiny_model(self, long_engine) -> None:
        type(self).params = {"engine": long_engine, "max_tokens": 96}

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)  # as the suite's
    @pytest.mark.xfail(reason=ARGUMENT_VALUE)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=ARGUMENT_VALUE)
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason="checks answer_style is non-empty; random weights close the string at once")
    def test_bind_runnables_as_tools(self, model: BaseChatModel) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)  # as the suite's
    @pytest.mark.xfail(reason="no tool_choice: a model must decide to call; random weights write text")
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason="checks the Chinese customer name is in the arguments; random weights write ''")
    def test_unicode_tool_call_integration(
        self, model: BaseChatModel, tool_choice: str | None = None, force_tool_call: bool = True
    ) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice, force_tool_call)
