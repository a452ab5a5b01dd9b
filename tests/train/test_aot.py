"""The pod plan check: an ahead-of-time compile of the real train step for a TPU slice
on this CPU machine (libtpu's topology description; no TPU), with per-chip memory, the step's
cost from XLA's cost analysis (loops counted) and the run's estimate."""

from __future__ import annotations

import importlib.util

import pytest

from lima_jax.train.aot import compile_plan, format_plan, slice_topology
from lima_jax.train.config import RunConfigError, get_base_config

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason='libtpu is not installed (pip install -e ".[tpu]")')


@needs_libtpu
@pytest.mark.parametrize("name, chips, kind", [("v5e-8", 8, "TPU v5 lite"), ("v4-8", 4, "TPU v4"),
                                               ("v5p-128", 64, "TPU v5")])
def test_slice_names_give_their_devices(name, chips, kind):
    devices = slice_topology(name).devices
    assert len(devices) == chips and devices[0].device_kind == kind


@pytest.mark.parametrize("name", ["v9-8", "v5p", "v5e-6"])
def test_bad_slice_names_are_refused(name):
    with pytest.raises(RunConfigError, match="config.topology"):
        slice_topology(name)


@needs_libtpu
def test_a_1b_train_step_compiles_for_v5e_8_and_fits():
    c = get_base_config()
    c.compile_only = True
    c.topology = "v5e-8"
    c.model.preset = "llama3.2-1b"
    c.model.remat = "full"
    c.data.global_batch_size = 8
    c.data.max_len = 2048
    report = compile_plan(c)
    print(format_plan(report))
    assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert report["hbm_gib"] == 16
    # float32 weights + Adam moments of 1.24B parameters over 8 chips: ~1.7 GiB each.
    assert 1.5 < report["per_device_gib"]["arguments"] < 2.0
    assert report["fits"] is True
    # remat full recomputes the forward pass; the Pallas attention kernels are not in XLA's count.
    assert 1.0 < report["step_cost"]["xla_over_model_flops"] < 1.4
    assert report["step_cost"]["roofline"]["bound_s"] > 0 and report["step_cost"]["step_s"] > 0
    assert "no data.path" in report["run_estimate"]["unknown"]


# ---------------------------------------------------------------------------- the run estimate


def _cpu_plan_config(**data):
    """A small model whose step is almost all matmuls (wide layers, short rows, no remat)
    compiled for the 8 local CPU devices; its layers are scanned, as the real models' are."""
    c = get_base_config()
    c.compile_only = True
    c.model.preset = "small"
    c.model.dim, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 512, 4, 8, 8
    c.model.mlp_dim = 1536
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.model.attention = "xla"
    c.data.global_batch_size, c.data.max_len, c.data.num_epochs = 16, 128, 3
    for key, value in data.items():
        c.data[key] = value
    return c


@pytest.fixture(scope="module")
def cpu_plan():
    return compile_plan(_cpu_plan_config())


def test_cost_analysis_flops_agree_with_the_analytic_count(cpu_plan):
    step = cpu_plan["step_cost"]
    # XLA reports the partitioned program of one device: x 8 devices is the whole step, within
    # 10% of 6 x matmul params x tokens + causal attention (XLA computes the whole [T, T] scores).
    assert cpu_plan["devices"] == 8
    assert step["flops_per_device"] * 8 == pytest.approx(step["model_flops"], rel=0.10)
    assert step["xla_over_model_flops"] == pytest.approx(1.0, abs=0.10)
    # cost_analysis() itself counts the scanned layers' body once (forward and backward scans).
    assert 4 in step["loop_trip_counts"] and step["uncounted_loops"] == 0
    assert step["xla_flops_per_device"] < 0.6 * step["flops_per_device"]
    assert step["bytes_accessed_per_device"] > step["xla_bytes_accessed_per_device"] > 0


def test_the_plan_check_estimates_the_run_without_data(cpu_plan):
    run = cpu_plan["run_estimate"]
    # No data.path: the steps are unknown and say why; what does not need them is there.
    assert run["steps_per_epoch"] is None and run["total_s"] is None
    assert "no data.path" in run["unknown"]
    assert run["full_state_bytes"] == run["parameter_bytes"] + run["optimizer_state_bytes"] + 8 + 4  # + step, rng
    assert run["snapshot_bytes"] == 2 * run["parameters"] and run["export_bytes"] == 2 * run["parameters"]
    assert run["breakdown"]["weights_load_s"] == 0.0  # from scratch
    text = format_plan(cpu_plan)
    assert "steps per epoch unknown: no data.path" in text and "plan:   total" in text


def test_a_lora_plan_shows_the_optimizer_state_at_the_adapters_size(cpu_plan):
    from lima_jax.train.aot import format_plan

    c = _cpu_plan_config()
    c.lora.rank, c.lora.alpha = 8, 16.0  # all seven targets; the new EOT's rows train too
    lora = compile_plan(c)
    full, small = cpu_plan["train_state"], lora["train_state"]
    assert full["lora"] is None and full["trainable_parameters"] == full["parameters"]
    assert small["lora"].startswith("LoRA rank 8") and small["parameters"] == full["parameters"]
    assert 0 < small["trainable_parameters"] < 0.03 * small["parameters"]
    # AdamW: two float32 moments of every trainable parameter (+ its two int32 step counters),
    # in all and on each device (the moments are sharded like their adapters).
    counters = full["optimizer_state_bytes"] - 2 * full["trainable_bytes"]
    assert 0 < counters <= 16
    assert small["optimizer_state_bytes"] == 2 * small["trainable_bytes"] + counters
    assert small["optimizer_state_bytes_per_device"] == 2 * small["trainable_bytes_per_device"] + counters
    assert small["optimizer_state_bytes"] < 0.05 * full["optimizer_state_bytes"]
    assert small["optimizer_state_bytes_per_device"] < 0.15 * full["optimizer_state_bytes_per_device"]
    assert lora["per_device_gib"]["arguments"] < 0.6 * cpu_plan["per_device_gib"]["arguments"]
    # A LoRA checkpoint holds the adapters and their optimizer state, not the frozen base; the
    # export is the merged model.
    run = lora["run_estimate"]
    assert run["full_state_bytes"] == small["trainable_bytes"] + small["optimizer_state_bytes"] + 8 + 4
    assert run["snapshot_bytes"] == 2 * small["trainable_parameters"]
    assert run["export_bytes"] == cpu_plan["run_estimate"]["export_bytes"] == 2 * full["parameters"]
    # No weight gradient of the frozen base: 4 FLOPs per frozen matmul parameter, not 6.
    step, full_step = lora["step_cost"], cpu_plan["step_cost"]
    assert step["model_flops"] < 0.75 * full_step["model_flops"]
    assert step["flops_per_device"] < full_step["flops_per_device"]
    text = format_plan(lora)
    assert "trainable (LoRA rank 8" in text and "optimizer state" in text and "adapters-only snapshot" in text


def test_the_plan_check_estimates_the_run_from_the_data_plan(shared_data, monkeypatch, tmp_path):
    from lima_jax.chips import Chip
    from lima_jax.train import aot

    # CPUs have no peak in lima_jax.chips: lend them one, so every figure is known.
    monkeypatch.setattr(aot, "chip", lambda kind: Chip("cpu", 1e12, 1e11, 16))
    c = _cpu_plan_config(path=str(shared_data / "lima/train.jsonl"), global_batch_size=32,
                         tokenizer=str(shared_data / "tokenizer/llama/tokenizer.model"))
    c.data.max_len = 2048  # the recipe's rows: no example is trimmed or dropped
    c.model.n_layers, c.model.max_seq_len = 1, 2048
    c.model.init_from = str(tmp_path / "absent")  # not here: 2 bytes a parameter
    c.checkpoint.keep_epochs_from, c.checkpoint.keep_epochs_to = 2, 3
    c.plan.storage_gbps = 0.001  # 1 MB/s: checkpoints that take time
    report = compile_plan(c)
    print(format_plan(report))
    run = report["run_estimate"]
    # LIMA's 1,030 training examples, one a row, 32 rows a step: 33 steps, in each of 3 epochs.
    assert run["steps_per_epoch"] == [33, 33, 33] and run["epochs"] == 3 and run["unknown"] is None
    step_s = report["step_cost"]["model_flops"] / (8 * 1e12 * 0.5)
    assert run["step_s"] == pytest.approx(step_s) and run["compute_s"] == pytest.approx(99 * step_s)
    assert run["saves"] == {"full_state": 1, "snapshot": 2}
    assert run["bytes_written"] == pytest.approx(run["full_state_bytes"] + 3 * run["snapshot_bytes"])
    assert run["bytes_written_full_state_policy"] == pytest.approx(
        3 * run["full_state_bytes"] + run["snapshot_bytes"])
    assert run["checkpoint_s"] >= run["full_state_write_s"]  # the end waits for the last save
    b = run["breakdown"]
    assert b["weights_load_s"] == pytest.approx(2 * run["parameters"] / 1e6)
    assert run["total_s"] == pytest.approx(sum(b.values()))
    assert report["run_estimate_inputs"]["storage_gbps"] == 0.001
    # Packed rows: fewer steps, same checkpoints.
    c.data.pack = True
    steps, reason = aot.data_steps_per_epoch(c)
    assert reason == "" and max(steps) < 33


def test_plan_keys_are_validated():
    from lima_jax.train.config import validate_config

    for key, value in (("mfu", 0.0), ("mfu", 1.5), ("storage_gbps", -1.0)):
        c = get_base_config()
        c.compile_only = True
        c.plan[key] = value
        with pytest.raises(RunConfigError, match=f"config.plan.{key}"):
            validate_config(c)


def test_the_65b_qlora_recipe_is_lima_65b_with_nf4_adapters():
    import pathlib

    from lima_jax.cli import load_config
    from lima_jax.train.config import validate_config

    configs = pathlib.Path(__file__).resolve().parents[2] / "configs"
    qlora, full = load_config(str(configs / "lima_65b_qlora.py")), load_config(str(configs / "lima_65b.py"))
    assert (qlora.lora.rank, qlora.lora.alpha, qlora.lora.dropout, qlora.lora.base_dtype) == (16, 32.0, 0.05, "nf4")
    assert qlora.lora.targets == "q,k,v,o,gate,up,down"
    assert (qlora.model.preset, qlora.data.max_len, qlora.data.num_epochs) == ("llama1-65b", 2048, 15)
    assert qlora.model.residual_dropout == full.model.residual_dropout == 0.3
    # LIMA's batch of 32 as micro-batches of 8 rows: 2 a chip on v5p-8 (4 chips), 1 on v5e-8.
    assert qlora.data.global_batch_size == 32 and qlora.train.grad_accum_steps == 4
    for topology in ("v5p-8", "v5e-8"):
        qlora.compile_only, qlora.topology = True, topology
        validate_config(qlora)
