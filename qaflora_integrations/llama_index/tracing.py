"""See the fusion weights of LLM calls made deep inside LlamaIndex (query engines, agents)."""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent


class FusionTraceHandler(BaseEventHandler):
    """Collects the fusion metadata of every QaFloraLLM response LlamaIndex reports.

    Add it to the instrumentation dispatcher to see which adapters answered inside
    a query engine, agent or workflow, where you never hold the response object::

        from llama_index.core.instrumentation import get_dispatcher
        trace = FusionTraceHandler()
        get_dispatcher().add_event_handler(trace)
        query_engine.query("...")
        trace.records[-1]["fusion_weights"]

    Streaming calls are recorded when the stream is exhausted (their last chunk
    carries the metadata).
    """

    records: list[dict[str, Any]] = Field(default_factory=list)
    max_records: int = Field(default=1000, ge=1, description="Oldest records are dropped beyond this.")

    @classmethod
    def class_name(cls) -> str:
        return "FusionTraceHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if not isinstance(event, LLMCompletionEndEvent | LLMChatEndEvent) or event.response is None:
            return
        metadata = event.response.additional_kwargs
        if "fusion_weights" in metadata:
            self.records.append({"span_id": event.span_id, **metadata})
            del self.records[: -self.max_records]

    @property
    def last(self) -> dict[str, Any] | None:
        return self.records[-1] if self.records else None
