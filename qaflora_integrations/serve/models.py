"""The model names one server answers to: the fused model, and ``<model>:<adapter>`` per adapter.

``<model>`` is fused per query (the engine's fusion config, or the request's
``fusion`` field); ``<model>:<adapter>`` is that one adapter alone at full
strength (``FusionConfig(mode="single", adapters=[adapter])``), the way vLLM and
Ray Serve LLM name a LoRA, so a client can compare fused and single-adapter
answers by switching nothing but the model name.
"""

from __future__ import annotations

import time

from openai.types import Model
from qaflora import FusionEngine
from qaflora.model_names import adapter_model_name, model_names, named_adapter

from .errors import model_not_found

OWNER = "qaflora"


class ModelNames:
    """Resolves a request's ``model`` and lists what ``/v1/models`` shows."""

    def __init__(self, engine: FusionEngine, model_name: str | None = None) -> None:
        self.engine = engine
        self.base = model_name or engine.model_name
        self.created = int(time.time())

    @property
    def names(self) -> list[str]:
        return model_names(self.base, self.engine.adapter_names)

    def adapter_of(self, model: str) -> str | None:
        """None for the fused model, the adapter's name for ``<model>:<adapter>``; 404 otherwise."""
        if model == self.base:
            return None
        adapter = named_adapter(model, self.base)
        if adapter is not None:
            if adapter in self.engine.adapter_names:
                return adapter
            raise model_not_found(
                f"the model {model!r} names adapter {adapter!r}, which is not loaded; "
                f"adapters are {self.engine.adapter_names}"
            )
        raise model_not_found(f"the model {model!r} does not exist; this server serves {self.names}")

    def cards(self) -> list[Model]:
        """``/v1/models`` entries (OpenAI's ``Model``, plus ``parent`` and the adapter's catalog data)."""
        cards = [
            Model(
                id=self.base,
                created=self.created,
                object="model",
                owned_by=OWNER,
                adapters=self.engine.adapter_names,
                max_model_len=self.engine.context_window,
            )
        ]
        for entry in self.engine.adapters:
            cards.append(
                Model(
                    id=adapter_model_name(self.base, entry.name),
                    created=self.created,
                    object="model",
                    owned_by=OWNER,
                    parent=self.base,
                    kind=entry.kind,
                    description=entry.description,
                    max_model_len=self.engine.context_window,
                )
            )
        return cards

    def card(self, model: str) -> Model:
        self.adapter_of(model)  # 404 for an unknown name
        return next(card for card in self.cards() if card.id == model)
