"""The scale-out benchmark (``qaflora bench --suite replicas``) on a real local Ray runtime, small:
every request accounted for, none crossed, the replicas idle afterwards, a replica really killed."""

from __future__ import annotations

import json

import pytest
from qaflora.bench import replicas
from qaflora.testing import free_loopback_port

# One Ray runtime at a time: under pytest-xdist these modules share one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("ray")


def test_replicas_bench_accounts_for_every_request(tmp_path):
    out = tmp_path / "replicas.json"
    argv = ["--shape", "tiny", "--requests", "40", "--concurrency", "8", "--tokens", "2"]
    assert replicas.main([*argv, "--port", str(free_loopback_port()), "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"1 replica", "2 replicas", "2 replicas, one killed"}
    for label, run in runs.items():
        accounted = sum(run[k] for k in ("ok", "hung_up", "errors", "dropped", "lost", "crossed"))
        assert accounted == 40, (label, run)
        assert run["crossed"] == 0 and run["lost"] == 0 and run["idle_after"], (label, run)
        if label == "2 replicas, one killed":
            # a request planned to hang up may be in flight on the killed replica: it fails first
            assert run["hung_up"] <= 2 and run["hung_up"] + run["errors"] + run["dropped"] >= 2, run
        else:
            assert run["hung_up"] == 2, run  # requests 19 and 39 hang up on purpose
    for label in ("1 replica", "2 replicas"):
        assert runs[label]["ok"] == 38 and runs[label]["differs"] == 0, runs[label]
    assert len(runs["2 replicas, one killed"]["killed"]) == 1
