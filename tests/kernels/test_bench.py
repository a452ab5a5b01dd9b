"""`python -m lima_jax.bench attention`: refuses to time kernels on CPU; its --smoke mode
runs the whole benchmark on tiny shapes and produces complete, unrecorded rows."""

from __future__ import annotations

import json

import pytest

from lima_jax import bench


def test_attention_bench_refuses_cpu_timing():
    with pytest.raises(SystemExit, match="no GPU or TPU here"):
        bench.main(["attention", "--no-record"])


def test_attention_bench_smoke_rows(capsys):
    assert bench.main(["attention", "--smoke", "--json", "--no-record"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["pass"], " packed " in r["name"]) for r in rows] == [
        ("fwd", False), ("fwd+bwd", False), ("fwd", True), ("fwd+bwd", True)]
    for row in rows:
        assert row["record"] is False and not row["errors"]
        assert set(row["implementations"]) == {"pallas", "xla"}
        assert row["figure"].endswith("TFLOP/s") and row["ratio"] > 0
        assert row["implementations"]["pallas"]["tflops"] > 0
    assert rows[2]["baseline"].startswith("xla (masked)")
