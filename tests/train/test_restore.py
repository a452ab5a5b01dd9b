"""Checkpoints that do not restore (`lima_jax.checkpoint.newest_that_restores`): a resumed run
passes over a damaged latest checkpoint for the newest one that restores, names the one skipped,
sets it aside and continues exactly as an uninterrupted run; when none restores, training and
decoding say so in one line naming the workdir, never with a traceback."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys

import pytest

from lima_jax.checkpoint import UNRESTORABLE_DIR, CheckpointError, kept_steps
from lima_jax.train import train
from tests.helpers.train_configs import corrupt_checkpoint, losses, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config(workdir: pathlib.Path, data: pathlib.Path, max_steps: int, resume=False):
    # Epoch ends (every 7 steps) are kept as full states, so a damaged latest checkpoint has an older one.
    c = tiny_config(workdir, data, train__eval_data="", train__max_steps=max_steps,
                    checkpoint__every_steps=5, checkpoint__keep_epochs_from=1, checkpoint__selection="full_state")
    c.resume = resume
    return c


def test_a_damaged_latest_checkpoint_is_skipped_and_the_run_continues_exactly(tmp_path, caplog):
    data, run = tmp_path / "data", tmp_path / "run"
    train(_config(tmp_path / "whole", data, 12))
    train(_config(run, data, 10))
    assert kept_steps(run) == [7, 10]
    corrupt_checkpoint(run / "checkpoints" / "10")

    with caplog.at_level(logging.WARNING, logger="lima_jax.checkpoint"):
        summary = train(_config(run, data, 12, resume=True))
    assert "checkpoint step 10 does not restore" in caplog.text
    assert summary["start_step"] == 7 and summary["status"] == "completed"
    assert (run / UNRESTORABLE_DIR / "10").is_dir()  # kept for a look, out of the run's way
    assert losses(run) == losses(tmp_path / "whole")  # steps 8-12 again, bit for bit


def test_when_no_checkpoint_restores_resume_and_decode_say_so_in_one_line(tmp_path):
    from lima_jax.decode.load import load_for_decoding

    run = tmp_path / "run"
    train(_config(run, tmp_path / "data", 2))
    corrupt_checkpoint(run / "checkpoints" / "2", every_file=True)

    with pytest.raises(CheckpointError, match=rf"^{run}: no checkpoint restores \(step 2: .*\) \(start "
                       r"a new run \(config\.overwrite=True\), or restore the files from a copy\)$"):
        train(_config(run, tmp_path / "data", 4, resume=True))
    assert kept_steps(run) == [2]  # nothing set aside or deleted when nothing restores
    with pytest.raises(CheckpointError, match=rf"^{run}: no checkpoint restores"):
        load_for_decoding(ckpt=str(run))

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Repeat: tea"}\n')
    decode = subprocess.run(
        [sys.executable, "-m", "lima_jax.decode", "--ckpt", str(run), "--prompts", str(prompts),
         "--out", str(tmp_path / "out.jsonl"), "--greedy", "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert decode.returncode == 2
    assert "Traceback" not in decode.stderr, decode.stderr[-3000:]
    errors = [line for line in decode.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {run}: no checkpoint restores (step 2: ")
    assert "checkpoint step 2 does not restore" in decode.stderr  # the warning naming it
