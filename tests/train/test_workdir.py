"""One run per workdir (`lima_jax.train.workdir`): a second run into a used workdir is refused
before anything is touched, `config.overwrite` replaces it (only the trainer's files),
`config.resume` needs a checkpoint and the run's own recipe and data; and a config that cannot
work stops in one line: a workdir that is a file, a mesh the devices do not fit, a checkpoint of
another model."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lima_jax.checkpoint import CheckpointError, kept_steps
from lima_jax.train import train
from lima_jax.train.config import RunConfigError, get_base_config
from lima_jax.train.workdir import RESUMABLE_KEYS, RUN_FILE, changed_keys, fingerprint
from tests.helpers.train_configs import losses, tiny_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config(tmp_path: pathlib.Path, *, resume=False, overwrite=False, seed=0, **changes):
    changes = {"train__eval_data": "", "train__max_steps": 2, **changes}
    c = tiny_config(tmp_path / "run", tmp_path / "data", **changes)
    c.resume, c.overwrite, c.seed = resume, overwrite, seed
    return c


def _files(workdir: pathlib.Path) -> dict[str, bytes]:
    """Every file of the run's metrics and checkpoints, by path, with its bytes."""
    paths = [workdir / "metrics.jsonl", *(workdir / "checkpoints").rglob("*")]
    return {str(p.relative_to(workdir)): p.read_bytes() for p in paths if p.is_file()}


def test_a_second_run_is_refused_untouched_and_overwrite_replaces_it(tmp_path):
    run = tmp_path / "run"
    train(_config(tmp_path))
    (run / "notes.txt").write_text("mine")
    before = _files(run)

    with pytest.raises(RunConfigError, match=r"config\.resume: .*run already holds a run \(the "
                       r"checkpoint of step 2 and metrics\.jsonl\); continue it with --config\.resume="
                       r"True, replace it with --config\.overwrite=True"):
        train(_config(tmp_path, train__max_steps=3))
    assert _files(run) == before  # nothing of the first run was touched

    summary = train(_config(tmp_path, overwrite=True, train__max_steps=3))
    assert summary["start_step"] == 0 and summary["status"] == "completed"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the new run alone, no line of the old one
    assert kept_steps(run) == [3]
    assert (run / "notes.txt").read_text() == "mine"  # not a file the trainer writes


def test_resume_needs_a_checkpoint_and_never_erases_metrics(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RunConfigError, match=r"config\.resume: nothing to resume in .*run: no checkpoint; "
                       r"start a new run without --config\.resume$"):
        train(_config(tmp_path, resume=True))

    # A run killed before its first checkpoint leaves only metrics.
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    with pytest.raises(RunConfigError, match=r"only metrics\.jsonl.*--config\.overwrite=True"):
        train(_config(tmp_path, resume=True))
    with pytest.raises(RunConfigError, match=r"already holds a run \(metrics\.jsonl, no checkpoint\)"):
        train(_config(tmp_path))
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 5.0}\n'

    # resume + overwrite: continue if there is a checkpoint, else start over (one command to rerun).
    first = train(_config(tmp_path, resume=True, overwrite=True))
    assert first["start_step"] == 0 and losses(run)[1] != 5.0
    again = train(_config(tmp_path, resume=True, overwrite=True, train__max_steps=3))
    assert again["start_step"] == 2 and sorted(losses(run)) == [1, 2, 3]


def test_resume_keeps_the_recipe_and_the_data(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data" / "train.jsonl"
    train(_config(tmp_path))
    recorded = json.loads((run / RUN_FILE).read_text())
    assert recorded["data"]["data.path"][0]["sha256"] and recorded["config"]["optimizer"]["b2"] == 0.95

    with pytest.raises(RunConfigError, match=r"config\.optimizer\.learning_rate: the run in .*run was "
                       r"started with other values: config\.optimizer\.learning_rate \(0\.001 then, "
                       r"0\.002 now\); config\.seed \(0 then, 3 now\)"):
        train(_config(tmp_path, resume=True, optimizer__learning_rate=2e-3, seed=3))
    original = data.read_bytes()
    data.write_bytes(original + original.splitlines(keepends=True)[0])
    with pytest.raises(RunConfigError, match=r"config\.data\.path: .*config\.data\.path \(its files' "
                       r"content changed\)"):
        train(_config(tmp_path, resume=True))
    data.write_bytes(original)

    # How far to run, how often to log and save, and the mesh may change.
    summary = train(_config(tmp_path, resume=True, train__max_steps=4, train__log_every=2,
                            checkpoint__every_steps=1, mesh__data=2, mesh__fsdp=-1))
    assert summary["start_step"] == 2 and summary["status"] == "completed"
    assert json.loads((run / RUN_FILE).read_text()) == recorded  # the run's start stays recorded


def test_which_keys_a_resumed_run_may_change(tmp_path):
    before = fingerprint(_config(tmp_path))
    allowed = _config(tmp_path, resume=True, overwrite=True, train__max_steps=9, train__log_every=5,
                      checkpoint__async_save=True, train__eval_every_epochs=2, mesh__tensor=2,
                      distributed__initialize="no", model__remat="full")
    allowed.workdir = str(tmp_path / "moved")
    assert changed_keys(before, fingerprint(allowed)) == []
    recipe = _config(tmp_path, data__global_batch_size=8, train__grad_accum_steps=2,
                     model__residual_dropout=0.0)
    assert changed_keys(before, fingerprint(recipe)) == [
        "data.global_batch_size", "model.residual_dropout", "train.grad_accum_steps"]
    assert "train.max_steps" in RESUMABLE_KEYS and "optimizer" not in RESUMABLE_KEYS


def test_resume_with_another_model_shape_is_one_error(tmp_path):
    run = tmp_path / "run"
    train(_config(tmp_path))
    with pytest.raises(RunConfigError, match=r"config\.model\.n_layers: .*\(0 then, 3 now\)"):
        train(_config(tmp_path, resume=True, model__n_layers=3))
    # Without run.json (a run of an older lima_jax) the checkpoint's own shapes stop it.
    (run / RUN_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"checkpoints/2: holds parameter layers\.attention\.wk of "
                       r"shape \(2, .*\), but the config's model makes \(3, .*\) \(resume with the model"):
        train(_config(tmp_path, resume=True, model__n_layers=3))
    assert not (run / RUN_FILE).exists()  # recorded only once a resumed run has restored
    assert train(_config(tmp_path, resume=True, train__max_steps=3))["start_step"] == 2
    assert (run / RUN_FILE).exists()


def test_a_workdir_that_is_a_file_or_a_mesh_that_does_not_fit_stops_before_anything(tmp_path):
    c = _config(tmp_path)
    pathlib.Path(c.workdir).write_text("a file")
    with pytest.raises(RunConfigError, match=r"config\.workdir: .*run is a file, not a directory$"):
        train(c)
    c = _config(tmp_path, mesh__data=3)
    c.workdir = str(tmp_path / "fresh")
    with pytest.raises(RunConfigError, match=r"config\.mesh: data=3, fsdp=-1, tensor=1 does not fit "
                       r"the 8 devices: the fixed axes multiply to 3, which does not divide the 8 "
                       r"devices"):
        train(c)
    assert not (tmp_path / "fresh").exists()


def _cli(*args, devices=1):
    return subprocess.run(
        [sys.executable, "-m", "lima_jax.train", "--config", str(REPO / "configs" / "demo.py"), *args],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"))


def test_the_demo_run_twice_into_one_workdir_says_what_to_do(tmp_path):
    quick = ("--config.train.max_steps=1", "--config.train.eval_exact_match=False",
             "--config.train.eval_at_start=False")
    first = _cli(f"--config.workdir={tmp_path / 'w'}", *quick)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _cli(f"--config.workdir={tmp_path / 'w'}", *quick)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: config.resume: {tmp_path / 'w'} already holds a run (the checkpoint of step 1 and "
        "metrics.jsonl); continue it with --config.resume=True, replace it with "
        "--config.overwrite=True (its checkpoints and metrics are deleted), or choose another "
        f"--config.workdir than {tmp_path / 'w'}")

    (tmp_path / "file").write_text("x")
    as_file = _cli(f"--config.workdir={tmp_path / 'file'}")
    mesh = _cli(f"--config.workdir={tmp_path / 'm'}", "--config.mesh.data=3", devices=8)
    for result, line in ((as_file, f"error: config.workdir: {tmp_path / 'file'} is a file, not a directory"),
                         (mesh, "error: config.mesh: data=3, fsdp=-1, tensor=1 does not fit the 8 devices")):
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(line)


def test_a_key_newer_than_the_run_counts_as_its_default():
    import copy

    from lima_jax.train.workdir import changed_keys

    now = json.loads(get_base_config().to_json_best_effort())
    recorded = copy.deepcopy(now)
    del recorded["train"]["grad_accum_steps"]  # as a run.json written before the key existed
    assert changed_keys({"config": recorded, "data": {}}, {"config": now, "data": {}}) == []
    now["train"]["grad_accum_steps"] = 4
    assert changed_keys({"config": recorded, "data": {}}, {"config": now, "data": {}}) == ["train.grad_accum_steps"]
