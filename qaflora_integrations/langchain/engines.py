"""One loaded engine per (base, catalog, device, dtype), shared by every chat model built from paths.

LangChain code constructs chat models freely: one per chain, per ``with_config``,
per request in some servers, ten in a row in LangChain's own init benchmark.
Loading a base model and its adapters each time would cost seconds and a copy
of the weights per instance, so engines are loaded once and shared; the engine
serves concurrent requests from many threads and event loops on its own.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from qaflora import AdapterCatalog, FusionEngine

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
        if engine is None or getattr(engine, "_closed", False):
            engine = FusionEngine.from_pretrained(
                base_path, catalog, device=device, dtype=dtype, progress=False, **load_kwargs
            )
            _ENGINES[key] = engine
        return engine


def clear_engine_cache() -> None:
    """Close and forget every shared engine (frees their weights; later models load afresh)."""
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()
