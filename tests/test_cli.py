"""The ``qaflora`` command line, driven through typer's runner (same code path as the console script)."""

from __future__ import annotations

import json

import pytest
from qaflora import AdapterCatalog
from qaflora.cli import app
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_catalog(llama_zoo, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "catalog.yaml"
    AdapterCatalog.build(llama_zoo.catalog().adapters, base_model=llama_zoo.base).to_file(path)
    return path


def test_weights_json_from_catalog_with_base_model(tiny_catalog, tmp_path):
    plot = tmp_path / "heat.png"
    result = runner.invoke(
        app,
        [
            "weights",
            "Solve 12 plus 7",
            "--catalog",
            str(tiny_catalog),
            "--json",
            "--plot",
            str(plot),
            "--policy",
            "shares",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output[: result.output.rindex("}") + 1])
    assert payload["adapters"] == ["ad0", "ad1", "ad2"]
    columns = list(zip(*payload["matrix"], strict=True))
    assert all(abs(sum(c) - 1) < 1e-4 for c in columns)
    assert plot.exists() and plot.stat().st_size > 1000


def test_weights_table_with_top_k(tiny_catalog, llama_zoo):
    result = runner.invoke(
        app,
        [
            "weights",
            "def add(a, b):",
            "--policy",
            "shares",
            "--base",
            str(llama_zoo.base),
            "--catalog",
            str(tiny_catalog),
            "--top-k",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "L0" in result.output and "mean" in result.output
    assert sum(name in result.output for name in ("ad0", "ad1", "ad2")) == 2


def test_generate_prints_answer_weights_and_timings(tiny_catalog):
    result = runner.invoke(
        app,
        [
            "generate",
            "Hello there",
            "--catalog",
            str(tiny_catalog),
            "--max-new-tokens",
            "3",
            "--no-stream",
            "--mode",
            "static",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fusion weights" in result.output and "prompt" in result.output


def test_bad_mode_is_a_usage_error(tiny_catalog):
    result = runner.invoke(app, ["weights", "hi", "--catalog", str(tiny_catalog), "--mode", "telepathy"])
    assert result.exit_code != 0
    assert "unknown mode" in result.output


def test_bench_weigh_suite_writes_json(tmp_path):
    result = runner.invoke(
        app, ["bench", "--suite", "weigh", "--shape", "tiny", "--repeats", "1", "--json", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    weigh = json.loads((tmp_path / "weigh.json").read_text())
    assert [r["k"] for r in weigh["results"]] == [2, 4, 8]
    assert all(r["engine_ms"] > 0 and r["naive_loop_ms"] > 0 for r in weigh["results"])
    assert weigh["info"]["layers"] == 3


def test_decode_suite_runs_every_baseline(tmp_path):
    from qaflora.bench import decode

    decode.main(
        [
            "--shape",
            "tiny",
            "--k",
            "1",
            "2",
            "--tokens",
            "4",
            "--repeats",
            "1",
            "--json",
            str(tmp_path / "decode.json"),
        ]
    )
    records = json.loads((tmp_path / "decode.json").read_text())["results"]
    assert [r["k"] for r in records] == [1, 2]
    for record in records:
        assert record["engine_fused_tok_s"] > 0 and record["peft_loop_tok_s"] > 0
        assert record["merge_setup_ms"] > 0


def test_serving_suite_compares_every_scheduler(tmp_path):
    from qaflora.bench import serving

    argv = "--shape tiny --repeats 1 --rates 40 --requests 6 --streams 4 --per-stream 2"
    argv += " --tokens 2 4 --stream-tokens 2 4 --unloaded 2 --limit 120"
    serving.main([*argv.split(), "--json", str(tmp_path / "serving.json")])
    payload = json.loads((tmp_path / "serving.json").read_text())
    assert set(payload["medians"]) == set(serving.SCHEDULERS)
    for mode in serving.SCHEDULERS:
        medians = payload["medians"][mode]
        assert set(medians) == {"unloaded", "poisson_40.0", "streams"}
        assert medians["poisson_40.0"]["completed"] == 6
        assert medians["streams"]["completed"] == 8
        assert medians["streams"]["tokens_per_s"] > 0 and medians["unloaded"]["ttft_p50_s"] > 0
    assert payload["checks"]["streams_throughput_continuous_over_static"] > 0
    assert payload["checks"]["streams_throughput_continuous_prompt_all_over_static"] > 0
    assert payload["info"]["admission_threads_default"] >= 1


def test_transcript_suite_asserts_identical_turns(tmp_path):
    from qaflora.bench import transcript

    transcript.main(
        ["--shape", "tiny", "--repeats", "1", "--tokens", "3", "--json", str(tmp_path / "t.json")]
    )
    payload = json.loads((tmp_path / "t.json").read_text())
    records = payload["results"]
    assert [r["turn"] for r in records] == list(range(1, 11)) * 2
    assert {r["policy"] for r in records} == {"per_turn", "once"}
    tokens = payload["info"]["prompt_tokens_per_turn"]
    assert tokens == sorted(tokens) and len(tokens) == 10  # the history grows every turn
