"""The training benchmark: a tiny config end to end through the dispatcher, into a results
table in a temporary folder (never the repository's bench/RESULTS.md)."""

import json

import pytest

from lima_jax import bench
from lima_jax.errors import LimaError

TINY_CONFIG = '''
from lima_jax.train.config import get_base_config


def get_config():
    c = get_base_config()
    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.data.max_len = 32
    c.data.global_batch_size = 4
    return c
'''


def test_train_bench_measures_and_records(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setitem(bench.BENCHMARKS, "train", "lima_jax.train.bench")
    monkeypatch.setattr(bench, "RESULTS", results)
    monkeypatch.setattr(bench.append_result, "__defaults__", (results,))
    # The test session has 8 fake CPU devices: 4 rows over fsdp=4, heads over tensor=2.
    code = bench.main(["train", "--json", "--config", str(config), "--override", "mesh.fsdp=4",
                       "--override", "mesh.tensor=2", "--override", "optimizer.clip_norm=1.0",
                       "--steps", "2"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 1
    row = rows[0]
    for key in ("name", "config", "hardware", "versions", "figure", "baseline", "baseline_name",
                "compile_s", "step_s", "step_times_s", "baseline_step_s", "params", "mfu"):
        assert key in row, key
    assert row["benchmark"] == "train" and row["name"] == "train/tiny"
    assert row["tokens_per_step"] == 4 * 32
    assert row["params"] == row["baseline_params"] > 0  # the same model on both sides
    assert row["compile_s"] > 0 and row["step_s"] > 0 and row["baseline_step_s"] > 0
    assert len(row["step_times_s"]) == len(row["baseline_step_times_s"]) == 2
    assert row["tokens_per_s"] > 0 and row["baseline_tokens_per_s"] > 0
    # The ratio is recorded to 2 decimals.
    assert row["ratio"] == pytest.approx(row["tokens_per_s"] / row["baseline_tokens_per_s"], abs=0.0051)
    assert row["mfu"] is None  # CPU: no published peak
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 2}" in row["config"]
    table = results.read_text().splitlines()
    assert table[0] == "# Benchmark results" and len([r for r in table if r.startswith("| 20")]) == 1
    assert "tokens/s" in table[-1] and "| train |" in table[-1]


def test_overrides_are_typed_and_checked():
    from lima_jax.train.bench import load_config, model_config

    c = load_config(None, ["model.preset=100m", "data.max_len=256", "optimizer.b2=0.99"])
    assert (c.model.preset, c.data.max_len, c.optimizer.b2) == ("100m", 256, 0.99)
    assert model_config(c).vocab_size == 32000 and model_config(c).residual_dropout == 0.0
    with pytest.raises(LimaError, match="nope"):
        load_config(None, ["model.nope=1"])
    with pytest.raises(LimaError, match="model.preset"):
        load_config(None, ["model.preset=nope"])


def test_a_bad_override_is_one_error_line(capsys):
    assert bench.main(["train", "--no-record", "--override", "data.max_len=abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "data.max_len" in err and "\n" not in err


def test_train_bench_lora_row_against_peft(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench, "RESULTS", results)
    monkeypatch.setattr(bench.append_result, "__defaults__", (results,))
    code = bench.main(["train", "--json", "--config", str(config), "--override", "mesh.fsdp=4",
                       "--override", "mesh.tensor=2", "--override", "lora.rank=4",
                       "--override", "lora.alpha=8.0", "--steps", "1", "--rounds", "1",
                       "--torch-threads", "1"])
    assert code == 0
    row = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][0])
    assert row["lora"] == {"rank": 4, "alpha": 8.0, "dropout": 0.05,
                           "targets": ["q", "k", "v", "o", "gate", "up", "down"]}
    # The same adapters on both sides: ours on the stacked layers, peft's on each nn.Linear.
    assert row["params"] == row["baseline_params"] > row["trainable_params"]
    assert row["trainable_params"] == row["baseline_trainable_params"] > 0
    assert "peft" in row["baseline_name"] and "LoRA rank 4" in row["config"]
    assert row["tokens_per_s"] > 0 and row["baseline_tokens_per_s"] > 0
    assert "peft LoRA" in results.read_text().splitlines()[-1]


def test_only_names_the_default_measurements(capsys):
    from lima_jax.train.bench import DEFAULT_MEASUREMENTS

    labels = [m[0] for m in DEFAULT_MEASUREMENTS]
    assert labels == ["demo", "100m", "100m-lora"]
    lora = dict((m[0], m[2]) for m in DEFAULT_MEASUREMENTS)["100m-lora"]
    assert "lora.rank=8" in lora and "lora.targets=q,k,v,o,gate,up,down" in lora
    assert bench.main(["train", "--no-record", "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--only nope" in err and "100m-lora" in err
