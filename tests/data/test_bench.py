"""The data benchmark: runs end to end on a small file and records a row in a results table."""

import json

import pytest

from lima_jax import bench
from tests.helpers.data_fixtures import tiny


def test_data_bench_measures_and_records(tmp_path, tmp_path_factory, capsys, monkeypatch):
    pytest.importorskip("transformers")
    tok = tiny.tiny_tokenizer(tmp_path_factory.getbasetemp() / "spm")
    data = tiny.write_lima_like(tmp_path / "train.jsonl", n=60, seed=9)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench, "RESULTS", results)
    monkeypatch.setattr(bench.append_result, "__defaults__", (results,))
    code = bench.main(["data", "--json", "--data", str(data), "--tokenizer", tok.path,
                       "--max-len", "256", "--batch-size", "4", "--workers", "0", "--repeats", "1"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 2
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["baseline_tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["baseline_tokens_per_s"], abs=0.01)
        assert 0 < row["packing_efficiency"] <= 1
    table = results.read_text().splitlines()
    assert table[0] == "# Benchmark results" and len([row for row in table if row.startswith("| 20")]) == 2
    assert "tokens/s" in table[-1] and "cores" in table[-1]
