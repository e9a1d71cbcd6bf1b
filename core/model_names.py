"""Model names for one adapter alone: ``<model>:<adapter>``, the way vLLM and Ray Serve LLM name a LoRA.

One convention for every entry point: the OpenAI-compatible server's ``/v1/models`` and a
request's ``model``, and ``ChatQaFlora``'s per-call ``model=``, so a name that selects an
adapter against the server selects the same adapter in-process, and a client compares fused and
single-adapter answers by changing nothing but the model name.
"""

from __future__ import annotations

SEPARATOR = ":"


def adapter_model_name(model: str, adapter: str) -> str:
    """The name of ``adapter`` alone under ``model``: ``<model>:<adapter>``."""
    return f"{model}{SEPARATOR}{adapter}"


def model_names(model: str, adapters: list[str]) -> list[str]:
    """Every name ``model`` answers to: itself (fused per query), then each adapter alone."""
    return [model, *(adapter_model_name(model, adapter) for adapter in adapters)]


def named_adapter(name: str, model: str) -> str | None:
    """The adapter ``name`` selects under ``model`` (``<model>:<adapter>``); None for any other form.

    Whether that adapter is loaded is the caller's check: each entry point words its own error.
    """
    prefix = f"{model}{SEPARATOR}"
    return name[len(prefix) :] if name.startswith(prefix) else None
