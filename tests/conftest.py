"""Shared fixtures: tiny random models of several families with random LoRA adapters.

Everything is built in-process and saved/loaded through the real
``save_pretrained``/``from_pretrained`` paths (no hub access needed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from qaflora import AdapterCatalog, FusionConfig, FusionEngine
from qaflora.catalog import AdapterEntry
from qaflora.testing import build_tiny_model, make_random_adapter
from transformers.utils import logging as hf_logging

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
# Tiny models gain nothing from intra-op parallelism, and with 2 threads on 2 busy cores
# every matmul waits for a descheduled OpenMP thread (measured: 150 ms vs 2 ms per prefill).
torch.set_num_threads(1)


@dataclass
class TinyZoo:
    arch: str
    base: Path
    adapters: dict[str, Path]

    def catalog(self, names: list[str] | None = None, kinds: dict[str, str] | None = None) -> AdapterCatalog:
        """The adapters (all, or ``names``), ``kind="domain"`` unless ``kinds`` says otherwise."""
        chosen = {n: p for n, p in self.adapters.items() if names is None or n in names}
        kinds = kinds or {}
        return AdapterCatalog.build(
            AdapterEntry(name=n, path=p, kind=kinds.get(n, "domain")) for n, p in chosen.items()
        )


def _build(root: Path, arch: str, n_adapters: int = 3) -> TinyZoo:
    base = build_tiny_model(arch, root / "base", seed=0)
    adapters = {
        f"ad{i}": make_random_adapter(base, root / f"ad{i}", seed=100 + i, strength=1.0 + i)
        for i in range(n_adapters)
    }
    return TinyZoo(arch=arch, base=base, adapters=adapters)


@pytest.fixture(scope="session")
def zoo_factory(tmp_path_factory):
    """Build (once per session) a tiny base + 3 adapters for an architecture."""
    cache: dict[str, TinyZoo] = {}

    def get(arch: str) -> TinyZoo:
        if arch not in cache:
            cache[arch] = _build(tmp_path_factory.mktemp(f"zoo-{arch}"), arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def llama_zoo(zoo_factory) -> TinyZoo:
    return zoo_factory("llama")


@pytest.fixture(scope="session")
def gpt2_zoo(zoo_factory) -> TinyZoo:
    return zoo_factory("gpt2")


SHARES = FusionConfig(policy="shares")
"""The paper's per-layer shares, for tests of the fused paths on tiny random models: their random
adapters move the next token by ~0.1 nats, below the default policy's relevance floor, so the
default would answer with the base alone (that decision is tested in test_policy*.py)."""


@pytest.fixture(scope="session")
def llama_engine(llama_zoo):
    engine = FusionEngine.from_pretrained(llama_zoo.base, llama_zoo.catalog(), config=SHARES, progress=False)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def long_zoo(tmp_path_factory) -> TinyZoo:
    """A tiny Llama with a 16k-token context: room for long prompts and for generations that
    would run for minutes (so a test can tell a cancelled one from a finished one)."""
    root = tmp_path_factory.mktemp("zoo-long")
    base = build_tiny_model("llama", root / "base", seed=0, context=16384)
    adapters = {
        f"ad{i}": make_random_adapter(base, root / f"ad{i}", seed=200 + i, strength=1.0 + i) for i in range(2)
    }
    return TinyZoo(arch="llama", base=base, adapters=adapters)


@pytest.fixture(scope="session")
def long_engine(long_zoo):
    engine = FusionEngine.from_pretrained(long_zoo.base, long_zoo.catalog(), config=SHARES, progress=False)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def zoo_engine():
    """The shipped demo zoo, fused per query (one per test module, closed after it); 32 rows, so a
    module's batched evaluations of 30-60 queries take two decode batches at most."""
    from qaflora.zoo import shipped_catalog_path

    catalog = AdapterCatalog.from_file(shipped_catalog_path())
    engine = FusionEngine.from_pretrained(catalog.base_model, catalog, progress=False, max_batch_size=32)
    yield engine
    engine.close()


@pytest.fixture
def server(llama_engine):
    """A fresh OpenAI-compatible app (own metrics) over the shared tiny engine, on loopback."""
    from qaflora_integrations.serve import BackgroundServer, create_app

    with BackgroundServer(create_app(llama_engine)) as running:
        yield running


@pytest.fixture
def long_server(long_engine):
    from qaflora_integrations.serve import BackgroundServer, create_app

    with BackgroundServer(create_app(long_engine)) as running:
        yield running


@pytest.fixture(scope="session")
def uses_world_zoo(tmp_path_factory) -> Path:
    """A quick (untrained) zoo of the ``uses`` world (the shipped one), built by ``qaflora zoo
    build --world uses``: the catalog path. Seconds, no skill."""
    return _quick_zoo(tmp_path_factory, "uses")


@pytest.fixture(scope="session")
def qa_world_zoo(tmp_path_factory) -> Path:
    """A quick zoo of the ``qa`` world (the one shipped before), built in its own process by
    ``qaflora zoo build --world qa`` (the world is fixed at import): the catalog path."""
    return _quick_zoo(tmp_path_factory, "qa")


def _quick_zoo(tmp_path_factory, world: str) -> Path:
    import subprocess
    import sys

    out = tmp_path_factory.mktemp(f"{world}-world") / "zoo"
    argv = ["zoo", "build", "--quick", "--world", world, "--out", str(out)]
    code = "from qaflora.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "catalog.yaml"
