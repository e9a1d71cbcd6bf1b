"""The HTTP cost benchmark (``qaflora bench --suite http``) runs end to end and reports both paths."""

from __future__ import annotations

import json

from qaflora.bench import http


def test_bench_http_suite_measures_both_paths(tmp_path):
    out = tmp_path / "http.json"
    argv = [
        "--shape",
        "tiny",
        "--repeats",
        "1",
        "--tokens",
        "1",
        "3",
        "--concurrent",
        "2",
        "--json",
        str(out),
    ]
    assert http.main(argv) == 0
    payload = json.loads(out.read_text())
    rows = {(r["new_tokens"], r["call"]) for r in payload["results"]["latency"]}
    assert (3, "HTTP POST, SSE stream") in rows and (1, "engine.agenerate (direct)") in rows
    assert {r["path"] for r in payload["results"]["concurrent"]} == {"direct", "HTTP"}
    assert all(r["ratio"] > 0 for r in payload["results"]["latency"])
