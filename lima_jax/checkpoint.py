"""Orbax checkpoints of lima_jax models and training runs, and what each kind of directory is.

A model checkpoint is a directory holding `model_config.json` (the `LlamaConfig`), `params/`
(the parameters, an orbax PyTree checkpoint) and, when known, its tokenizer's files as Hugging
Face names them (`tokenizer.json` or `tokenizer.model`, `tokenizer_config.json`, ...;
`model_tokenizer` reads them back). A training
run (its workdir) keeps `checkpoints/<step>/` (state, data iterator, meta) and `epochs.json`,
the step each epoch ended at. Restoring is shape-first: the parameters are read straight into
their (optionally sharded) layout. `checkpoint_kind` tells the four kinds of directory apart
(Hugging Face, model checkpoint, training step, training workdir); `epoch_checkpoint` finds the
step directory that ended an epoch; `load_train_model` reads only the parameters of a step.

A training step that does not restore (a truncated or missing file, non-finite weights) is passed
over for the newest one that does (`newest_that_restores`, used by the trainer's resume and by
decoding from a workdir), each one skipped named in a warning; when none restores, one
`CheckpointError` names the workdir (README "Training").
"""

from __future__ import annotations

import inspect
import logging
import os
import pathlib
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from lima_jax import sharding as sharding_lib
from lima_jax.data.tokenizer import SIDE_FILES, TOKENIZER_JSON, Tokenizer, tokenizer_file_in
from lima_jax.errors import InputError, LimaError
from lima_jax.jsonl import read_json
from lima_jax.model.config import LlamaConfig
from lima_jax.model.llama import Llama, abstract_model

MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILE = "tokenizer.model"
# The tokenizer files a model checkpoint may hold (a save replaces those of the model before it).
TOKENIZER_FILES = (TOKENIZER_JSON, TOKENIZER_FILE, *SIDE_FILES)
HF_CONFIG_FILE = "config.json"  # a Hugging Face model directory's
CHECKPOINTS_DIR = "checkpoints"  # a training workdir's step directories (full train states)
SNAPSHOTS_DIR = "snapshots"  # a training workdir's parameters-only selection snapshots
SNAPSHOT_PARAMS_DIR, META_DIR = "params", "meta"  # a snapshot's items
TRAIN_STATE_DIR = "state"  # a training step directory's train state
EPOCHS_FILE = "epochs.json"  # a training workdir's {"epoch_end_steps": [...]}
# Where a resumed run moves the step directories that did not restore: kept for a look, and out
# of the way of the steps the run saves again.
UNRESTORABLE_DIR = "unrestorable_checkpoints"

log = logging.getLogger(__name__)
T = TypeVar("T")

# The kinds of directory `checkpoint_kind` tells apart.
HF, MODEL, TRAIN_STEP, SNAPSHOT, WORKDIR = "hf", "model", "train_step", "snapshot", "workdir"


# --------------------------------------------------------------------------- kinds of directory


def checkpoint_kind(path: str | os.PathLike) -> str | None:
    """What `path` holds: MODEL (a lima_jax model checkpoint, `model_config.json` + params/),
    TRAIN_STEP (a training run's `checkpoints/<step>/`), SNAPSHOT (a run's parameters-only
    `snapshots/<step>/`: params/ + meta/), WORKDIR (a training run with at least one kept step or
    snapshot), HF (a Hugging Face directory, `config.json`), or None."""
    path = pathlib.Path(path)
    if (path / MODEL_CONFIG_FILE).is_file():
        return MODEL
    if (path / TRAIN_STATE_DIR).is_dir():
        return TRAIN_STEP
    if (path / SNAPSHOT_PARAMS_DIR).is_dir() and (path / META_DIR).is_dir():
        return SNAPSHOT
    # Before HF: a training workdir holds a config.json too (the run's resolved config).
    if kept_steps(path) or snapshot_steps(path):
        return WORKDIR
    if (path / HF_CONFIG_FILE).is_file():
        return HF
    return None


def kept_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps a training workdir keeps in `checkpoints/`, in order (none when it has none)."""
    checkpoints = pathlib.Path(workdir) / CHECKPOINTS_DIR
    if not checkpoints.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())


def snapshot_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of a training workdir's selection snapshots (`snapshots/<step>`), in order."""
    snapshots = pathlib.Path(workdir) / SNAPSHOTS_DIR
    if not snapshots.is_dir():
        return []
    return sorted(int(p.name) for p in snapshots.iterdir() if p.name.isdigit())


def saved_steps(workdir: str | os.PathLike) -> dict[int, pathlib.Path]:
    """Every step a training workdir holds parameters of, newest last: {step: its directory},
    the full train state where a step has both."""
    workdir = pathlib.Path(workdir)
    found = {step: workdir / SNAPSHOTS_DIR / str(step) for step in snapshot_steps(workdir)}
    found.update({step: workdir / CHECKPOINTS_DIR / str(step) for step in kept_steps(workdir)})
    return dict(sorted(found.items()))


def train_step_dir(path: str | os.PathLike) -> pathlib.Path | None:
    """The training step directory `path` names: itself (a step directory), a workdir's latest
    kept step, or None when it is neither."""
    path = pathlib.Path(path)
    kind = checkpoint_kind(path)
    if kind == TRAIN_STEP:
        return path
    if kind == WORKDIR:
        return path / CHECKPOINTS_DIR / str(kept_steps(path)[-1])
    return None


def epoch_end_steps(workdir: str | os.PathLike) -> list[int]:
    """The step at which each epoch of a training run ended (`WORKDIR/epochs.json`, written by
    the trainer before its first step)."""
    record = pathlib.Path(workdir) / EPOCHS_FILE
    if not record.is_file():
        raise InputError(f"missing; is {workdir} a lima_jax training workdir?", where=str(record))
    return [int(step) for step in read_json(record)["epoch_end_steps"]]


def epoch_checkpoint(workdir: str | os.PathLike, epoch: int) -> pathlib.Path | None:
    """The directory saved at the end of `epoch` (counted from 1): its selection snapshot, else
    its full train state; None when the run kept neither (LIMA keeps the ends of epochs 5 to 10,
    `checkpoint.keep_epochs_*`)."""
    workdir = pathlib.Path(workdir)
    ends = epoch_end_steps(workdir)
    if not 1 <= epoch <= len(ends):
        raise InputError(f"the run has {len(ends)} epochs, not {epoch}", where=str(workdir / EPOCHS_FILE))
    for folder in (SNAPSHOTS_DIR, CHECKPOINTS_DIR):
        step_dir = workdir / folder / str(ends[epoch - 1])
        if step_dir.is_dir():
            return step_dir
    return None


# --------------------------------------------------------------------------- which step restores


class CheckpointError(InputError):
    """A checkpoint that cannot be used (it does not restore, or holds another model); the
    message names the step directory or workdir."""


class NonFiniteWeights(CheckpointError):
    """Restored parameters that hold a NaN or an infinity: passed over like a damaged file."""


def check_finite(params) -> None:
    """Raises NonFiniteWeights when any parameter holds a NaN or an infinity."""
    finite = [jnp.isfinite(x).all() for x in jax.tree.leaves(params)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    if finite and not bool(jnp.stack(finite).all()):
        raise NonFiniteWeights("its weights hold NaN or inf")


def restore_problem(err: Exception) -> str:
    """One short line of why a restore failed (orbax and tensorstore errors run to pages). The
    failed restore's other reads still end in the background, each printing a traceback of its
    own; those are silenced from here on (`_silence_abandoned_reads`)."""
    _silence_abandoned_reads()
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _raised_in_orbax(exc: BaseException | None) -> bool:
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _is_abandoned_read(unraisable) -> bool:
    """An error of a read a failed restore left running: orbax's read coroutine, or tensorstore
    calling back into the event loop that the restore has already closed."""
    exc, obj = unraisable.exc_value, unraisable.object
    if inspect.iscoroutine(obj) and f"{os.sep}orbax{os.sep}" in obj.cr_code.co_filename:
        return True
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _is_abandoned_read_log(record: logging.LogRecord) -> bool:
    """asyncio's "exception was never retrieved" about an orbax read of a failed restore."""
    exc = record.exc_info[1] if record.exc_info else None
    return "never retrieved" in str(record.msg) and _raised_in_orbax(exc)


def _silence_abandoned_reads() -> None:
    """Drops the errors of reads a failed restore left running: they reach `sys.unraisablehook`
    and asyncio's logger at any later time, a traceback each. Every other error goes on as
    before. Installed once, at the first failed restore."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_reads", False):
        return

    def hook(unraisable):
        if not _is_abandoned_read(unraisable):
            previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(lambda record: not _is_abandoned_read_log(record))


def newest_that_restores(steps: Sequence[int], restore: Callable[[int], T],
                         where: str | os.PathLike) -> tuple[int, T, list[int]]:
    """(step, what `restore(step)` returned, the steps skipped) for the newest of `steps` that
    restores. A step whose restore raises (or whose weights are not finite) is skipped with a
    warning naming it and why; any other LimaError (a checkpoint of another model, say) is the
    user's to fix and stops at once. When none restores, a CheckpointError names `where`. Every
    host takes the same step: one that fails on any host is skipped on all."""
    skipped: list[int] = []
    reasons: list[str] = []
    for step in sorted(steps, reverse=True):
        try:
            value, problem = restore(step), ""
        except NonFiniteWeights as err:
            value, problem = None, str(err)
        except LimaError:
            raise
        except Exception as err:  # noqa: BLE001 - orbax and tensorstore raise many kinds
            value, problem = None, restore_problem(err)
        if not sharding_lib.on_every_host(not problem):
            problem = problem or "it does not restore on another host"
        if not problem:
            return step, value, skipped
        log.warning("%s: checkpoint step %d does not restore (%s); trying an older one", where, step, problem)
        skipped.append(step)
        reasons.append(f"step {step}: {problem}")
    raise CheckpointError("no checkpoint restores" + (f" ({'; '.join(reasons)})" if reasons else ""),
                          where=str(where), hint="start a new run (config.overwrite=True), or restore "
                          "the files from a copy")


def check_param_shapes(step_dir: str | os.PathLike, abstract_params: dict) -> None:
    """Raises CheckpointError when the parameters saved in a training step directory do not have
    the shapes of `abstract_params` (the model the config makes), naming the first that differs."""
    stored = ocp.StandardCheckpointHandler().metadata(pathlib.Path(step_dir) / TRAIN_STATE_DIR).tree
    saved = _shapes(stored["params"])
    wanted = _shapes(abstract_params)
    for name in sorted(saved.keys() | wanted.keys()):
        if saved.get(name) != wanted.get(name):
            raise CheckpointError(
                f"holds parameter {name} of shape {saved.get(name, 'none')}, but the config's model "
                f"makes {wanted.get(name, 'none')}", where=str(step_dir),
                hint="resume with the model the run started with (config.model.*, the tokenizer), "
                     "or start a new run in another workdir")


def _shapes(tree) -> dict[str, tuple]:
    """{'layers.attention.wq': shape, ...} of a nested dict of arrays."""
    return {".".join(str(getattr(key, "key", key)) for key in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --------------------------------------------------------------------------- model checkpoints


def save_model(model: Llama, ckpt_dir: str | os.PathLike, *, tokenizer: Tokenizer | None = None,
               tokenizer_model: str | os.PathLike | None = None) -> pathlib.Path:
    """Writes `model` to `ckpt_dir` (created; an existing params/ is replaced).

    tokenizer: written beside the model, all its files (`Tokenizer.write_files`);
    tokenizer_model: a bare SentencePiece file, copied in as tokenizer.model. The tokenizer
    files an earlier save left are removed first: they belong to the model replaced.

    Only a new or empty folder or a lima_jax model checkpoint (model_config.json + params/) is
    written to; any other folder, or a file, raises an InputError naming it and is left as it is."""
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    if ckpt_dir.exists() and not ckpt_dir.is_dir():
        raise InputError("is a file; a model checkpoint is a folder", where=str(ckpt_dir))
    # Replace only what an earlier save wrote: whatever else the folder holds is someone's data.
    is_checkpoint = (ckpt_dir / MODEL_CONFIG_FILE).is_file() and (ckpt_dir / PARAMS_DIR).is_dir()
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()) and not is_checkpoint:
        raise InputError("is not empty and not a lima_jax model checkpoint (model_config.json + params/)",
                         where=str(ckpt_dir), hint="choose a new or empty folder; nothing was written")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    params_dir = ckpt_dir / PARAMS_DIR
    if params_dir.exists():
        shutil.rmtree(params_dir)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(params_dir, pure)
        checkpointer.wait_until_finished()
    (ckpt_dir / MODEL_CONFIG_FILE).write_text(model.config.to_json())
    for name in TOKENIZER_FILES:
        (ckpt_dir / name).unlink(missing_ok=True)
    if tokenizer is not None:
        tokenizer.write_files(ckpt_dir)
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, ckpt_dir / TOKENIZER_FILE)
    return ckpt_dir


def model_tokenizer(ckpt_dir: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer a model checkpoint holds (`save_model`'s files), None when it holds none.
    Its end of turn is the model's: the new EOT when `model_config.json` names the id after the
    tokenizer's, the token at that id when it names one of the tokenizer's own; a model without
    an end-of-turn id gets the default (a new EOT the model has no row for)."""
    ckpt_dir = pathlib.Path(ckpt_dir)
    if tokenizer_file_in(ckpt_dir) is None:
        return None
    tokenizer = Tokenizer.load(ckpt_dir)
    eot_id = load_model_config(ckpt_dir).eot_token_id
    if eot_id is not None and eot_id < tokenizer.base_vocab_size:
        tokenizer = tokenizer.with_eot(tokenizer.id_to_piece(eot_id))
    return tokenizer


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
    targets = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_pure, _sharding_pure(abstract_pure, shardings))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(ckpt_dir / PARAMS_DIR, targets)
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state)


def read_model_tables(ckpt_dir: str | os.PathLike) -> dict:
    """The vocabulary tables of a `save_model` checkpoint on the host (numpy, as stored):
    ``embedding`` [V_padded, D] and, untied, ``lm_head`` [D, V_padded]. A partial restore: the
    layers stay on disk."""
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(load_model_config(ckpt_dir)), nnx.Param))
    tables = {name: abstract[name] for name in ("embedding", "lm_head") if name in abstract}
    with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(ckpt_dir / PARAMS_DIR, args=ocp.args.PyTreeRestore(
            item=tables, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tables),
            partial_restore=True))


def _sharding_pure(abstract_pure: dict, shardings) -> dict:
    """A pure dict of shardings for the parameters: `shardings` (an nnx State of shardings, or
    already a pure dict, the trainer's), or the default device for every parameter."""
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda _: device, abstract_pure)
    return shardings if type(shardings) is dict else nnx.to_pure_dict(shardings)


def read_train_meta(step_dir: str | os.PathLike) -> dict:
    """The `meta` item of a training step directory: the resolved run config, the model config
    (`model_config`), the tokenizer (`tokenizer_model_b64`, `tokenizer_path`) and the epoch."""
    step_dir = pathlib.Path(step_dir).absolute()
    checkpointer = TrainCheckpointer(step_dir.parent, async_save=False)
    try:
        return checkpointer.read_meta(int(step_dir.name))
    finally:
        checkpointer.close()


def load_train_model(step_dir: str | os.PathLike, config: LlamaConfig, *, shardings=None) -> Llama:
    """The model of a training step directory (`WORKDIR/checkpoints/<step>`) with `config` (its
    meta's `model_config`, numerics such as dtype possibly changed). Only the parameters are
    read (an orbax partial restore): the optimizer state stays on disk. `shardings` as in
    `load_model`."""
    graphdef, abstract_state = nnx.split(abstract_model(config))
    pure = nnx.to_pure_dict(abstract_state)
    nnx.replace_by_pure_dict(abstract_state, read_train_params(step_dir, pure, _sharding_pure(pure, shardings)))
    return nnx.merge(graphdef, abstract_state)


def read_train_params(step_dir: str | os.PathLike, abstract_params: dict, shardings: dict) -> dict:
    """The parameters (a pure dict shaped like `abstract_params`, placed in `shardings`) of a
    training step directory; a LoRA run's hold its adapters only."""
    step_dir = pathlib.Path(step_dir).absolute()
    checkpointer = TrainCheckpointer(step_dir.parent, async_save=False)
    try:
        return checkpointer.restore_params(int(step_dir.name), abstract_params, shardings)
    finally:
        checkpointer.close()


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
        self._written = _WrittenBytes(self.manager, self.directory)

    @property
    def bytes_written(self) -> int:
        """What this checkpointer's saves wrote (the last one counted once it has finished)."""
        return self._written.total

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_newest(self, abstract_state: dict) -> tuple[int, tuple[dict, dict, dict], list[int]]:
        """(step, (state, data_state, meta), steps skipped) of the newest checkpoint that restores
        with finite weights (`newest_that_restores`); one saved for another model's shapes
        raises a CheckpointError instead."""

        def restore(step: int):
            check_param_shapes(self.directory / str(step), abstract_state["params"])
            restored = self.restore(step, abstract_state)
            check_finite(restored[0]["params"])
            return restored

        return newest_that_restores(self.all_steps(), restore, self.directory.parent)

    def set_aside(self, steps: Sequence[int]) -> list[pathlib.Path]:
        """Moves the step directories `steps` out of `checkpoints/` into `UNRESTORABLE_DIR`
        beside it (process 0; every host waits), so the run can save those steps again."""
        moved = []
        if jax.process_index() == 0:
            aside = self.directory.parent / UNRESTORABLE_DIR
            aside.mkdir(exist_ok=True)
            for step in steps:
                target = aside / str(step)
                suffix = 1
                while target.exists():
                    target, suffix = aside / f"{step}.{suffix}", suffix + 1
                shutil.move(str(self.directory / str(step)), target)
                moved.append(target)
        sharding_lib.sync_hosts("lima_jax.checkpoint.set_aside")
        self.manager.reload()
        return moved

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: dict, data_state: dict, meta: dict) -> None:
        """Starts saving (asynchronously when configured); returns once the arrays are copied."""
        self._written.count_last()
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._written.last = step

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

    def restore_params(self, step: int, abstract_params: dict, shardings: dict) -> dict:
        """Only the parameters of `step`'s train state (a partial restore), as a pure dict laid
        out like `abstract_params` and placed by `shardings` (a pure dict of the same tree)."""
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                         restore_args={"params": restore_args},
                                         partial_restore=True)))
        return restored["state"]["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self._written.count_last()
        self.manager.wait_until_finished()
        self.manager.close()


class _WrittenBytes:
    """The bytes an orbax manager's saves wrote: each save's directory is measured once it has
    finished (the manager waits), before a newer save's preservation policy could delete it."""

    def __init__(self, manager, directory: pathlib.Path):
        self.manager, self.directory = manager, directory
        self.total = 0
        self.last: int | None = None  # the step saved last and not yet counted

    def count_last(self) -> None:
        if self.last is not None:
            self.manager.wait_until_finished()
            step_dir = self.directory / str(self.last)
            self.total += sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file())
            self.last = None


# --------------------------------------------------------------------------- selection snapshots


class SnapshotWriter:
    """Parameters-only snapshots of a run in `WORKDIR/snapshots/<step>/` (params/ in the
    snapshot dtype, meta/: the resolved config, the model config, the tokenizer, the step):
    what choosing between epochs needs, 6x smaller than a float32 train state with its Adam
    moments in bfloat16. Orbax writes each one into a temporary directory and renames it when
    complete; every snapshot is kept. `bytes_written` counts what the saves wrote."""

    def __init__(self, directory: str | os.PathLike, *, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=True)
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._written = _WrittenBytes(self.manager, self.directory)

    @property
    def bytes_written(self) -> int:
        return self._written.total

    def save(self, step: int, params: dict, meta: dict, dtype: str) -> bool:
        """Starts saving `params` (a pure dict) cast to `dtype`; False when `step` is already
        there (a resumed run passing an epoch end it had saved: the same parameters)."""
        if step in self.manager.all_steps():
            return False
        self._written.count_last()
        cast = jax.tree.map(lambda x: x.astype(dtype), params)
        self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(cast),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
        self._written.last = step
        return True

    def close(self) -> None:
        self._written.count_last()
        self.manager.wait_until_finished()
        self.manager.close()


def read_snapshot_meta(step_dir: str | os.PathLike) -> dict:
    """The `meta` item of a snapshot (`SnapshotWriter`): as a train step's, its `model_config`
    naming the snapshot's parameter dtype."""
    step_dir = pathlib.Path(step_dir).absolute()
    manager = ocp.CheckpointManager(step_dir.parent, options=ocp.CheckpointManagerOptions(create=False))
    try:
        return manager.restore(int(step_dir.name), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()


def load_snapshot_model(step_dir: str | os.PathLike, config: LlamaConfig, *, shardings=None) -> Llama:
    """The model of a snapshot directory with `config` (its meta's `model_config`, numerics
    such as the compute dtype possibly changed); `shardings` as in `load_model`."""
    graphdef, abstract_state = nnx.split(abstract_model(config))
    pure = nnx.to_pure_dict(abstract_state)
    nnx.replace_by_pure_dict(abstract_state, read_snapshot_params(step_dir, pure, _sharding_pure(pure, shardings)))
    return nnx.merge(graphdef, abstract_state)


def read_snapshot_params(step_dir: str | os.PathLike, abstract_params: dict, shardings: dict) -> dict:
    """A snapshot's parameters (as `read_train_params`)."""
    step_dir = pathlib.Path(step_dir).absolute()
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
    manager = ocp.CheckpointManager(step_dir.parent, options=ocp.CheckpointManagerOptions(create=False))
    try:
        return manager.restore(int(step_dir.name), args=ocp.args.Composite(
            params=ocp.args.PyTreeRestore(item=abstract_params, restore_args=restore_args)))["params"]
    finally:
        manager.close()
