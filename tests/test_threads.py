"""The worker thread's intra-op thread policy (qaflora.threads): what it picks, that it changes
the worker's threads only (which rests on how torch.set_num_threads behaves per thread), and
that admissions run with the prompt count while decode steps keep the worker's."""

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
    for name in (threads.ENV_VAR, threads.PROMPT_ENV_VAR, *threads.USER_THREAD_VARS):
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

    def spy(*args, **kwargs) -> int:
        calls.append(original(*args, **kwargs))
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


def test_prompt_policy_keeps_the_worker_count_unless_asked(clean_env):
    assert threads.prompt_threads(worker=1) == 1  # measured: a wider admission hurt the loaded tail
    assert threads.prompt_threads(worker=8) == 8
    clean_env.setenv(threads.PROMPT_ENV_VAR, "3")  # the user chose the prompt count
    assert threads.prompt_threads(worker=1) == 3
    clean_env.setenv(threads.PROMPT_ENV_VAR, "none")
    with pytest.warns(RuntimeWarning, match="QAFLORA_PROMPT_THREADS='none'"):
        assert threads.prompt_threads(worker=1) == 1


def test_prompt_phase_switches_the_worker_thread_only_inside(clean_env):
    """Inside the phase the worker runs 3 threads, after it 1 again; nobody else changes."""
    clean_env.setenv(threads.ENV_VAR, "1")
    seen: dict[str, int] = {}

    def worker() -> None:
        threads.configure_worker_threads(3)
        with threads.prompt_phase() as count:
            seen["yielded"] = count
            seen["inside"] = torch.get_num_threads()
        seen["after"] = torch.get_num_threads()

    def caller() -> None:
        torch.set_num_threads(2)
        _in_thread(worker)
        seen["caller after"] = torch.get_num_threads()
        seen["new thread after"] = _in_thread(torch.get_num_threads)
        with threads.prompt_phase() as count:  # not a worker thread: nothing to switch
            seen["unconfigured"] = count

    try:
        _in_thread(caller)
    finally:
        torch.set_num_threads(1)
    assert seen == {
        "yielded": 3,
        "inside": 3,
        "after": 1,
        "caller after": 2,
        "new thread after": 2,
        "unconfigured": 2,
    }


@pytest.mark.parametrize(
    ("scheduling", "plan_ahead", "prompt_threads", "prompt_env", "expected"),
    [
        ("continuous", False, 2, None, 2),
        ("static", False, 2, None, 2),
        ("continuous", False, None, "2", 2),  # QAFLORA_PROMPT_THREADS
        ("continuous", False, None, None, 1),  # default: the worker's count
        ("continuous", True, None, "2", 1),  # planner and worker share the cores: no widening
    ],
)
def test_engine_admissions_use_the_prompt_count(
    clean_env, llama_zoo, scheduling, plan_ahead, prompt_threads, prompt_env, expected
):
    """Every whole-prompt forward (weighing, prefill) of the engine runs with the prompt count,
    every one-token decode step with the worker's."""
    from qaflora import FusionEngine
    from qaflora.config import FusionConfig

    clean_env.setenv(threads.ENV_VAR, "1")
    if prompt_env is not None:
        clean_env.setenv(threads.PROMPT_ENV_VAR, prompt_env)
    seen: list[tuple[int, int]] = []  # (tokens per row, intra-op threads) of each model forward

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if threading.current_thread().name.startswith("qaflora-worker"):
            seen.append((ids.shape[1], torch.get_num_threads()))

    engine = FusionEngine.from_pretrained(
        llama_zoo.base,
        llama_zoo.catalog(),
        progress=False,
        config=FusionConfig(policy="shares"),  # every adapter weighed: k+1 rows over the prompt
        scheduling=scheduling,
        plan_ahead=plan_ahead,
        prompt_threads=prompt_threads,
    )
    handle = engine.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        engine.generate("a question with several words in it", max_new_tokens=4, ignore_eos=True)
    finally:
        handle.remove()
        engine.close()
        torch.set_num_threads(1)
    prompt_forwards = {count for tokens, count in seen if tokens > 1}
    decode_forwards = {count for tokens, count in seen if tokens == 1}
    assert len([1 for tokens, _ in seen if tokens > 1]) >= 2  # the weighing and the prefill
    assert prompt_forwards == {expected}
    assert decode_forwards == {1}


def test_engine_rejects_a_bad_prompt_thread_count(llama_zoo):
    from qaflora import FusionEngine
    from qaflora.errors import ConfigError

    with pytest.raises(ConfigError, match="prompt_threads must be >= 1"):
        FusionEngine.from_pretrained(llama_zoo.base, llama_zoo.catalog(), progress=False, prompt_threads=0)
