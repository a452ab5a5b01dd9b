"""Multi-host training: 2 local processes with 2 fake CPU devices each (jax.distributed over
gloo, launched by launch/local_multiprocess.py) give the losses of 1 process with 4 devices, and
a SIGTERM to one of them stops both at the same saved step (JAX's preemption sync point), from
which a resumed run continues."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from lima_jax.checkpoint import kept_steps
from lima_jax.data.pipeline import load_tokenizer
from tests.helpers.train_configs import losses, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]
TESTS = pathlib.Path(__file__).resolve().parent


def _config_file(tmp_path: pathlib.Path, data_dir: pathlib.Path, max_steps: int = 8,
                 epochs: int = 3) -> pathlib.Path:
    path = tmp_path / "multihost_config.py"
    path.write_text(
        "import pathlib, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.helpers.train_configs import tiny_config\n"
        "def get_config():\n"
        f"    c = tiny_config(pathlib.Path({str(tmp_path / 'unused')!r}), pathlib.Path({str(data_dir)!r}),"
        f" train__eval_data='', train__max_steps={max_steps}, data__num_epochs={epochs})\n"
        "    c.mesh.fsdp = 2\n"
        "    c.mesh.data = -1\n"
        "    return c\n")
    return path


def _launch(config: pathlib.Path, workdir: pathlib.Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "launch" / "local_multiprocess.py"), "--num-processes", "2",
            "--devices-per-process", "2", "--", "--config", str(config),
            f"--config.workdir={workdir}", *overrides]


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

    multi = subprocess.run(_launch(config, tmp_path / "two"), capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "process 1 of 2, 2 local devices of 4" in multi.stderr

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step


def _wait_for(condition, process: subprocess.Popen, log: pathlib.Path, what: str, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout} s")


def test_a_sigterm_to_one_host_stops_every_host_at_the_same_saved_step(tmp_path):
    data_dir, workdir, log = tmp_path / "data", tmp_path / "run", tmp_path / "launcher.log"
    load_tokenizer(tiny_config(tmp_path / "w", data_dir).data, str(tmp_path / "w"))
    # 40 epochs (280 steps): far longer than the notice takes to reach the other host.
    config = _config_file(tmp_path, data_dir, max_steps=0, epochs=40)

    with log.open("w") as out:
        launcher = subprocess.Popen(_launch(config, workdir), stdout=out, stderr=subprocess.STDOUT)
        pid = _wait_for(lambda: re.findall(r"process 1: pid (\d+)", log.read_text()), launcher, log,
                        "the pid of process 1")
        _wait_for(lambda: (workdir / "metrics.jsonl").exists() and max(losses(workdir) or [0]) >= 3,
                  launcher, log, "step 3")
        os.kill(int(pid[0]), signal.SIGTERM)  # process 1 only: process 0 hears of it from JAX
        launcher.wait(timeout=300)
    text = log.read_text()
    assert launcher.returncode == 0, text[-3000:]
    saved = dict(re.findall(r"process (\d): SIGTERM \(preemption\): saved step (\d+), exiting", text))
    assert set(saved) == {"0", "1"} and len(set(saved.values())) == 1, text[-3000:]
    step = int(saved["0"])
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["last_checkpoint"] == step < 280
    assert step in kept_steps(workdir)

    resumed = subprocess.run(_launch(config, workdir, "--config.resume=True",
                                     f"--config.train.max_steps={step + 2}"),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {workdir / 'checkpoints' / str(step)} at step {step}" in resumed.stdout
    assert sorted(losses(workdir)) == list(range(1, step + 3))
