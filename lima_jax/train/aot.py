"""Ahead-of-time compiles of the real train step for a TPU slice, from a CPU machine.

`python -m lima_jax.train --config configs/lima_65b.py --config.compile_only=True
--config.topology=v5p-64` builds the slice's devices from libtpu's topology
description (no TPU needed; `pip install -e ".[tpu]"`), compiles the trainer's own
sharded step (`compile_train_step`) for them with abstract arrays only, and reports the
per-chip memory from `memory_analysis()` against the chip's HBM (`lima_jax.chips`):
whether the plan fits, before anyone books the pod.

It also says how long the run would take (`lima_jax.train.run_estimate`): the step's FLOPs and
HBM bytes per device from XLA's cost analysis of the compiled, partitioned program (with each
while loop's body counted its trip count times: `loop_counted_cost`), the roofline step time
they imply, the step time at `config.plan.mfu` from the analytic model FLOPs, the steps of each
epoch from the real data plan (when the data and tokenizer can be read), the bytes of each kind
of checkpoint, and the run's wall clock with its breakdown at `config.plan.storage_gbps`.

With LoRA (`config.lora.rank` > 0) the step compiled is the LoRA step (adapters on a frozen,
possibly quantized base, `lima_jax.train.state.with_lora`), and the report says what that
changes (`train_state`): the trainable parameters, and the bytes of the parameters, the
trainable ones and the optimizer state, in all and per chip (from each leaf's sharding), so the
optimizer state shows at the adapters' size. The model FLOPs of a LoRA step count no weight
gradient of the frozen base (4 FLOPs per frozen matmul parameter and token, 6 per trainable one,
`model_flops_per_token`), and its checkpoints hold the adapters and their optimizer state only
(the frozen base is read again from model.init_from).
"""

from __future__ import annotations

import math
import os
import pathlib
import re

import jax
import ml_collections
import numpy as np

from lima_jax import sharding as sharding_lib
from lima_jax.chips import chip, hbm_gib
from lima_jax.errors import LimaError
from lima_jax.model.presets import get_preset
from lima_jax.train import run_estimate as run_model
from lima_jax.train.config import RunConfigError, model_config_overrides, use_model_tokenizer
from lima_jax.train.hlo_cost import loop_counted_cost
from lima_jax.train.state import with_lora
from lima_jax.train.state_sizes import (
    leaf_count,
    matmul_parameters,
    model_flops_per_token,
    plain_parameters,
    train_state_sizes,
    tree_bytes,
)
from lima_jax.train.step import compile_train_step

# generation -> (libtpu name prefix, chip config, TensorCores per chip, 3-D torus)
_GENERATIONS = {
    "v4": ("v4", "megacore", 2, True),
    "v5p": ("v5", "megacore", 2, True),
    "v5e": ("v5e", "default", 1, False),
    "v5litepod": ("v5e", "default", 1, False),
    "v6e": ("v6e", "default", 1, False),
}


def _libtpu_environment() -> None:
    """Lets libtpu load beside other processes and skip looking for a real TPU host.
    Only defaults: a real TPU VM's own values are kept."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def slice_topology(name: str):
    """The TopologyDescription of a slice named like Cloud TPU does (v4-8, v5p-128, v5e-16).

    v4 and v5p names count TensorCores (two per chip) and form 3-D tori; v5e and v6e
    names count chips on a 2-D grid.
    """
    try:
        generation, size = name.rsplit("-", 1)
        prefix, chip_config, cores_per_chip, torus_3d = _GENERATIONS[generation]
        chips = int(size) // cores_per_chip
    except (KeyError, ValueError):
        raise RunConfigError(
            "topology", f"{name!r} is not a TPU slice name such as v4-8, v5p-128 or v5e-16 "
                        f"(generations: {', '.join(_GENERATIONS)})") from None
    if chips < 1 or chips & (chips - 1):
        raise RunConfigError("topology", f"{name!r}: the chip count {chips} must be a power of two")
    if torus_3d:
        if chips <= 4:
            dims = {1: (1, 1, 1), 2: (1, 2, 1), 4: (2, 2, 1)}[chips]
        else:
            dims, axis = [1, 1, 1], 2
            while math.prod(dims) < chips:
                dims[axis] *= 2
                axis = (axis - 1) % 3
            dims = tuple(dims)
        host_bounds = (2, 2, 1) if chips >= 4 else (dims[0], dims[1], 1)
        wrap = (chips >= 64,) * 3
    else:
        side = 2 ** (int(math.log2(chips)) // 2)
        dims = (side, chips // side)
        host_bounds = (dims[0], dims[1], 1) if chips <= 8 else (2, 2, 1)
        wrap = (dims[0] == 16, dims[1] == 16, False)
    _libtpu_environment()
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(
            platform="tpu", topology_name=f"{prefix}:" + "x".join(map(str, dims)),
            chip_config_name=chip_config, chips_per_host_bounds=host_bounds, wrap=wrap)
    except Exception as err:  # noqa: BLE001 - libtpu missing or refusing the shape
        raise RunConfigError(
            "topology", f"cannot build {name!r} ({err}); ahead-of-time TPU compiles need libtpu: "
                        'pip install -e ".[tpu]"') from None


# ---------------------------------------------------------------------------- the run's inputs


def data_steps_per_epoch(config: ml_collections.ConfigDict) -> tuple[list[int] | None, str]:
    """(the steps of each epoch, '') from the real data plan (`config.data` with its tokenizer,
    packed or not, as `count_steps` plans it), or (None, why not) when the data or the tokenizer
    cannot be read."""
    from lima_jax.data.pipeline import plan_from_config, prepare_examples

    if not config.data.path:
        return None, "no data.path"
    if config.data.path.startswith("generated:"):
        return None, f"data.path {config.data.path} is written by the run itself"
    resolved = ml_collections.ConfigDict(config.to_dict())
    try:
        use_model_tokenizer(resolved)  # data.tokenizer '' -> model.init_from's, as a run takes it
    except LimaError as err:
        return None, str(err)
    data = resolved.data
    if not data.tokenizer:
        if data.train_tokenizer.vocab_size > 0:
            return None, "data.train_tokenizer: the plan check does not train a tokenizer"
        return None, "data.tokenizer is '' and model.init_from is not set"
    data.worker_count = 0
    try:
        _, examples, _ = prepare_examples(data)
        return list(plan_from_config(data, examples).steps_per_epoch), ""
    except (LimaError, OSError, ValueError) as err:
        return None, f"the data plan could not be made: {err}"


def _weights_load_bytes(init_from: str, parameters: int) -> tuple[float, str]:
    """(bytes to read for model.init_from, how they were found): the files' sizes when it is a
    local directory, else 2 bytes a parameter (a bfloat16/float16 checkpoint, as LLaMA's are)."""
    if not init_from:
        return 0.0, "none (from scratch)"
    path = pathlib.Path(init_from)
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file()]
        for suffixes in ((".safetensors",), (".bin", ".pth", ".pt"), None):  # HF, Meta, else orbax
            chosen = [f for f in files if suffixes is None or f.suffix in suffixes]
            if chosen:
                return float(sum(f.stat().st_size for f in chosen)), f"the files under {init_from}"
    return 2.0 * parameters, "2 bytes a parameter (a 16-bit checkpoint)"


# ---------------------------------------------------------------------------- the plan check


def compile_plan(config: ml_collections.ConfigDict) -> dict:
    """Compiles the train step for `config.topology` (or the local devices) and returns the
    per-device memory report, the step's cost and the run's estimate."""
    if config.topology:
        devices = slice_topology(config.topology).devices
    else:
        devices = jax.devices()
    mesh = sharding_lib.make_mesh(dict(config.mesh), devices)
    shape = dict(mesh.shape)

    # No data nor tokenizer is read to compile: the vocabulary is the preset's, plus LIMA's EOT
    # token when the run appends one (config.data.eot: auto means a new one for every template but
    # chat).
    preset = get_preset(config.model.preset)
    new_eot = config.data.eot == "new" or (config.data.eot == "auto" and config.data.template != "chat")
    vocab = dict(vocab_size=preset.vocab_size + 1, eot_token_id=preset.vocab_size) if new_eot else {}
    model_config = preset.replace(**vocab, **model_config_overrides(config))
    # LoRA: the new end of turn's rows train beside the adapters, as in a run.
    model_config = with_lora(config, model_config, trained_token_ids=(preset.vocab_size,) if new_eot else ())
    # The schedule's length changes only learning-rate values, not what is compiled.
    sharded = compile_train_step(config, model_config, mesh, total_steps=1000)
    b, t = config.data.global_batch_size, config.data.max_len
    kind = devices[0].device_kind
    try:
        compiled = sharded.compile(sharded.abstract_state, sharded.abstract_batch(b, t))
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        # The TPU compiler refuses a program that cannot fit: that is the plan check's answer.
        return {
            "topology": config.topology or f"local {kind}", "device_kind": kind, "devices": len(devices),
            "mesh": shape, "model": config.model.preset, "parameters": matmul_parameters(model_config),
            "global_batch": f"{b} x {t}, {config.train.grad_accum_steps} micro-batches",
            "remat": config.model.remat, "attention": config.model.attention, "pallas_kernels": [],
            "compile_s": None, "per_device_gib": None, "hbm_gib": hbm_gib(kind), "fits": False,
            "compile_error": str(err).strip().splitlines()[0],
            "train_state": train_state_sizes(sharded, model_config),
        }
    kernels = sorted(set(re.findall(r"lima_flash_attention_\w+", compiled.lowered.as_text())))
    compile_s = compiled.compile_s
    memory = compiled.memory_analysis()
    hbm = hbm_gib(kind)
    peak = getattr(memory, "peak_memory_in_bytes", 0) or (
        memory.argument_size_in_bytes + memory.temp_size_in_bytes)
    report = {
        "topology": config.topology or f"local {kind}",
        "device_kind": kind,
        "devices": len(devices),
        "mesh": shape,
        "model": config.model.preset,
        "parameters": matmul_parameters(model_config),
        "global_batch": f"{b} x {t}, {config.train.grad_accum_steps} micro-batches",
        "remat": config.model.remat,
        "attention": config.model.attention,
        "pallas_kernels": kernels,
        "compile_s": round(compile_s, 1),
        "per_device_gib": {
            "arguments": memory.argument_size_in_bytes / 2**30,
            "temp": memory.temp_size_in_bytes / 2**30,
            "peak": peak / 2**30,
        },
        "hbm_gib": hbm,
        "fits": None if hbm is None else peak / 2**30 <= hbm,
        "train_state": train_state_sizes(sharded, model_config),
    }
    report.update(_step_cost(config, compiled, sharded, model_config, len(devices), kind))
    report.update(_run_estimate(config, sharded, compile_s, report["step_cost"]))
    return report


def _step_cost(config, compiled, sharded, model_config, n_devices: int, kind: str) -> dict:
    """The step's FLOPs and bytes per device (XLA's cost analysis, loops counted), its roofline
    time on the chip, and its time at config.plan.mfu from the analytic model FLOPs."""
    b, t = config.data.global_batch_size, config.data.max_len
    cost = loop_counted_cost(compiled.executable)
    model_flops = model_flops_per_token(model_config, t) * b * t
    entry = chip(kind)
    mfu = float(config.plan.mfu)
    step = {
        "per_device": ("XLA's cost analysis of the partitioned step, per device, each while loop's "
                       "body counted its trip count times"),
        "flops_per_device": cost["flops"],
        "bytes_accessed_per_device": cost["bytes_accessed"],
        "xla_flops_per_device": cost["xla_flops"],  # as cost_analysis() reports it (loop bodies once)
        "xla_bytes_accessed_per_device": cost["xla_bytes_accessed"],
        "loop_trip_counts": cost["loops"],
        "uncounted_loops": cost["uncounted_loops"],
        "loop_count_error": cost.get("loop_count_error"),
        "model_flops": model_flops,  # 6 x matmul params x tokens + causal attention, all devices
        # (LoRA: 4 x frozen + 6 x trainable matmul params: no weight gradient of the frozen base)
        "model_flops_formula": ("4 x frozen + 6 x trainable matmul params x tokens + attention (LoRA)"
                                if model_config.lora else "6 x matmul params x tokens + attention"),
        "xla_over_model_flops": cost["flops"] * n_devices / model_flops,
        "peak_flops_per_device": entry.peak_flops if entry else None,
        "hbm_bandwidth_per_device": entry.hbm_bandwidth if entry else None,
        "mfu": mfu,
        "roofline": None,
        "step_s": None,
    }
    if entry:
        step["roofline"] = run_model.roofline_step_seconds(
            cost["flops"], cost["bytes_accessed"], entry.peak_flops, entry.hbm_bandwidth)
        step["roofline"]["mfu_ceiling"] = model_flops / (
            n_devices * entry.peak_flops * step["roofline"]["bound_s"])
        step["step_s"] = run_model.step_seconds_at_mfu(model_flops, n_devices, entry.peak_flops, mfu)
    return {"step_cost": step}


def _run_estimate(config, sharded, compile_s: float, step: dict) -> dict:
    """The checkpoint sizes, the data plan's steps, and the run's wall clock.

    Under LoRA a checkpoint holds the adapters (and token rows) and their optimizer state, a
    snapshot the adapters: the frozen base is read again from model.init_from (its load is the
    plain model's, 2 bytes a parameter unless the files say otherwise), and the export is the
    merged model's bfloat16 parameters."""
    state = sharded.abstract_state
    lora = sharded.fns.lora
    saved = {**state, "params": sharded.fns.trainable(state["params"])} if lora else state
    parameters = leaf_count(state["params"]) if not lora else plain_parameters(sharded.fns.model_config)
    saved_parameters = leaf_count(saved["params"])  # what a snapshot holds
    snapshot_dtype = config.checkpoint.get("snapshot_dtype", "bfloat16")
    full_state_bytes = tree_bytes(saved)
    snapshot_bytes = saved_parameters * np.dtype(jax.numpy.dtype(snapshot_dtype)).itemsize
    export_bytes = 2 * parameters  # bfloat16 (LoRA: the adapters merged into the base)
    init_bytes, init_source = _weights_load_bytes(config.model.init_from, parameters)
    steps_per_epoch, reason = data_steps_per_epoch(config)
    unknown = []
    if steps_per_epoch is None:
        unknown.append(f"steps per epoch unknown: {reason}")
    if step["step_s"] is None:
        unknown.append(f"step time unknown: no peak FLOP/s for {config.topology or 'this chip'}")
    inputs = dict(
        steps_per_epoch=steps_per_epoch, step_s=step["step_s"], full_state_bytes=full_state_bytes,
        snapshot_bytes=snapshot_bytes, export_bytes=export_bytes, init_bytes=init_bytes,
        compile_s=compile_s, storage_gbps=float(config.plan.storage_gbps),
        policy=config.checkpoint.get("selection", "snapshot"),
        every_steps=int(config.checkpoint.every_steps),
        keep_epochs=(int(config.checkpoint.keep_epochs_from), int(config.checkpoint.keep_epochs_to)),
        max_steps=int(config.train.max_steps), unknown_reason="; ".join(unknown))
    estimate = run_model.estimate_run(**inputs)
    estimate.update(parameters=parameters, parameter_bytes=tree_bytes(state["params"]),
                    saved_parameters=saved_parameters, saved_parameter_bytes=tree_bytes(saved["params"]),
                    optimizer_state_bytes=tree_bytes(state["opt_state"]), lora=lora,
                    snapshot_dtype=snapshot_dtype, weights_load_bytes=init_bytes,
                    weights_load_source=init_source)
    return {"run_estimate": estimate, "run_estimate_inputs": dict(inputs, mfu=step["mfu"])}


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def _si(n: float, unit: str) -> str:
    """3.2 TFLOP, 410.0 GB: decimal prefixes."""
    for power, prefix in ((15, "P"), (12, "T"), (9, "G"), (6, "M"), (3, "k")):
        if abs(n) >= 10**power:
            return f"{n / 10**power:,.1f} {prefix}{unit}"
    return f"{n:,.0f} {unit}"


def format_plan(report: dict) -> str:
    memory = report["per_device_gib"]
    verdict = ("unknown HBM size" if report["fits"] is None
               else "FITS" if report["fits"] else "DOES NOT FIT")
    lines = [
        f"plan: {report['model']} on {report['topology']} ({report['devices']} x "
        f"{report['device_kind']}), mesh {report['mesh']}, batch {report['global_batch']}, "
        f"remat {report['remat']}, attention {report['attention']}"
        + (f" (Pallas: {', '.join(report['pallas_kernels'])})" if report["pallas_kernels"] else ""),
        f"plan: DOES NOT FIT: the compiler refused the step ({report['compile_error']})"
        if report.get("compile_error") else
        f"plan: compiled in {report['compile_s']}s; per device: arguments "
        f"{memory['arguments']:.2f} GiB, temp {memory['temp']:.2f} GiB, peak {memory['peak']:.2f} GiB"
        f" of {report['hbm_gib']} GiB HBM: {verdict}",
    ]
    sizes = report.get("train_state")
    if sizes:
        gib = lambda n: f"{n / 2**30:,.2f} GiB"  # noqa: E731
        lines.append(
            f"plan: train state: {sizes['parameters'] / 1e9:,.2f}B parameters, "
            + (f"{sizes['trainable_parameters'] / 1e6:,.2f}M trainable ({sizes['lora']})"
               if sizes["lora"] else "all trainable (full fine-tuning)")
            + f"; per device: parameters {gib(sizes['param_bytes_per_device'])}"
            + (f" (trainable {gib(sizes['trainable_bytes_per_device'])})" if sizes["lora"] else "")
            + f", optimizer state {gib(sizes['optimizer_state_bytes_per_device'])}; in all: parameters "
            f"{_gb(sizes['param_bytes'])}, optimizer state {_gb(sizes['optimizer_state_bytes'])}")
    step, run = report.get("step_cost"), report.get("run_estimate")
    if not step or not run:
        return "\n".join(lines)
    loops = f", {len(step['loop_trip_counts'])} loops counted x their trips" if step["loop_trip_counts"] else ""
    if step["uncounted_loops"]:
        loops += f" ({step['uncounted_loops']} with an unknown trip count counted once)"
    if step.get("loop_count_error"):
        loops = f", loop bodies counted once ({step['loop_count_error']})"
    lines.append(
        f"plan: step cost per device (XLA cost analysis of the partitioned program{loops}): "
        f"{_si(step['flops_per_device'], 'FLOP')}, {_si(step['bytes_accessed_per_device'], 'B')} "
        f"accessed; x {report['devices']} devices = {step['xla_over_model_flops']:.2f} x the model's "
        f"{_si(step['model_flops'], 'FLOP')} ({step.get('model_flops_formula', '6 x matmul params x tokens + attention')})"
        + ("; Pallas kernels are not in XLA's count" if report["pallas_kernels"] else ""))
    roofline = step["roofline"]
    if roofline:
        lines.append(
            f"plan: step time: roofline bound {roofline['bound_s']:.2f} s ({roofline['bound_by']}: "
            f"{roofline['compute_s']:.2f} s at peak FLOP/s, {roofline['memory_s']:.2f} s at HBM "
            f"bandwidth, XLA's bytes being an upper bound; MFU ceiling {roofline['mfu_ceiling']:.0%}); "
            f"at MFU {step['mfu']:.0%} of the model FLOPs: {step['step_s']:.2f} s"
            + (" (faster than the roofline bound: plan.mfu is above its MFU ceiling)"
               if step["step_s"] < roofline["bound_s"] else ""))
    else:
        lines.append("plan: step time unknown (no peak FLOP/s nor HBM bandwidth for this chip)")
    spe = run["steps_per_epoch"]
    steps = ("unknown" if spe is None else
             f"{run['epochs']} epochs x {spe[0] if len(set(spe)) == 1 else f'{min(spe)}-{max(spe)}'}"
             f" = {sum(spe)} steps" + (f" (cut to {run['steps']})" if run["steps"] != sum(spe) else ""))
    lines.append(f"plan: data: {steps}" + (f" ({run['unknown']})" if run["unknown"] else ""))
    lines.append(
        f"plan: checkpoints at {run['storage_gbps']:g} GB/s: full train state"
        + (" (adapters + their optimizer state; the frozen base is read again from model.init_from)"
           if run.get("lora") else "")
        + f" {_gb(run['full_state_bytes'])} ({run['full_state_write_s']:.0f} s to write), "
        f"{'adapters-only' if run.get('lora') else 'parameters-only'} "
        f"snapshot ({run['snapshot_dtype']}) {_gb(run['snapshot_bytes'])} "
        f"({run['snapshot_write_s']:.0f} s); policy {run['policy']}"
        + (f": {run['saves'][run_model.FULL]} full, {run['saves'][run_model.SNAPSHOT]} snapshots, "
           f"{_gb(run['bytes_written'])} written with the export (full-state policy: "
           f"{_gb(run['bytes_written_full_state_policy'])})" if run["saves"] else ""))
    duration = run_model.format_duration
    rows = [("weights load", run["breakdown"]["weights_load_s"], run["weights_load_source"]),
            ("compile", run["breakdown"]["compile_s"], "measured here"),
            ("compute", run["compute_s"], f"steps x {duration(step['step_s'])} at MFU {step['mfu']:.0%}"),
            ("checkpoints", run["checkpoint_s"], "writes not overlapping compute"
             + (f" (blocked {duration(run['stall_s'])}, final wait {duration(run['final_wait_s'])})"
                if run["stall_s"] is not None else "")),
            ("export", run["breakdown"]["export_s"],
             "bfloat16 parameters" + (", the adapters merged" if run.get("lora") else "")),
            ("total", run["total_s"], "" if run["total_s_full_state_policy"] is None else
             f"full-state policy: {duration(run['total_s_full_state_policy'])}")]
    lines.append("plan: run estimate")
    lines += [f"plan:   {name:<13}{duration(value):>14}   {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)
