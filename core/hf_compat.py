"""Small shims over transformers API changes that the engine's own forwards depend on.

transformers 5.x renamed the KV-cache argument of ``forward`` from ``past_key_values``
to ``cache`` (and the output attribute likewise); the old spelling warns and is due for
removal. Older releases only know ``past_key_values``. The engine drives the model
itself (its own decode loop), so it must speak both.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from torch import nn


@lru_cache(maxsize=64)
def _forward_parameters(model_type: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_type.forward).parameters)


def cache_argument(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes a KV cache: ``cache`` or ``past_key_values``."""
    return "cache" if "cache" in _forward_parameters(type(model)) else "past_key_values"


def with_cache(model: nn.Module, cache: Any) -> dict[str, Any]:
    """``forward`` keyword arguments that pass ``cache`` under the name this transformers wants."""
    return {cache_argument(model): cache}


def output_cache(output: Any) -> Any:
    """The KV cache of a forward's output (``output.cache`` on new releases, else ``past_key_values``)."""
    keys = output.keys() if hasattr(output, "keys") else ()
    if "cache" in keys:
        return output["cache"]
    return output["past_key_values"] if "past_key_values" in keys else None
