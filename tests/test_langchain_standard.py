"""LangChain's own standard test suites for chat models, run against ChatQaFlora on a tiny model.

Capability flags are set to what the model under test can really do:

* unit suite: the class implements ``bind_tools`` with ``tool_choice`` (the tiny
  model's chat template has a tools section), so the tool-binding and
  structured-output construction tests run; paths can come from the environment
  (``QAFLORA_BASE_PATH``/``QAFLORA_CATALOG``), so ``test_init_from_env`` runs. The
  one skip is ``test_serdes``: the model is not LangChain-serializable (it holds a
  loaded engine, and a dump would carry machine-local paths);
* integration suite: the tiny model has random weights and writes gibberish, so
  it can never emit a ``<tool_call>`` on its own: ``has_tool_calling`` is False
  (tool calling is tested on strings and with forced tool choice in
  test_langchain_chat.py); it reads text only (no image/audio/PDF/video flags);
  one ChatQaFlora serves one base model (``supports_model_override`` False).
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
    """Around the session's shared engine; few tokens, greedy."""

    params: ClassVar[dict[str, Any]] = {}

    @pytest.fixture(autouse=True)
    def _tiny_model(self, llama_engine) -> None:
        type(self).params = {"engine": llama_engine, "max_tokens": 6}

    @property
    def chat_model_class(self) -> type[ChatQaFlora]:
        return ChatQaFlora

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def has_tool_calling(self) -> bool:
        return False  # random weights: the model never writes a tool call by itself

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False  # structured output goes through tool calls, see above

    @property
    def supports_model_override(self) -> bool:
        return False  # one engine, one base model: model=... cannot switch it

    @property
    def returns_usage_metadata(self) -> bool:
        return True
