"""Multi-host training: 2 local processes with 2 fake CPU devices each (jax.distributed over
gloo, launched by launch/local_multiprocess.py) give the losses of 1 process with 4 devices."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from lima_jax.data.pipeline import load_tokenizer
from tests.helpers.train_configs import losses, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]
TESTS = pathlib.Path(__file__).resolve().parent


def _config_file(tmp_path: pathlib.Path, data_dir: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "multihost_config.py"
    path.write_text(
        "import pathlib, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.helpers.train_configs import tiny_config\n"
        "def get_config():\n"
        f"    c = tiny_config(pathlib.Path({str(tmp_path / 'unused')!r}), pathlib.Path({str(data_dir)!r}),"
        " train__eval_data='', train__max_steps=8)\n"
        "    c.mesh.fsdp = 2\n"
        "    c.mesh.data = -1\n"
        "    return c\n")
    return path


def test_two_processes_match_one_process(tmp_path):
    data_dir = tmp_path / "data"
    # Train the shared tokenizer once, so the hosts do not race to make it.
    load_tokenizer(tiny_config(tmp_path / "w", data_dir).data, str(tmp_path / "w"))
    config = _config_file(tmp_path, data_dir)

    single = subprocess.run(
        [sys.executable, "-m", "lima_jax.train", "--config", str(config),
         f"--config.workdir={tmp_path / 'one'}"],
        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    multi = subprocess.run(
        [sys.executable, str(REPO / "launch" / "local_multiprocess.py"), "--num-processes", "2",
         "--devices-per-process", "2", "--", "--config", str(config),
         f"--config.workdir={tmp_path / 'two'}"],
        capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "process 1 of 2, 2 local devices of 4" in multi.stderr

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
