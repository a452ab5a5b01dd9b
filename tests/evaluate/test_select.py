"""`evaluate select`: each kept epoch checkpoint of a real (tiny) training run decodes the dev
prompts, every answer is graded, and the best epoch is named."""

from __future__ import annotations

import json
import pathlib

import pytest

from lima_jax.evaluate.cli import main
from lima_jax.evaluate.select import parse_epochs
from lima_jax.train import train
from tests.helpers.train_configs import tiny_config


def test_select_grades_each_kept_epoch_and_names_the_best(tmp_path, capsys):
    c = tiny_config(tmp_path / "run", tmp_path / "data", train__eval_data="",
                    checkpoint__keep_epochs_from=2, checkpoint__keep_epochs_to=3)
    train(c)
    ends = json.loads((tmp_path / "run" / "epochs.json").read_text())["epoch_end_steps"]
    assert len(ends) == 3
    dev = tmp_path / "data" / "held_out.jsonl"
    # The 'length' judge is the offline stand-in (longer answers score higher), not a quality judge.
    code = main(["select", "--workdir", str(tmp_path / "run"), "--epochs", "1-3", "--dev", str(dev),
                 "--judge", "length", "--out", str(tmp_path / "sel"), "--max-new-tokens", "6",
                 "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "sel" / "select.json").read_text())
    assert result["missing_epochs"] == [1]  # epoch 1 was not kept
    assert [r["epoch"] for r in result["epochs"]] == [2, 3]
    assert [r["step"] for r in result["epochs"]] == ends[1:]
    # Epochs 2 and 3 were kept as parameter snapshots (checkpoint.selection's default); 3 is also the
    # final full state, and the snapshot is taken first.
    assert all(pathlib.Path(r["checkpoint"]).parent.name == "snapshots" for r in result["epochs"])
    assert all(r["prompts"] == 32 for r in result["epochs"])
    best = max(result["epochs"], key=lambda r: r["mean"])
    assert result["best"]["epoch"] == best["epoch"]
    assert (tmp_path / "sel" / "epoch_2.jsonl").exists()
    assert f"Best: epoch {best['epoch']}" in capsys.readouterr().out


def test_epoch_ranges_and_bad_workdirs(tmp_path, capsys):
    assert parse_epochs("5-10") == [5, 6, 7, 8, 9, 10] and parse_epochs("2,4") == [2, 4]
    with pytest.raises(ValueError, match="epochs are numbered from 1"):
        parse_epochs("0-2")
    assert main(["select", "--workdir", str(tmp_path), "--dev", "x.jsonl", "--judge", "length",
                 "--out", str(tmp_path / "o")]) == 2
    assert "epochs.json: missing" in capsys.readouterr().err
