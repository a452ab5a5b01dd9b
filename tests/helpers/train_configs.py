"""The tiny training run the train, decode and evaluate tests share, its logged losses, and a
way to damage one of its checkpoints."""

from __future__ import annotations

import json
import pathlib

from lima_jax.data import generated as demo_data
from lima_jax.train.config import get_base_config


def tiny_config(workdir: pathlib.Path, data_dir: pathlib.Path, **changes):
    """A run of a 2-layer model on a small generated set: 3 epochs x 7 steps."""
    if not (data_dir / "train.jsonl").exists():
        demo_data.write_demo_data(data_dir, train_size=110, held_out_size=32, seed=1)
    c = get_base_config()
    c.workdir = str(workdir)
    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.model.residual_dropout = 0.2
    c.model.max_seq_len = 64
    c.data.path = str(data_dir / "train.jsonl")
    c.data.train_tokenizer.vocab_size = 320
    c.data.train_tokenizer.cache_dir = str(data_dir / "tokenizer")
    c.data.max_len = 48
    c.data.global_batch_size = 16
    c.data.num_epochs = 3
    c.optimizer.learning_rate = 1e-3
    c.optimizer.end_learning_rate = 1e-4
    c.train.eval_data = str(data_dir / "held_out.jsonl")
    c.train.eval_every_epochs = 3
    c.checkpoint.async_save = False
    for key, value in changes.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def losses(workdir: pathlib.Path) -> dict[int, float]:
    result = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if "loss" in record:
            result[record["step"]] = record["loss"]
    return result


def corrupt_checkpoint(step_dir: pathlib.Path, *, every_file: bool = False) -> pathlib.Path:
    """Cuts the largest array file of a training step directory in half, as a disk that filled
    up or a copy that stopped midway leaves it; returns the file. Which arrays that file holds
    is orbax's choice (it may be optimizer state only, and a params-only restore then still
    works): `every_file` cuts every file of the train state, so that nothing of it restores."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    for path in files if every_file else [largest]:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return largest
