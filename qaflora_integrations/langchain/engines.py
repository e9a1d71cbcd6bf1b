"""Shared engines for chat models built from paths (the cache lives in core, shared with LlamaIndex)."""

from qaflora.engine_cache import catalog_key, clear_engine_cache, shared_engine

__all__ = ["catalog_key", "clear_engine_cache", "shared_engine"]
