"""No deprecation warning from transformers or PEFT on our main paths, and a silent demo.

pyproject.toml already turns every DeprecationWarning/FutureWarning into an error; this file
says which paths that has to hold for, records every warning (so a failure lists them all),
and checks that the detection itself works on the installed transformers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from qaflora import AdapterCatalog, FusionEngine
from qaflora.hf_compat import cache_argument, output_cache, with_cache
from qaflora.hf_quiet import LIBRARY_INTERNAL_DEPRECATIONS
from qaflora.testing import build_tiny_model, make_random_adapter
from qaflora.zoo import shipped_catalog_path

DEPRECATIONS = (DeprecationWarning, FutureWarning)


def _ours(record: list[warnings.WarningMessage]) -> list[str]:
    """Deprecation warnings in ``record``, less the library-internal ones we knowingly hide."""
    found = []
    for w in record:
        if not issubclass(w.category, DEPRECATIONS):
            continue
        if any(
            issubclass(w.category, cat) and re.match(msg, str(w.message))
            for msg, cat in LIBRARY_INTERNAL_DEPRECATIONS
        ):
            continue
        found.append(f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})")
    return found


def _exercise(engine: FusionEngine, adapters: list[str]) -> None:
    """Load-time work is done; now weigh, generate, stream and batch, through both wrappers."""
    from langchain_core.messages import HumanMessage
    from llama_index.core.llms import ChatMessage

    from qaflora_integrations.langchain import ChatQaFlora
    from qaflora_integrations.llama_index import QaFloraLLM

    query = "Solve 12 plus 7 and answer in Russian."
    engine.fusion_weights(query)
    engine.generate(query, max_new_tokens=6)
    engine.generate(query, max_new_tokens=6, temperature=0.8, seed=1, stop=["\n"])
    "".join(event.text for event in engine.stream(query, max_new_tokens=6, top_k=2))
    engine.generate_batch([query, "def add(a, b):"], max_new_tokens=4, mode="static", adapters=adapters)

    chat = ChatQaFlora(engine=engine, max_tokens=4)
    chat.invoke([HumanMessage(query)])
    "".join(str(chunk.content) for chunk in chat.stream(query))
    chat.batch([query, "hi"])

    llm = QaFloraLLM(engine, max_new_tokens=4)
    llm.complete(query)
    "".join(r.delta or "" for r in llm.stream_complete(query))
    llm.chat([ChatMessage(role="user", content=query)])


def test_main_paths_raise_no_deprecation_warning(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        base = build_tiny_model("llama", tmp_path / "base", seed=3)
        adapters = {f"a{i}": make_random_adapter(base, tmp_path / f"a{i}", seed=i) for i in range(2)}
        with FusionEngine.from_pretrained(base, AdapterCatalog.from_dirs(adapters), progress=False) as engine:
            _exercise(engine, list(adapters))
        catalog = shipped_catalog_path()
        with FusionEngine.from_pretrained(Path(catalog).parent / "base", catalog, progress=False) as zoo:
            _exercise(zoo, zoo.adapter_names[:2])
    assert _ours(record) == []


def test_the_detection_sees_a_deprecated_cache_argument(llama_engine):
    """The check above can fail: the old spelling of the cache argument warns on new transformers."""
    model = llama_engine.model
    if cache_argument(model) != "cache":
        pytest.skip("this transformers takes past_key_values: the old spelling is the current one")
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        first = model(input_ids=ids, use_cache=True)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            model(input_ids=ids[:, -1:], past_key_values=output_cache(first), use_cache=True)
            assert _ours(record), "passing past_key_values should warn on this transformers"
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            model(input_ids=ids[:, -1:], use_cache=True, **with_cache(model, output_cache(first)))
        assert _ours(record) == []


@pytest.mark.slow
def test_demo_prints_no_warning():
    """``qaflora demo`` as a user runs it, in a fresh process with every warning shown."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-c", "from qaflora.cli import main; main()", "demo", "--max-new-tokens", "6"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "correct" in done.stdout
    assert done.stderr.strip() == ""
