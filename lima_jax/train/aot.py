"""Ahead-of-time compiles of the real train step for a TPU slice, from a CPU machine.

`python -m lima_jax.train --config configs/lima_65b.py --config.compile_only=True
--config.topology=v5p-64` builds the slice's devices from libtpu's topology
description (no TPU needed; `pip install -e ".[tpu]"`), compiles the trainer's own
sharded step (`compile_train_step`) for them with abstract arrays only, and reports the
per-chip memory from `memory_analysis()` against the chip's HBM (`lima_jax.chips`):
whether the plan fits, before anyone books the pod.
"""

from __future__ import annotations

import math
import os
import re

import jax
import ml_collections

from lima_jax import sharding as sharding_lib
from lima_jax.chips import hbm_gib
from lima_jax.model.presets import get_preset
from lima_jax.train.config import RunConfigError, model_config_overrides
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


def compile_plan(config: ml_collections.ConfigDict) -> dict:
    """Compiles the train step for `config.topology` (or the local devices) and
    returns the per-device memory report."""
    if config.topology:
        devices = slice_topology(config.topology).devices
    else:
        devices = jax.devices()
    mesh = sharding_lib.make_mesh(dict(config.mesh), devices)
    shape = dict(mesh.shape)

    # No data nor tokenizer is read: the vocabulary is the preset's, plus LIMA's EOT token when the
    # run appends one (config.data.eot: auto means a new one for every template but chat).
    preset = get_preset(config.model.preset)
    new_eot = config.data.eot == "new" or (config.data.eot == "auto" and config.data.template != "chat")
    vocab = dict(vocab_size=preset.vocab_size + 1, eot_token_id=preset.vocab_size) if new_eot else {}
    model_config = preset.replace(**vocab, **model_config_overrides(config))
    # The schedule's length changes only learning-rate values, not what is compiled.
    sharded = compile_train_step(config, model_config, mesh, total_steps=1000)
    b, t = config.data.global_batch_size, config.data.max_len
    compiled = sharded.compile(sharded.abstract_state, sharded.abstract_batch(b, t))
    kernels = sorted(set(re.findall(r"lima_flash_attention_\w+", compiled.lowered.as_text())))
    compile_s = compiled.compile_s
    memory = compiled.memory_analysis()
    kind = devices[0].device_kind
    hbm = hbm_gib(kind)
    peak = getattr(memory, "peak_memory_in_bytes", 0) or (
        memory.argument_size_in_bytes + memory.temp_size_in_bytes)
    return {
        "topology": config.topology or f"local {kind}",
        "device_kind": kind,
        "devices": len(devices),
        "mesh": shape,
        "model": config.model.preset,
        "parameters": sharded.fns.matmul_param_count(),
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
    }


def format_plan(report: dict) -> str:
    memory = report["per_device_gib"]
    verdict = ("unknown HBM size" if report["fits"] is None
               else "FITS" if report["fits"] else "DOES NOT FIT")
    return (
        f"plan: {report['model']} on {report['topology']} ({report['devices']} x "
        f"{report['device_kind']}), mesh {report['mesh']}, batch {report['global_batch']}, "
        f"remat {report['remat']}, attention {report['attention']}"
        + (f" (Pallas: {', '.join(report['pallas_kernels'])})" if report["pallas_kernels"] else "")
        + "\n"
        f"plan: compiled in {report['compile_s']}s; per device: arguments "
        f"{memory['arguments']:.2f} GiB, temp {memory['temp']:.2f} GiB, peak {memory['peak']:.2f} GiB"
        f" of {report['hbm_gib']} GiB HBM: {verdict}"
    )
