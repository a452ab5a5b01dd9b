"""What lima_jax knows of each accelerator: dense bfloat16 peak FLOP/s, HBM bandwidth and size.

One table for MFU (training, kernels), bandwidth utilisation (decoding) and the plan check's
"does it fit" (ahead-of-time TPU compiles cannot ask the chip itself). Figures are the vendors'
data sheets. A chip is found by its exact `device_kind`, else by the first name the kind starts
with; CPUs and unknown chips give None, and the figures that need them are reported as unknown.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # jax `device_kind`, or the start of it
    peak_flops: float  # dense bf16 FLOP/s per device
    hbm_bandwidth: float  # bytes/s per device
    hbm_gib: float | None  # per device; None where one kind comes in several sizes


# Order matters for prefix matching: the longer name of a family first.
CHIPS = (
    Chip("NVIDIA H200", 989e12, 4.8e12, 141),
    Chip("NVIDIA H100", 989e12, 3.35e12, 80),
    Chip("NVIDIA A100", 312e12, 2.0e12, None),
    Chip("TPU v6 lite", 918e12, 1.64e12, 32),  # v6e
    Chip("TPU v5 lite", 197e12, 0.82e12, 16),  # v5e
    Chip("TPU v5p", 459e12, 2.76e12, 95),
    Chip("TPU v5", 459e12, 2.76e12, 95),  # v5p reports itself as "TPU v5"
    Chip("TPU v4", 275e12, 1.2e12, 32),
)


def chip(device_kind: str) -> Chip | None:
    """The table's entry for a jax `device_kind`, or None (CPUs, unknown chips)."""
    for entry in CHIPS:
        if device_kind == entry.name:
            return entry
    lowered = device_kind.lower()
    return next((c for c in CHIPS if lowered.startswith(c.name.lower())), None)


def _device_kind(device) -> str:
    if device is None:
        import jax

        device = jax.devices()[0]
    return device.device_kind


def peak_flops_per_device(device=None) -> float | None:
    """The chip's dense bf16 peak FLOP/s, or None where it is unknown (CPUs)."""
    entry = chip(_device_kind(device))
    return entry.peak_flops if entry else None


def peak_bandwidth(device=None) -> float | None:
    """The chip's HBM bytes/s, or None where it is unknown."""
    entry = chip(_device_kind(device))
    return entry.hbm_bandwidth if entry else None


def hbm_gib(device_kind: str) -> float | None:
    """HBM per device in GiB for a `device_kind`, or None where it is unknown."""
    entry = chip(device_kind)
    return entry.hbm_gib if entry else None
