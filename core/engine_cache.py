"""One loaded engine per (base, catalog, device, dtype), shared by every integration in the process.

Framework code constructs LLM objects freely: one per chain, per ``with_config``,
per request in some servers, ten in a row in LangChain's own init benchmark.
Loading a base model and its adapters each time would cost seconds and a copy of
the weights per instance, so engines are loaded once and shared: a LangChain
``ChatQaFlora`` and a LlamaIndex ``QaFloraLLM`` built from the same paths use the
same weights. The engine serves concurrent requests on its own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .catalog import AdapterCatalog
from .engine import FusionEngine

_ENGINES: dict[tuple[str, str, str | None, str | None], FusionEngine] = {}
_LOCK = threading.Lock()


def catalog_key(catalog: AdapterCatalog | str | Path) -> str:
    if isinstance(catalog, AdapterCatalog):
        return catalog.model_dump_json()
    return str(Path(catalog).expanduser().resolve())


def shared_engine(
    base_path: str | Path,
    catalog: AdapterCatalog | str | Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
    **load_kwargs: Any,
) -> FusionEngine:
    """The engine for these arguments, loaded on first use (once, even under concurrent callers)."""
    key = (str(Path(base_path).expanduser().resolve()), catalog_key(catalog), device, dtype)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None or engine.closed:
            engine = FusionEngine.from_pretrained(
                base_path, catalog, device=device, dtype=dtype, progress=False, **load_kwargs
            )
            _ENGINES[key] = engine
        return engine


def clear_engine_cache() -> None:
    """Close and forget every shared engine (frees their weights; later objects load afresh).

    Call it after retraining adapters in the same process: the cache keys on paths,
    not on file contents.
    """
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()
