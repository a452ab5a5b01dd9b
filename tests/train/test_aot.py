"""The pod plan check: an ahead-of-time compile of the real train step for a TPU slice
on this CPU machine (libtpu's topology description; no TPU), with per-chip memory."""

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
