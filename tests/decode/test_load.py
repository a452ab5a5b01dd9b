"""What kind of checkpoint a directory is, and which step ended an epoch of a training run
(`lima_jax.checkpoint`), on directories laid out by hand; `load_for_decoding`'s errors, and its
fall back to the newest step of a workdir that restores."""

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


def test_decoding_from_a_workdir_passes_over_a_checkpoint_that_does_not_restore(tmp_path, caplog):
    import logging

    import jax
    import numpy as np
    from flax import nnx

    from lima_jax.checkpoint import CheckpointError
    from lima_jax.train import train
    from tests.helpers.train_configs import corrupt_checkpoint, tiny_config

    run = tmp_path / "run"
    train(tiny_config(run, tmp_path / "data", train__eval_data="", train__max_steps=9,
                      checkpoint__every_steps=9, checkpoint__keep_epochs_from=1))
    # Every file: a params-only restore may not read the largest one (it can hold optimizer state only).
    corrupt_checkpoint(run / "checkpoints" / "9", every_file=True)
    with caplog.at_level(logging.WARNING, logger="lima_jax.checkpoint"):
        model, tokenizer = load_for_decoding(ckpt=str(run))
    assert f"{run}: checkpoint step 9 does not restore" in caplog.text
    # The newest that restores is epoch 1's selection snapshot (parameters only, in bfloat16).
    epoch_1, _ = load_for_decoding(ckpt=str(run / "snapshots" / "7"))
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(epoch_1, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert tokenizer.vocab_size == model.config.vocab_size
    # A step named by hand is not replaced by another: it is an error naming it.
    with pytest.raises(CheckpointError, match=rf"^{run / 'checkpoints' / '9'}: does not restore \("):
        load_for_decoding(ckpt=str(run / "checkpoints" / "9"))
