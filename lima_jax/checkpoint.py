"""Orbax checkpoints of lima_jax models.

A model checkpoint is a directory holding `model_config.json` (the
`LlamaConfig`), `params/` (the parameters, an orbax PyTree checkpoint) and,
when known, `tokenizer.model`. Restoring is shape-first: the parameters are
read straight into their (optionally sharded) layout.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp
from flax import nnx

from lima_jax.model.config import LlamaConfig
from lima_jax.model.llama import Llama, abstract_model

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.model"


def save_model(model: Llama, ckpt_dir: str | os.PathLike, *,
               tokenizer_model: str | os.PathLike | None = None) -> pathlib.Path:
    """Writes `model` to `ckpt_dir` (created; an existing params/ is replaced)."""
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    params_dir = ckpt_dir / PARAMS_DIR
    if params_dir.exists():
        shutil.rmtree(params_dir)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(params_dir, pure)
        checkpointer.wait_until_finished()
    (ckpt_dir / MODEL_CONFIG_FILE).write_text(model.config.to_json())
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, ckpt_dir / TOKENIZER_FILE)
    return ckpt_dir


def load_model_config(ckpt_dir: str | os.PathLike) -> LlamaConfig:
    path = pathlib.Path(ckpt_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not a lima_jax model checkpoint (no {MODEL_CONFIG_FILE}); "
            "make one with `python -m lima_jax.convert hf-to-lima`"
        )
    return LlamaConfig.from_json(path.read_text())


def load_model(ckpt_dir: str | os.PathLike, *, shardings=None, **config_overrides) -> Llama:
    """Restores a model saved by `save_model`.

    shardings: optional nnx State of shardings (`lima_jax.sharding.state_shardings`);
    without it every parameter lands on the default device. `config_overrides`
    may change numerics that do not touch shapes (e.g. dtype='bfloat16').
    """
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    config = load_model_config(ckpt_dir).replace(**config_overrides)
    graphdef, abstract_state = nnx.split(abstract_model(config))
    abstract_pure = nnx.to_pure_dict(abstract_state)  # ShapeDtypeStructs
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        sharding_pure = jax.tree.map(lambda _: device, abstract_pure)
    else:
        sharding_pure = nnx.to_pure_dict(shardings)
    targets = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_pure, sharding_pure)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(ckpt_dir / PARAMS_DIR, targets)
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state)
