"""A callback handler that collects the fusion decisions of every ``ChatQaFlora`` call.

Inside a chain (``prompt | llm | StrOutputParser()``) the ``AIMessage`` and its
``response_metadata`` are gone by the time the chain returns; a handler sees
each model call as it ends, so an application can still show which adapters
answered which turn without restructuring its chain.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult


class FusionTraceHandler(BaseCallbackHandler):
    """Records ``{"run_id", "model_name", "adapters", "mode", "mean", "fusion", "finish_reason",
    "usage"}`` per generation of a qaflora model (other models' calls are ignored)."""

    run_inline = True  # cheap and thread-safe: no need to hop to an executor in async code

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                if not isinstance(generation, ChatGeneration):
                    continue
                meta = generation.message.response_metadata
                fusion = meta.get("fusion")
                if meta.get("model_provider") != "qaflora" or fusion is None:
                    continue
                record = {
                    "run_id": str(run_id),
                    "model_name": meta.get("model_name"),
                    "adapters": list(meta.get("adapters", [])),
                    "mode": fusion.get("mode"),
                    "mean": dict(fusion.get("mean", {})),
                    "fusion": fusion,
                    "finish_reason": meta.get("finish_reason"),
                    "usage": getattr(generation.message, "usage_metadata", None),
                }
                with self._lock:
                    self.records.append(record)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
