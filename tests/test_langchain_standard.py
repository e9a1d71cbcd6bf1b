"""LangChain's own standard test suites for chat models, run against ChatQaFlora on a tiny model.

Capability flags are set to what the model under test can really do:

* unit suite: the class implements ``bind_tools`` with ``tool_choice`` (the tiny
  model's chat template has a tools section), so the tool-binding and
  structured-output construction tests run; paths can come from the environment
  (``QAFLORA_BASE_PATH``/``QAFLORA_CATALOG``), so ``test_init_from_env`` runs. The
  one skip is ``test_serdes``: the model is not LangChain-serializable (it holds a
  loaded engine, and a dump would carry machine-local paths);
* integration suite: the tiny model has random weights and writes gibberish.
  Structured output runs (``method="json_schema"``): grammar-constrained decoding
  makes every answer a valid instance whatever the weights, so the suite's jokes
  parse (room for them: 48 new tokens). ``has_tool_calling`` is False: the suite's
  tool tests check the arguments' values (``magic_function(3)`` must be called with
  ``{"input": 3}``), which the grammar cannot know and random weights do not write
  (valid forced calls are tested in test_langchain_chat.py). JSON mode runs
  (``supports_json_mode``): given a schema, ``method="json_mode"`` constrains the object to
  it, so the suite's keys are there whatever the weights. It reads text only (no
  image/audio/PDF/video flags). ``model=`` per call runs: one ChatQaFlora serves one base
  model, and ``<model>:<adapter>`` (the server's name for one adapter alone) selects that
  adapter, so the suite's override is an adapter of the tiny catalog.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from qaflora_integrations.langchain import ChatQaFlora


@pytest.fixture(scope="module")
def tiny_catalog_file(llama_zoo, tmp_path_factory):
    path = tmp_path_factory.mktemp("lc-standard") / "catalog.yaml"
    llama_zoo.catalog().to_file(path)
    return path


class TestChatQaFloraUnit(ChatModelUnitTests):
    """Built from paths: exercises the shared-engine cache (the suite constructs the model often)."""

    params: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(autouse=True)
    def _tiny_model(self, llama_zoo, tiny_catalog_file) -> None:
        type(self).params = {"base_path": str(llama_zoo.base), "catalog": str(tiny_catalog_file)}

    @property
    def chat_model_class(self) -> type[ChatQaFlora]:
        return ChatQaFlora

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        env = {"QAFLORA_BASE_PATH": self.params["base_path"], "QAFLORA_CATALOG": self.params["catalog"]}
        return env, {"temperature": 0.5}, {**self.params, "temperature": 0.5}


class TestChatQaFloraIntegration(ChatModelIntegrationTests):
    """Around the session's shared engine; greedy, 48 new tokens (room for a JSON joke)."""

    params: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(autouse=True)
    def _tiny_model(self, llama_engine) -> None:
        type(self).params = {"engine": llama_engine, "max_tokens": 48}

    @property
    def chat_model_class(self) -> type[ChatQaFlora]:
        return ChatQaFlora

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def has_tool_calling(self) -> bool:
        return False  # the suite checks argument values, which random weights do not write

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {"method": "json_schema"}  # grammar-constrained: valid under the schema every time

    @property
    def supports_json_mode(self) -> bool:
        return True  # a JSON object every time; with a schema, the schema's keys

    @property
    def supports_model_override(self) -> bool:
        return True  # model="<model>:<adapter>": that adapter alone, as the server names it

    @property
    def model_override_value(self) -> str:
        engine = self.params["engine"]
        return f"{engine.model_name}:{engine.adapter_names[0]}"

    @property
    def returns_usage_metadata(self) -> bool:
        return True
