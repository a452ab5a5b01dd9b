"""Loading a model and its tokenizer for decoding, from any checkpoint this project writes.

``--ckpt DIR`` accepts a converted model checkpoint (``model_config.json`` + ``params/``), a
training run's step directory (``WORKDIR/checkpoints/<step>``), one of its selection snapshots
(``WORKDIR/snapshots/<step>``: parameters only, in ``checkpoint.snapshot_dtype``) or the run's
workdir (its newest step, full state or snapshot, that restores: one that does not, a
truncated file say, is named in a warning and passed over, README "Training"); from a
training checkpoint only the parameters are read (an orbax partial restore: the optimizer state
stays on disk), and the tokenizer comes from its ``meta``. A checkpoint that cannot be read is
one line naming it, never a traceback.
``--hf DIR`` reads a Hugging Face LLaMA directory. `lima_jax.checkpoint.checkpoint_kind` tells
the kinds apart.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import TypeVar

import jax
from flax import nnx

from lima_jax import sharding as sharding_lib
from lima_jax.checkpoint import (
    HF,
    HF_CONFIG_FILE,
    MODEL,
    MODEL_CONFIG_FILE,
    SNAPSHOT,
    TRAIN_STEP,
    WORKDIR,
    CheckpointError,
    NonFiniteWeights,
    check_finite,
    checkpoint_kind,
    load_model,
    load_model_config,
    load_snapshot_model,
    load_train_model,
    model_tokenizer,
    newest_that_restores,
    read_snapshot_meta,
    read_snapshot_params,
    read_train_meta,
    read_train_params,
    restore_problem,
    saved_steps,
)
from lima_jax.data.tokenizer import Tokenizer, tokenizer_file_in
from lima_jax.errors import LimaError
from lima_jax.model import LlamaConfig, abstract_model, from_hf, load_hf_config
from lima_jax.model import lora as lora_lib
from lima_jax.model.llama import Llama

T = TypeVar("T")


class LoadError(LimaError, ValueError):
    """A checkpoint or tokenizer that cannot be used; the message names the path."""


def _param_shardings(config: LlamaConfig, mesh):
    if mesh is None:
        return None
    state = nnx.state(abstract_model(config), nnx.Param)
    return sharding_lib.state_shardings(state, mesh)


def _load_train_checkpoint(step_dir: pathlib.Path, mesh, dtype: str | None) -> tuple[Llama, Tokenizer]:
    """A full train state's parameters, or a selection snapshot's (`SnapshotWriter`)."""
    snapshot = checkpoint_kind(step_dir) == SNAPSHOT
    meta = (read_snapshot_meta if snapshot else read_train_meta)(step_dir)
    config = LlamaConfig.from_dict(meta["model_config"])
    if dtype:
        config = config.replace(dtype=dtype)
    if config.lora is not None:
        model = _load_lora(step_dir, snapshot, meta, config, mesh)
    else:
        load = load_snapshot_model if snapshot else load_train_model
        model = load(step_dir, config, shardings=_param_shardings(config, mesh))
    check_finite(nnx.state(model, nnx.Param))
    return model, Tokenizer.from_meta(meta)


def _load_lora(step_dir: pathlib.Path, snapshot: bool, meta: dict, config: LlamaConfig, mesh) -> Llama:
    """A LoRA run's checkpoint (its adapters) on its frozen base, read again from the run's
    model.init_from, merged into a plain model (`lima_jax.model.lora.merge`)."""
    from lima_jax.train.base_weights import lora_base_params

    shardings = _param_shardings(config, mesh)
    pure_shardings = None if shardings is None else nnx.to_pure_dict(shardings)
    adapters_abstract = lora_lib.trainable(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param)))
    base = lora_base_params(meta, config, pure_shardings)
    adapter_shardings = jax.tree.map(lambda x: x.sharding, lora_lib.trainable(base))
    read = read_snapshot_params if snapshot else read_train_params
    adapters = read(step_dir, adapters_abstract, adapter_shardings)
    plain, plain_config = lora_lib.merge(lora_lib.join(adapters, lora_lib.split_trainable(base)[1]), config)
    graphdef, state = nnx.split(abstract_model(plain_config))
    nnx.replace_by_pure_dict(state, plain)
    return nnx.merge(graphdef, state)


def read_run_checkpoint(path: pathlib.Path, kind: str, read: Callable[[pathlib.Path], T]) -> T:
    """`read(step_dir)` of a training run's checkpoint: the step directory or snapshot the user
    named (one that does not restore is a CheckpointError naming it), or with `kind` WORKDIR the
    workdir's newest step, full state or snapshot, that restores (the others named in warnings).
    Decoding reads models this way, `convert lima-to-peft` adapters."""
    if kind == WORKDIR:
        steps = saved_steps(path)
        _, loaded, _ = newest_that_restores(list(steps), lambda step: read(steps[step]), path)
        return loaded
    try:
        return read(path)
    except NonFiniteWeights as err:
        raise CheckpointError(f"does not restore ({err})", where=str(path)) from None
    except LimaError:
        raise
    except Exception as err:  # noqa: BLE001 - orbax and tensorstore raise many kinds
        raise CheckpointError(f"does not restore ({restore_problem(err)})", where=str(path),
                              hint="give an older step, or the workdir to take its newest that "
                                   "restores") from None


def _tokenizer(path: pathlib.Path | None, where: pathlib.Path) -> Tokenizer:
    """--tokenizer PATH, else the checkpoint directory's own (tokenizer.json, tokenizer.model or
    original/tokenizer.model); read before any weight, so a missing one costs no load."""
    if path is None:
        if tokenizer_file_in(where) is None:
            raise LoadError(f"{where}: no tokenizer.json, tokenizer.model or original/tokenizer.model "
                            "beside the model; pass --tokenizer PATH")
        path = where
    return Tokenizer.load(path)


def load_for_decoding(*, ckpt: str | None = None, hf: str | None = None, tokenizer: str | None = None,
                      dtype: str | None = None, add_eot: bool = False, mesh=None) -> tuple[Llama, Tokenizer]:
    """(model, tokenizer) from `ckpt` or `hf`. dtype: compute dtype (and, for --hf, the
    parameter dtype); add_eot: for --hf, append LIMA's EOT token (chat templates need it)."""
    tok_path = pathlib.Path(tokenizer) if tokenizer else None
    if (ckpt is None) == (hf is None):
        raise LoadError("give exactly one of --ckpt DIR or --hf DIR")
    if hf is not None:
        path = pathlib.Path(hf)
        if not (path / HF_CONFIG_FILE).is_file():
            raise LoadError(f"--hf {path}: no {HF_CONFIG_FILE}; expected a Hugging Face LLaMA directory")
        tok = _tokenizer(tok_path, path)
        # An export of a lima_jax run already holds its EOT (`Tokenizer`): no second one is appended.
        add_eot = add_eot and tok.eot_is_new
        param_dtype = dtype or "float32"
        config = load_hf_config(path, param_dtype=param_dtype, dtype=param_dtype)
        if add_eot:
            config = config.replace(vocab_size=config.vocab_size + 1, eot_token_id=config.vocab_size)
        model = from_hf(path, param_dtype, add_eot=add_eot, shardings=_param_shardings(config, mesh))
        return model, tok
    path = pathlib.Path(ckpt)
    if checkpoint_kind(path) == MODEL:
        # Its own tokenizer comes with the end of turn the model was trained with.
        tok = _tokenizer(tok_path, path) if tok_path else (model_tokenizer(path) or _tokenizer(None, path))
        overrides = {"dtype": dtype} if dtype else {}
        config = load_model_config(path).replace(**overrides)
        model = load_model(path, shardings=_param_shardings(config, mesh), **overrides)
        return model, tok
    kind = checkpoint_kind(path)
    if kind not in (TRAIN_STEP, SNAPSHOT, WORKDIR):
        raise LoadError(
            f"--ckpt {path}: neither a model checkpoint ({MODEL_CONFIG_FILE} + params/) nor a "
            "training step directory (state/, meta/) nor a selection snapshot (params/, meta/) nor a "
            "workdir with checkpoints/<step>/ or snapshots/<step>/")
    model, tok = read_run_checkpoint(path.absolute(), kind,
                                     lambda step_dir: _load_train_checkpoint(step_dir, mesh, dtype))
    return model, (Tokenizer.load(tok_path, eot=tok.eot) if tok_path else tok)


def load_any(path: str, *, tokenizer: str | None = None, dtype: str | None = None,
             add_eot: bool = False, mesh=None) -> tuple[Llama, Tokenizer]:
    """(model, tokenizer) from a directory of any kind: a Hugging Face directory is read as
    ``--hf``, anything else as ``--ckpt`` (see `load_for_decoding`)."""
    hf = checkpoint_kind(path) == HF
    return load_for_decoding(ckpt=None if hf else path, hf=path if hf else None, tokenizer=tokenizer,
                             dtype=dtype, add_eot=add_eot, mesh=mesh)
