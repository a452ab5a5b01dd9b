"""`python -m lima_jax.bench gpu` (lima_jax/kernels/gpu_suite.py): it refuses on CPU; its --smoke
run gives a complete row for every part; a spent budget skips every part with a row; the setup
step installs only what fails to import; and the rows only a GPU produces (cuDNN, MFU, HBM
bandwidth) are built right from made-up measurements."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from lima_jax import bench
from lima_jax.kernels import BlockSizes, gpu_suite
from lima_jax.model import get_preset
from tests.conftest import REPO_ROOT

ROW_KEYS = {"name", "benchmark", "part", "config", "figure", "baseline", "ratio", "goal", "goal_met",
            "record", "hardware", "versions"}


@pytest.fixture(autouse=True)
def _no_setup_left_over():
    yield
    gpu_suite._SETUP.clear()  # install_missing keeps its outcome for the next run()


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gpu_suite.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_refuses_without_a_gpu_in_one_line(capsys):
    assert bench.main(["gpu", "--no-record"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench gpu: no GPU here") and "--smoke" in err and "\n" not in err


def test_smoke_run_gives_a_row_for_every_part():
    # One CPU device (not the session's 8) and XLA's quickest compiles: only the code paths matter.
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lima_jax.bench", "gpu", "--smoke", "--no-record", "--json"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(f"smoke run: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(done.stdout)
    assert [r["part"] for r in rows] == ["setup", *["check"] * 4, "attention", "attention", "decode", "decode",
                                         "train_1b", "train_7b", "summary"]
    for row in rows:
        assert ROW_KEYS <= set(row), (row["name"], ROW_KEYS - set(row))
        assert row["benchmark"] == "gpu" and row["record"] is False
        assert "error" not in row and "skipped" not in row, row["name"]
        if row["goal"] is not None:
            assert isinstance(row["goal_met"], bool)
    checks = [r for r in rows if r["part"] == "check"]
    assert all(r["goal_met"] and max(r["errors"].values()) <= 2e-2 for r in checks)
    assert any("packed" in r["name"] and "K2" in r["name"] for r in checks)  # packed GQA
    unpacked, packed = [r for r in rows if r["part"] == "attention"]
    assert unpacked["implementations"]["cudnn"] == {"unavailable": "no cuDNN on cpu"}
    assert unpacked["baseline"].startswith("cudnn unavailable") and unpacked["goal_met"] is False
    assert unpacked["ratio_vs_xla"] > 0 and not unpacked["errors"]
    assert packed["baseline"].startswith("xla with a [B, 1, T, T] mask") and packed["ratio"] > 0
    b1, b64 = [r for r in rows if r["part"] == "decode"]
    assert (b1["batch"], b64["batch"]) == (1, 64) and b1["tokens_per_s"] > 0 and b64["tokens_per_s"] > 0
    assert b1["goal"] and b1["goal_met"] is False and b1["bandwidth_utilisation"] is None  # no HBM figure
    assert b64["goal"] is None and b64["bytes_per_step"] > b1["bytes_per_step"]
    for row in rows:
        if row["part"].startswith("train"):
            assert len(row["candidates"]) == 2 and all("error" not in c for c in row["candidates"])
            assert row["tokens_per_s"] > 0 and row["mfu"] is None and row["ratio"] > 0
    assert rows[-1]["within_budget"] is True


def test_a_spent_budget_skips_every_part_with_a_row(capsys):
    assert bench.main(["gpu", "--smoke", "--no-record", "--json", "--budget", "0"]) == 0
    rows = _rows(capsys.readouterr().out)
    skipped = {r["part"]: r for r in rows if r["name"].endswith("/skipped")}
    assert set(skipped) == {"check", "attention", "decode", "train_1b", "train_7b"}
    assert len(skipped["check"]["skipped"]) == 4 and skipped["decode"]["skipped"] == ["model", "batch 1",
                                                                                      "batch 64"]
    assert skipped["train_7b"]["goal_met"] is False and "time budget" in skipped["train_7b"]["figure"]
    assert [r["part"] for r in rows if not r["name"].endswith("/skipped")] == ["setup", "summary"]


def test_setup_installs_only_what_fails_to_import():
    calls = []

    def importer(name):
        if name == "grain":
            raise ImportError("No module named 'grain'")

    def runner(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    setup = gpu_suite.install_missing([], importer=importer, runner=runner, platform="gpu")
    assert setup["missing"] == ["grain"] and setup["installed"] is True
    assert calls[0][0] == sys.executable and calls[0][1:4] == ["-m", "pip", "install"] and calls[0][-1] == "grain"
    assert gpu_suite._setup_row(setup, True)["figure"].startswith("installed grain")
    calls.clear()
    gpu_suite.install_missing([], importer=importer, runner=runner, platform="cpu")  # the run will refuse
    gpu_suite.install_missing(["--smoke"], importer=lambda name: None, runner=runner, platform="cpu")
    assert not calls
    failed = gpu_suite.install_missing(
        [], importer=importer, platform="gpu",
        runner=lambda command, **kwargs: subprocess.CompletedProcess(command, 1, "", "ERROR: no network"))
    assert failed["installed"] is False
    assert "failed: ERROR: no network" in gpu_suite._setup_row(failed, True)["figure"]


def test_the_gpu_plan():
    plan = gpu_suite.Plan.from_args(_args())
    assert plan.lengths == (2048, 4096, 8192) and (plan.n, plan.k, plan.h) == (32, 8, 128)
    assert len(plan.check_shapes) == 4 and any(s.packed and s.k < s.n for s in plan.check_shapes)
    assert plan.candidates[0] == gpu_suite.Candidate("none", "cudnn")  # what a GPU run config gives
    assert gpu_suite.Candidate("none", "pallas", BlockSizes(128, 128, 32, 128, 128, 32)) in plan.candidates
    assert [m.preset for m in plan.train_models] == ["llama3.2-1b", "llama2-7b"]
    assert "model.n_layers=8" in plan.train_models[1].overrides
    assert (plan.train_length, plan.train_rows, plan.decode_batches) == (2048, 8, (1, 64))
    from lima_jax.train.bench import load_config, model_config  # the candidates' configs are valid

    for train_model in plan.train_models:
        for candidate in plan.candidates:
            config = load_config(None, gpu_suite.candidate_overrides(train_model, candidate, plan))
            assert model_config(config).attention == candidate.attention
    assert model_config(config).n_layers == 8 and model_config(config).dim == 4096
    with pytest.raises(gpu_suite.GpuSuiteError, match="block-sizes"):
        gpu_suite.Plan.from_args(_args("--block-sizes", "96,64"))


def _timing(impl, label, tflops):
    return {"impl": impl, "pass": label, "tflops": tflops, "seconds": 1 / tflops, "compile_s": 1.0,
            "temp_bytes": 0, "batch": 2}


def test_attention_rows_against_cudnn_and_the_best_masked_alternative():
    plan = gpu_suite.Plan.from_args(_args())
    results = [_timing(i, p, f) for p in ("fwd", "fwd+bwd") for i, f in (("pallas", 450), ("cudnn", 480), ("xla", 150))]
    row = gpu_suite._attention_row(results, 8192, plan, False, "gpu", True, 3.0)
    assert row["ratio"] == pytest.approx(450 / 480, abs=1e-3) and row["goal_met"] is True
    assert row["baseline"].startswith("cudnn 480") and row["ratio_vs_xla"] == 3.0
    results = [_timing(i, p, f) for p in ("fwd", "fwd+bwd") for i, f in (("pallas", 300), ("xla", 100))]
    results.append({"impl": "cudnn", "pass": "fwd+bwd", "error": "XlaRuntimeError: mask unsupported"})
    row = gpu_suite._attention_row(results, 8192, plan, True, "gpu", True, 3.0)
    assert row["baseline"].startswith("xla with a [B, 1, T, T] mask 100") and row["ratio"] == 3.0
    assert row["goal_met"] is True and row["errors"] == {"cudnn fwd+bwd": "XlaRuntimeError: mask unsupported"}


def test_train_and_decode_rows_with_a_known_peak():
    plan = gpu_suite.Plan.from_args(_args())
    model = plan.train_models[1]
    result = lambda label, tps, mfu: {"candidate": label, "tokens_per_s": tps, "mfu": mfu, "step_s": 16384 / tps,
                                      "params": 1, "shape": "D 4096"}
    tried = [result("remat none, attention cudnn", 8000.0, 0.40),
             {"candidate": "remat none, attention pallas", "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"},
             result("remat dots, attention cudnn", 9400.0, 0.47)]
    row = gpu_suite.train_row(model, plan, tried, True)
    assert row["goal_met"] is True and row["mfu"] == 0.47 and row["ratio"] == pytest.approx(1.175)
    assert row["best"] == "remat dots, attention cudnn" and row["name"] == "gpu/train_7b/llama2-7b-8-layers"
    tried[2]["mfu"] = 0.30
    assert gpu_suite.train_row(model, plan, tried[:1] + tried[2:], True)["goal_met"] is False

    timing = {"decode_s": 0.256, "prefill_s": 0.01, "compile_s": 5.0}  # 256 steps of 1 ms
    config = get_preset("llama3.2-1b", dtype="bfloat16", param_dtype="bfloat16")
    row = gpu_suite.decode_row(plan, config, 1, timing, int(4.0e9), 4.8e12, True, "1235.8M params")
    assert row["bandwidth_utilisation"] == pytest.approx(4.0e9 / 1e-3 / 4.8e12, abs=1e-4)
    assert row["goal_met"] is True and row["tokens_per_s"] == 1000.0 and "HBM roofline" in row["baseline"]


def test_the_budget_clock_and_block_sizes():
    clock = gpu_suite.PartClock(time.time() + 5, time.time() + 100, first_estimate_s=50)
    assert clock.allows("first")  # the first item needs only the whole budget
    clock.durations.append(10.0)
    assert not clock.allows("second") and clock.skipped == ["second"]  # 10 s > the 5 s left in the part
    module = sys.modules["lima_jax.kernels.flash_attention"]
    original, blocks = module.default_block_sizes, BlockSizes(*(32,) * 6)
    with gpu_suite.kernel_block_sizes(blocks):
        assert module.default_block_sizes("gpu", 128) is blocks
    assert module.default_block_sizes is original
