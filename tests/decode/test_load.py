"""What kind of checkpoint a directory is, and which step ended an epoch of a training run
(`lima_jax.checkpoint`), on directories laid out by hand; `load_for_decoding`'s errors."""

from __future__ import annotations

import json

import pytest

from lima_jax.checkpoint import (
    HF,
    MODEL,
    TRAIN_STEP,
    WORKDIR,
    checkpoint_kind,
    epoch_checkpoint,
    epoch_end_steps,
    train_step_dir,
)
from lima_jax.decode.load import LoadError, load_for_decoding
from lima_jax.errors import InputError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def test_checkpoint_kinds(tmp_path):
    _touch(tmp_path / "hf" / "config.json")
    _touch(tmp_path / "model" / "model_config.json")
    run = tmp_path / "run"
    _touch(run / "config.json")  # a training run's resolved config, not a Hugging Face one
    for step in (4, 12):
        (run / "checkpoints" / str(step) / "state").mkdir(parents=True)
    (run / "checkpoints" / "tmp-write").mkdir()
    assert checkpoint_kind(tmp_path / "hf") == HF
    assert checkpoint_kind(tmp_path / "model") == MODEL
    assert checkpoint_kind(run) == WORKDIR
    assert checkpoint_kind(run / "checkpoints" / "4") == TRAIN_STEP
    assert checkpoint_kind(tmp_path) is None
    assert train_step_dir(run) == run / "checkpoints" / "12"
    assert train_step_dir(run / "checkpoints" / "4") == run / "checkpoints" / "4"
    assert train_step_dir(tmp_path / "hf") is None


def test_epoch_checkpoints(tmp_path):
    with pytest.raises(InputError, match="epochs.json: missing"):
        epoch_end_steps(tmp_path)
    (tmp_path / "epochs.json").write_text(json.dumps({"epoch_end_steps": [4, 8, 12]}))
    for step in (8, 12):
        (tmp_path / "checkpoints" / str(step) / "state").mkdir(parents=True)
    assert epoch_end_steps(tmp_path) == [4, 8, 12]
    assert epoch_checkpoint(tmp_path, 1) is None  # not kept
    assert epoch_checkpoint(tmp_path, 3) == tmp_path / "checkpoints" / "12"
    with pytest.raises(InputError, match="the run has 3 epochs, not 4"):
        epoch_checkpoint(tmp_path, 4)


def test_a_directory_that_is_no_checkpoint_is_a_load_error(tmp_path):
    with pytest.raises(LoadError, match="neither a model checkpoint"):
        load_for_decoding(ckpt=str(tmp_path))
    with pytest.raises(LoadError, match="exactly one of"):
        load_for_decoding()
