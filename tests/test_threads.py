"""The worker thread's intra-op thread policy (qaflora.threads): what it picks, and that it
changes the worker's threads only, which rests on how torch.set_num_threads behaves per thread."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from qaflora import threads


def _in_thread(fn):
    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join()
    return out[0]


@pytest.fixture
def clean_env(monkeypatch):
    for name in (threads.ENV_VAR, *threads.USER_THREAD_VARS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_policy_single_thread_on_small_cpus_default_elsewhere(clean_env):
    assert threads.worker_threads(cores=1) == 1
    assert threads.worker_threads(cores=2) == 1
    assert threads.worker_threads(cores=16) is None  # not measured there: torch's default stays


def test_policy_respects_the_users_settings(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "2")
    assert threads.worker_threads(cores=2) is None  # the user chose; we leave torch as configured
    clean_env.setenv(threads.ENV_VAR, "3")
    assert threads.worker_threads(cores=2) == 3  # ours wins over the generic variables
    clean_env.setenv(threads.ENV_VAR, "auto")
    assert threads.worker_threads(cores=2) is None


def test_a_bad_override_warns_and_falls_back(clean_env):
    clean_env.setenv(threads.ENV_VAR, "many")
    with pytest.warns(RuntimeWarning, match="QAFLORA_NUM_THREADS='many'"):
        assert threads.worker_threads(cores=2) == 1


def test_configure_changes_the_worker_thread_only(clean_env):
    """A caller thread with 3 threads starts a worker; the worker gets 1, nobody else changes."""
    clean_env.setenv(threads.ENV_VAR, "1")
    seen: dict[str, int] = {}

    def caller() -> None:
        torch.set_num_threads(3)  # this thread, and (torch's side effect) the default of new ones
        seen["caller before"] = torch.get_num_threads()
        seen["worker"] = _in_thread(threads.configure_worker_threads)
        seen["caller after"] = torch.get_num_threads()
        seen["new thread after"] = _in_thread(torch.get_num_threads)

    try:
        _in_thread(caller)
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest), for this thread and new ones
    assert seen == {"caller before": 3, "worker": 1, "caller after": 3, "new thread after": 3}


def test_engine_worker_applies_the_policy(clean_env, llama_zoo):
    """The engine's scheduler thread calls the policy when it starts."""
    from qaflora import FusionEngine

    clean_env.setenv(threads.ENV_VAR, "2")
    calls: list[int] = []
    original = threads.configure_worker_threads

    def spy() -> int:
        calls.append(original())
        return calls[-1]

    clean_env.setattr("qaflora.scheduler.configure_worker_threads", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = FusionEngine.from_pretrained(llama_zoo.base, llama_zoo.catalog(), progress=False)
    try:
        engine.generate("hi", max_new_tokens=2)
    finally:
        engine.close()
        torch.set_num_threads(1)
    assert calls == [2]
