"""One workdir, one run: the rules `lima_jax.train` applies to `config.workdir` before it builds
anything (README "Training").

A workdir holds one training run. When the run starts its fingerprint is written to
`WORKDIR/run.json`: the resolved config and the sha256 of each data file (`config.data.path`,
`config.train.eval_data`, `config.data.tokenizer`). Then:

- without `config.resume`, a workdir that already holds a run (checkpoints or `metrics.jsonl`)
  is refused, unless `config.overwrite` asks for that run to be removed first (only the files the
  trainer writes, `TRAINER_OUTPUTS`);
- with `config.resume`, the workdir must hold a checkpoint to continue from, and the run must
  keep its recipe and data: a changed data file or a changed key outside `RESUMABLE_KEYS` is
  refused, naming it. With `config.overwrite` as well, a workdir without a checkpoint starts a
  new run instead, so a job that is simply run again after a preemption needs one command.

On a multi-host run every host checks (they read the same files), and only process 0 removes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import shutil

import jax
import ml_collections

from lima_jax import sharding as sharding_lib
from lima_jax.checkpoint import (
    CHECKPOINTS_DIR,
    EPOCHS_FILE,
    SNAPSHOTS_DIR,
    UNRESTORABLE_DIR,
    kept_steps,
    snapshot_steps,
)
from lima_jax.data.readers import split_paths
from lima_jax.data.tokenizer import tokenizer_file_in
from lima_jax.jsonl import read_json, write_json
from lima_jax.train.config import RunConfigError, get_base_config

log = logging.getLogger("lima_jax.train")

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
# Everything the trainer writes for a run; `config.overwrite` removes exactly these. Kept: the
# generated demo data (made again the same) and the trained-tokenizer cache (named by content).
TRAINER_OUTPUTS = (CHECKPOINTS_DIR, SNAPSHOTS_DIR, UNRESTORABLE_DIR, METRICS_FILE, "tensorboard", "summary.json",
                   "loss_curve.png", EPOCHS_FILE, RUN_FILE, "config.json")

# Keys a resumed run may change. They say how far to run, how often to log, evaluate and save,
# where the workdir is, and how hosts and devices share the work: none of them changes what a
# step computes (a new mesh or remat policy runs the same arithmetic elsewhere or in another
# order, to float rounding; a resumed multi-host job may come back on another slice). Every
# other key is the recipe, and a resumed run must keep it. (`train.grad_accum_steps` is the
# recipe: each micro-batch draws its own dropout mask.)
RESUMABLE_KEYS = (
    "workdir", "resume", "overwrite",
    "train.max_steps", "train.log_every",
    "train.eval_every_epochs", "train.eval_at_start", "train.eval_exact_match",
    "checkpoint", "plan",
    "mesh", "sharding_rules", "distributed", "compile_only", "topology",
    "model.remat", "model.scan_unroll", "train.loss_chunk_size",
    "data.train_tokenizer.cache_dir",
)
# Keys naming data files: compared by content (sha256), so a moved workdir or data folder is fine.
DATA_FILE_KEYS = ("data.path", "train.eval_data", "data.tokenizer")


def _resume_hint(workdir: pathlib.Path) -> str:
    return (f"continue it with --config.resume=True, replace it with --config.overwrite=True "
            f"(its checkpoints and metrics are deleted), or choose another --config.workdir than {workdir}")


def _describe_run(workdir: pathlib.Path) -> str:
    """What of a run is in `workdir`: 'the checkpoints of steps 7, 10 and metrics.jsonl', say."""
    steps, snapshots = kept_steps(workdir), snapshot_steps(workdir)
    metrics = (workdir / METRICS_FILE).exists()
    parts = []
    for name, found in (("checkpoint", steps), ("snapshot", snapshots)):
        if found:
            plural = "s" if len(found) > 1 else ""
            parts.append(f"the {name}{plural} of step{plural} {', '.join(map(str, found))}")
    if not parts:
        return f"{METRICS_FILE}, no checkpoint" if metrics else "no checkpoint"
    return ", ".join(parts) + (f" and {METRICS_FILE}" if metrics else "")


def holds_run(workdir: pathlib.Path) -> bool:
    """Whether `workdir` holds a training run: checkpoints, snapshots or metrics."""
    return bool(kept_steps(workdir) or snapshot_steps(workdir)) or (workdir / METRICS_FILE).exists()


def claim_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> bool:
    """Applies the workdir rules (the module docstring) and creates the workdir; returns True
    when the run resumes. A refusal is a RunConfigError naming `config.resume` or
    `config.workdir`; with `config.overwrite` the old run is removed here."""
    _check_is_directory(workdir)
    resume = _decide(config, workdir)
    if config.overwrite and not resume and holds_run(workdir):
        sharding_lib.sync_hosts("lima_jax.workdir.checked")  # every host decided before removal
        if jax.process_index() == 0:
            print(f"train: config.overwrite: removing the run in {workdir} ({_describe_run(workdir)})",
                  flush=True)
            remove_run(workdir)
    sharding_lib.sync_hosts("lima_jax.workdir.claimed")
    return resume


def _check_is_directory(workdir: pathlib.Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise RunConfigError("workdir", f"{workdir} is a file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunConfigError("workdir", f"cannot create {workdir}: {err.strerror}") from None


def _decide(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> bool:
    """True to resume, False to start a new run; refuses what would lose a run."""
    if not config.resume:
        if holds_run(workdir) and not config.overwrite:
            raise RunConfigError("resume", f"{workdir} already holds a run ({_describe_run(workdir)}); "
                                 + _resume_hint(workdir))
        return False
    if kept_steps(workdir):
        return True
    if config.overwrite:
        if jax.process_index() == 0:
            print(f"train: nothing to resume in {workdir}; starting a new run (config.overwrite)", flush=True)
        return False
    found = f" (only {METRICS_FILE}: the run stopped before its first checkpoint)" \
        if (workdir / METRICS_FILE).exists() else ""
    raise RunConfigError("resume", f"nothing to resume in {workdir}: no checkpoint{found}; start a "
                         "new run without --config.resume" + (", with --config.overwrite=True to "
                                                               "replace its metrics" if found else ""))


def remove_run(workdir: pathlib.Path) -> None:
    """Deletes the trainer's files of the run in `workdir` (TRAINER_OUTPUTS), nothing else."""
    for name in TRAINER_OUTPUTS:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# --------------------------------------------------------------------------- the fingerprint


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_fingerprint(value: str) -> list[dict]:
    """Each file a data key names with its sha256 (a TFDS name or a missing file: the name only)."""
    def file_of(path: str) -> pathlib.Path:  # a tokenizer given as its checkpoint directory: its file
        found = tokenizer_file_in(path) if pathlib.Path(path).is_dir() else None
        return found or pathlib.Path(path)

    return [{"path": path, "sha256": _sha256(file_of(path))} if file_of(path).is_file()
            else {"path": path} for path in split_paths(value)]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _get(config_json: dict, key: str):
    return _flat(config_json).get(key, "")


def fingerprint(config: ml_collections.ConfigDict) -> dict:
    """The run's identity: its resolved config (as JSON) and the sha256 of its data files."""
    config_json = json.loads(config.to_json_best_effort())
    return {"config": config_json,
            "data": {key: _data_fingerprint(_get(config_json, key)) for key in DATA_FILE_KEYS}}


def _resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_KEYS)


def changed_keys(before: dict, now: dict) -> list[str]:
    """The keys of two fingerprints that differ where a resumed run must keep them."""
    old, new = _flat(before["config"]), _flat(now["config"])
    # A key the run's lima_jax did not have yet counts as its default then (a newer version's
    # key at its default computes what the older version did).
    defaults = _flat(json.loads(get_base_config().to_json_best_effort()))
    old = {**{k: defaults[k] for k in new.keys() - old.keys() if k in defaults}, **old}
    keys = sorted(k for k in old.keys() | new.keys()
                  if not _resumable(k) and k not in DATA_FILE_KEYS and old.get(k) != new.get(k))
    keys += [k for k in DATA_FILE_KEYS
             if _contents(before["data"].get(k, [])) != _contents(now["data"].get(k, []))]
    return keys


def _contents(entries: list[dict]) -> list[str]:
    """What a data key's files hold: their sha256 (a name where there is no file to hash)."""
    return [entry.get("sha256", entry["path"]) for entry in entries]


def check_run(config: ml_collections.ConfigDict, workdir: pathlib.Path, resume: bool) -> None:
    """A resumed run must have the recipe and data it started with (its `run.json`); a
    RunConfigError names every key that changed."""
    path = workdir / RUN_FILE
    if not resume:
        return
    if path.is_file():
        _refuse_changes(read_json(path), fingerprint(config), workdir)
    else:
        log.warning("%s: missing (a run from an older lima_jax): its recipe and data cannot be "
                    "checked; today's are recorded once it has resumed", path)


def record_run(config: ml_collections.ConfigDict, workdir: pathlib.Path, resume: bool) -> None:
    """Writes the run's fingerprint to `run.json`: a new run's, or a resumed one's that has none
    (recorded only once its checkpoint has restored, so it holds the model that is there)."""
    path = workdir / RUN_FILE
    if resume and path.is_file():
        return
    now = fingerprint(config)
    sharding_lib.sync_hosts("lima_jax.workdir.fingerprinted")  # every host has read the old one
    if jax.process_index() == 0:
        write_json(path, now)


def _refuse_changes(before: dict, now: dict, workdir: pathlib.Path) -> None:
    changed = changed_keys(before, now)
    if not changed:
        return
    old, new = _flat(before["config"]), _flat(now["config"])

    def what(key: str) -> str:
        if key in DATA_FILE_KEYS:
            return f"config.{key} (its files' content changed)"
        return f"config.{key} ({old.get(key, 'absent')!r} then, {new.get(key, 'absent')!r} now)"

    raise RunConfigError(
        changed[0], f"the run in {workdir} was started with other values: "
        f"{'; '.join(what(k) for k in changed)}. A resumed run keeps its recipe and data (what may "
        "change: lima_jax.train.workdir.RESUMABLE_KEYS, such as train.max_steps, checkpoint.*, "
        "mesh.*); restore them, or start a new run in another workdir or with "
        "--config.overwrite=True without --config.resume")
