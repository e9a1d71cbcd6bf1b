"""One loaded engine per (base, catalog, device, dtype), shared by every QaFloraLLM built from paths."""

from __future__ import annotations

import threading
from pathlib import Path

from qaflora import AdapterCatalog, FusionEngine
from qaflora.errors import ConfigError

_ENGINES: dict[tuple[str, ...], FusionEngine] = {}
_ENGINES_LOCK = threading.Lock()


def load_engine(
    base_path: str | Path | None,
    catalog: AdapterCatalog | str | Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
) -> FusionEngine:
    """Load (or reuse) the engine for ``base_path`` + ``catalog``.

    Loading a base and its adapters takes seconds to minutes, and LlamaIndex code
    builds LLM objects freely (one per query engine, per test...), so engines are
    cached per process by (base, catalog, device, dtype). Per-instance fusion and
    generation settings are sent with each request, never stored in the engine, so
    sharing one engine between differently configured LLMs is safe.
    ``base_path=None`` takes the catalog's own ``base_model:``.
    """
    if not isinstance(catalog, AdapterCatalog):
        catalog_key = str(Path(catalog).resolve())
        catalog = AdapterCatalog.from_file(catalog)
    else:
        catalog_key = catalog.model_dump_json()
    base = base_path if base_path is not None else catalog.base_model
    if base is None:
        raise ConfigError("no base model: pass base_path, or a catalog with a 'base_model:' entry")
    key = (str(Path(base).resolve()), catalog_key, str(device), str(dtype))
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None or getattr(engine, "_closed", False):
            engine = FusionEngine.from_pretrained(base, catalog, device=device, dtype=dtype, progress=False)
            _ENGINES[key] = engine
        return engine


def clear_engine_cache() -> None:
    """Close and forget every engine loaded by :func:`load_engine`."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()
