"""What ChatQaFlora declares to LangChain's standard integration suite.

Shared by the tiny-model run (test_langchain_standard.py) and the shipped-zoo run
(test_langchain_standard_zoo.py): the flags describe the class, so both declare the same ones;
each run sets ``params`` (its engine and token budget) and marks what its model cannot do.
Put it first among the bases: the suite's own properties are the defaults it overrides.
"""

from __future__ import annotations

from typing import Any, ClassVar

from qaflora_integrations.langchain import ChatQaFlora


class ChatQaFloraSuiteModel:
    """The model under test for either suite (unit or integration): ``ChatQaFlora(**params)``."""

    params: ClassVar[dict[str, Any]] = {}

    @property
    def chat_model_class(self) -> type[ChatQaFlora]:
        return ChatQaFlora

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(self.params)


class ChatQaFloraSuiteFlags(ChatQaFloraSuiteModel):
    """The integration suite's capability flags, as the class has them."""

    @property
    def has_tool_calling(self) -> bool:
        return True  # bind_tools; forced calls follow the tools' schemas (grammar, or an opened call)

    @property
    def has_tool_choice(self) -> bool:
        return True  # "any", "required" or a tool's name

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
