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
        # An nnx State of shardings, or already a pure dict (the trainer's).
        sharding_pure = shardings if type(shardings) is dict else nnx.to_pure_dict(shardings)
    targets = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_pure, sharding_pure)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(ckpt_dir / PARAMS_DIR, targets)
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state)


# --------------------------------------------------------------------------- train states


class TrainCheckpointer:
    """Orbax checkpoints of a run in `WORKDIR/checkpoints/<step>/`.

    Each step directory holds the train state (params, optimizer state, step, rng),
    the data iterator's state and `meta` (the resolved config, the tokenizer, the
    epoch), so a resumed run continues exactly. Orbax writes a step into a
    temporary directory and renames it when complete, so a half-written step is
    never listed. Kept: the steps in `keep_steps` (LIMA: the ends of epochs 5 to
    10) and the latest one.
    """

    def __init__(self, directory: str | os.PathLike, *, keep_steps=(), async_save: bool = True):
        from orbax.checkpoint import checkpoint_managers

        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(1),
            checkpoint_managers.CustomSteps(sorted(set(int(s) for s in keep_steps))),
        ])
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=policy,
            create=True,
        )
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict, data_state: dict, meta: dict) -> None:
        """Starts saving (asynchronously when configured); returns once the arrays are copied."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict, dict]:
        """(state, data_state, meta) of `step`; `abstract_state` holds ShapeDtypeStructs
        with the shardings the arrays should land in."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data"], restored["meta"]

    def read_meta(self, step: int) -> dict:
        """Only the `meta` item of `step` (config, tokenizer, model config)."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
