"""``qaflora zoo build --jobs``: adapters trained in parallel processes write the same bytes.

The uses world's recipe fixes each adapter's thread count (``adapter_threads=1``), so its
adapters may train several at once; the ``qa`` world's recipe does not (its adapters train on
the build process's threads, and its bytes must stay those of the zoo it shipped until
2026-12-03), so a parallel build of it is refused before anything is trained.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from qaflora.zoo.adapter_jobs import check_jobs, default_jobs
from qaflora.zoo.build import FULL, USES_RECIPE, build_recipe


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "build_info.json"  # it records times and the jobs
    }


def test_a_parallel_uses_build_writes_the_same_bytes_as_one_at_a_time(uses_world_zoo, tmp_path):
    """The fixture built its adapters one at a time (a quick build's default); two at once, in
    spawned processes, must give byte-identical adapters, and build_info records the jobs."""
    import json

    out = tmp_path / "zoo"
    argv = ["zoo", "build", "--quick", "--world", "uses", "--jobs", "2", "--out", str(out)]
    code = "from qaflora.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    one_at_a_time = _digests(uses_world_zoo.parent)
    assert len([k for k in one_at_a_time if k.endswith("adapter_model.safetensors")]) == 7
    assert _digests(out) == one_at_a_time
    assert json.loads((out / "build_info.json").read_text())["jobs"] == 2
    assert json.loads((uses_world_zoo.parent / "build_info.json").read_text())["jobs"] == 1


def test_jobs_are_refused_where_bytes_would_depend_on_them():
    with pytest.raises(ValueError, match="adapter_threads"):
        check_jobs(2, FULL)
    with pytest.raises(ValueError, match=">= 1"):
        check_jobs(0, USES_RECIPE)
    check_jobs(1, FULL)
    check_jobs(4, USES_RECIPE)
    assert default_jobs(FULL) == 1
    assert default_jobs(USES_RECIPE, quick=True) == 1
    assert default_jobs(USES_RECIPE) >= 1
    assert default_jobs(replace(USES_RECIPE, adapter_threads=10_000)) == 1


def test_the_cli_refuses_parallel_jobs_for_the_qa_world_before_training(tmp_path):
    """Refused in this process, before the build's own process in the qa world is started: each
    world's recipe is readable from any world."""
    assert build_recipe(world="qa") == FULL and build_recipe(world="uses") == USES_RECIPE
    out = tmp_path / "zoo"
    argv = ["zoo", "build", "--quick", "--world", "qa", "--jobs", "2", "--out", str(out)]
    code = "from qaflora.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert "adapter_threads" in done.stdout + done.stderr
    assert not out.exists()  # nothing trained, nothing written
