"""The data benchmark: runs end to end on a small file and records a row in a results table; its
per-backend tokenizer rows measure each backend against its reference (or say why they are skipped)."""

import json

import pytest

from lima_jax import bench
from tests.helpers.data_fixtures import tiny


def _rows(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_data_bench_measures_and_records(tmp_path, tmp_path_factory, capsys, monkeypatch):
    pytest.importorskip("transformers")
    tok = tiny.tiny_tokenizer(tmp_path_factory.getbasetemp() / "spm")
    data = tiny.write_lima_like(tmp_path / "train.jsonl", n=60, seed=9)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench, "RESULTS", results)
    monkeypatch.setattr(bench.append_result, "__defaults__", (results,))
    code = bench.main(["data", "--json", "--data", str(data), "--tokenizer", tok.path,
                       "--max-len", "256", "--batch-size", "4", "--workers", "0", "--repeats", "1",
                       "--backends", "none"])
    assert code == 0
    rows = _rows(capsys)
    assert len(rows) == 2
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["baseline_tokens_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["baseline_tokens_per_s"], abs=0.01)
        assert 0 < row["packing_efficiency"] <= 1
    table = results.read_text().splitlines()
    assert table[0] == "# Benchmark results" and len([row for row in table if row.startswith("| 20")]) == 2
    assert "tokens/s" in table[-1] and "cores" in table[-1]


def test_data_bench_backend_rows(tmp_path, tmp_path_factory, capsys, monkeypatch):
    pytest.importorskip("transformers")
    from tests.helpers.tokenizer_fixtures import byte_bpe_dir

    tok = tiny.tiny_tokenizer(tmp_path_factory.getbasetemp() / "spm")
    data = tiny.write_lima_like(tmp_path / "train.jsonl", n=40, seed=3)
    bpe = byte_bpe_dir(tmp_path / "bpe", texts=tiny.corpus(100, seed=2), vocab_size=400)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench, "RESULTS", results)
    monkeypatch.setattr(bench.append_result, "__defaults__", (results,))
    common = ["data", "--json", "--data", str(data), "--tokenizer", tok.path, "--max-len", "256",
              "--batch-size", "4", "--workers", "0", "--repeats", "1", "--threads", "2"]
    assert bench.main([*common, "--tokenizer-json", str(bpe / "tokenizer.json"),
                       "--llama3-tokenizer", str(tmp_path / "absent.model")]) == 0
    listed = _rows(capsys)
    assert len(listed) == 5  # two pipeline rows (0 and --workers 0), three backend rows
    rows = {row["name"]: row for row in listed}
    for backend in ("sentencepiece", "tokenizers"):
        row = rows[f"data/tokenize_utterances/{backend}"]
        assert row["tokens"] > 0 and row["tokens_per_s"] > 0 and row["baseline_tokens_per_s"] > 0
        assert row["same_ids_as_baseline"] is True and row["utterances"] == 40 * 2 + 6 * 2
        assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["baseline_tokens_per_s"], abs=0.01)
    assert rows["data/tokenize_utterances/sentencepiece"]["tokens_per_s_1_thread"] > 0
    skipped = rows["data/tokenize_utterances/tiktoken"]
    assert "absent.model not found" in skipped["skipped"] and skipped["figure"].startswith("skipped: ")
    table = results.read_text().splitlines()
    assert len([row for row in table if row.startswith("| 20")]) == 4  # the skipped row is not recorded

    # No tokenizer.json given and no Llama 3 file to convert: the tokenizers row says why.
    assert bench.main([*common, "--no-record", "--backends", "tokenizers",
                       "--llama3-tokenizer", str(tmp_path / "absent.model")]) == 0
    (row,) = [r for r in _rows(capsys) if r["name"].startswith("data/tokenize_utterances/")]
    assert "absent.model not found" in row["skipped"]


def test_data_bench_tiktoken_row(shared_data, tmp_path, tmp_path_factory, capsys):
    pytest.importorskip("tiktoken")
    tok = tiny.tiny_tokenizer(tmp_path_factory.getbasetemp() / "spm")
    data = tiny.write_lima_like(tmp_path / "train.jsonl", n=20, seed=4)
    assert bench.main(["data", "--json", "--no-record", "--data", str(data), "--tokenizer", tok.path,
                       "--max-len", "256", "--batch-size", "4", "--workers", "0", "--repeats", "1",
                       "--backends", "tiktoken",
                       "--llama3-tokenizer", str(shared_data / "tokenizer" / "llama3" / "tokenizer.model")]) == 0
    (row,) = [r for r in _rows(capsys) if r["name"] == "data/tokenize_utterances/tiktoken"]
    assert row["same_ids_as_baseline"] is True and row["tokens"] > 0 and row["tokens_per_s_1_thread"] > 0
