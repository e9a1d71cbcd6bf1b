"""Engines for QaFloraLLMs built from paths: the process-wide cache of ``qaflora.engine_cache``.

LlamaIndex code builds LLM objects freely (one per query engine, per test, from
``to_dict()``...), so engines are loaded once per (base, catalog, device, dtype) and
shared, also with LangChain's ``ChatQaFlora``. Per-instance fusion and generation
settings travel with each request, never into the engine, so sharing is safe.
"""

from __future__ import annotations

from pathlib import Path

from qaflora import AdapterCatalog, FusionEngine
from qaflora.engine_cache import clear_engine_cache, shared_engine
from qaflora.errors import ConfigError

__all__ = ["clear_engine_cache", "load_engine"]


def load_engine(
    base_path: str | Path | None,
    catalog: AdapterCatalog | str | Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
) -> FusionEngine:
    """The shared engine for ``base_path`` + ``catalog``; ``base_path=None`` takes the catalog's
    ``base_model:`` (the shipped demo zoo's catalog names its base that way)."""
    if base_path is None:
        parsed = catalog if isinstance(catalog, AdapterCatalog) else AdapterCatalog.from_file(catalog)
        if parsed.base_model is None:
            raise ConfigError("no base model: pass base_path, or a catalog with a 'base_model:' entry")
        base_path = parsed.base_model
    return shared_engine(base_path, catalog, device=device, dtype=dtype)
