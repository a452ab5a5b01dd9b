"""`python -m lima_jax.train --config configs/NAME.py [--config.section.key=value ...]`

LIMA supervised fine-tuning, top to bottom: hosts, config and workdir (one run per workdir:
`lima_jax.train.workdir`), data, model and optimizer, shardings, state (restored from the
newest checkpoint that restores, or initialised shape-first), compile, the loop (with
per-epoch checkpoints, held-out evaluation, metrics, the SIGTERM watch of
`lima_jax.train.preemption` and the NaN/inf guard), and the end-of-run report. The same
command runs on every host of a pod (README "Training").

The loop never makes the device wait for the host (README "Training"): batches are built and
placed ahead by `lima_jax.train.prefetch`, and step n's metrics are read (`jax.device_get`, which
waits for the step) only once step n+1 is dispatched, so the device always has a step queued.
Where the host needs the state after step n (a checkpoint, an evaluation, a preemption, the last
step), it first reads step n's metrics: the NaN/inf guard has spoken before anything is saved.
The metrics lines are those of a loop that reads every step at once, in the same order. (Only
the fallback SIGTERM watch of hosts without JAX's preemption service, an all-gather every step,
still waits for each step.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time

import jax
import ml_collections
import numpy as np

from lima_jax import sharding as sharding_lib
from lima_jax.checkpoint import CHECKPOINTS_DIR, EPOCHS_FILE, SNAPSHOTS_DIR, SnapshotWriter, TrainCheckpointer
from lima_jax.chips import peak_flops_per_device
from lima_jax.data import build_pipeline
from lima_jax.errors import LimaError
from lima_jax.jsonl import write_json
from lima_jax.model import lora as lora_lib
from lima_jax.train.base_weights import LORA_BASE_META, initial_params
from lima_jax.train.config import make_run_mesh, validate_config
from lima_jax.train.metrics import MetricsLogger, StepTimer, plot_loss_curve
from lima_jax.train.preemption import watch_preemption
from lima_jax.train.prefetch import LOOP_EVENTS, BatchPrefetcher, global_batch
from lima_jax.train.state import (
    check_train_serve,
    ids_the_run_needs,
    make_model_config,
    prepare_demo_data,
)
from lima_jax.train.state_sizes import model_flops_per_token
from lima_jax.train.step import ShardedTrainStep, compile_train_step
from lima_jax.train.workdir import check_run, claim_workdir, record_run

log = logging.getLogger("lima_jax.train")


class TrainingError(LimaError, RuntimeError):
    """The run cannot go on (a NaN loss, say); the message says where and what is kept."""

    exit_code = 1  # the input was fine; the run stopped on its own


def _non_finite_error(step: int, metrics: dict, last_saved: int | None,
                      directory: pathlib.Path) -> TrainingError:
    """The stop of the NaN/inf guard: the step's update was not applied (`StepFunctions`), so
    the last checkpoint holds the weights of the last finite step."""
    kept = f"step {last_saved}" if last_saved is not None else "none"
    return TrainingError(
        f"step {step}: the loss is {float(metrics['loss'])}, the gradient norm "
        f"{float(metrics['grad_norm'])}; the update was not applied and the run stops. The last "
        f"good checkpoint is {kept} in {directory}",
        hint="lower optimizer.learning_rate or set optimizer.clip_norm, then start again")


def _every(interval: int, step: int) -> bool:
    """Whether `step` is one of every `interval` steps (0: none is)."""
    return bool(interval) and step % interval == 0


def _stop_at_non_finite(step: int, metrics: dict, last_saved: int | None,
                        checkpointer: TrainCheckpointer, metrics_log: MetricsLogger) -> TrainingError:
    """The guard's stop: an `update_skipped` line, the saves in flight finished (the last good
    checkpoint is whole), the logs closed; returns the error to raise."""
    metrics_log.log({"step": step, "update_skipped": {
        "loss": str(float(metrics["loss"])), "grad_norm": str(float(metrics["grad_norm"]))}})
    checkpointer.close()
    metrics_log.close()
    return _non_finite_error(step, metrics, last_saved, checkpointer.directory)


@dataclasses.dataclass(frozen=True)
class _StepInFlight:
    """A dispatched step whose metrics the host has not read yet."""

    step: int  # counted from 1, as metrics.jsonl counts them
    metrics: dict  # still on the device
    dispatched_at: float  # time.perf_counter() just before the dispatch


def _read_metrics(flight: _StepInFlight, timer: StepTimer) -> tuple[dict, float]:
    """The step's metrics on the host (this waits for the step to end) and its step_time_s."""
    LOOP_EVENTS.record("read", flight.step)
    metrics = jax.device_get(flight.metrics)
    return metrics, timer.finished(flight.dispatched_at)


@dataclasses.dataclass(frozen=True)
class _StepLines:
    """Each step's line in metrics.jsonl (every `train.log_every` steps and the last step) and
    its tick of the progress bar."""

    metrics_log: MetricsLogger
    epoch_ends: list[int]
    run_steps: int
    log_every: int
    flops_per_token: float
    peak: float | None  # the chip's peak FLOP/s; None where unknown (no MFU)

    def epoch(self, step: int) -> int:
        """The epoch (from 1) that `step` (from 1) belongs to."""
        return int(np.searchsorted(self.epoch_ends, step, side="left")) + 1

    def write(self, step: int, metrics: dict, step_time: float) -> None:
        tokens_per_s = float(metrics["tokens"]) / step_time
        if step % self.log_every == 0 or step == self.run_steps:
            mfu = (self.flops_per_token * tokens_per_s / jax.device_count() / self.peak) if self.peak else None
            self.metrics_log.log({
                "step": step, "epoch": self.epoch(step), "loss": float(metrics["loss"]),
                "lr": float(metrics["lr"]), "grad_norm": float(metrics["grad_norm"]),
                "tokens_per_s": tokens_per_s, "step_time_s": step_time, "mfu": mfu,
                "loss_tokens": float(metrics["loss_tokens"]),
            })
        self.metrics_log.advance()


def _say_on_every_host(metrics_log: MetricsLogger, message: str) -> None:
    """`message` from every host (process 0 through its progress bar), each naming itself."""
    if jax.process_count() > 1:
        message = f"process {jax.process_index()}: {message}"
    if jax.process_index() == 0:
        metrics_log.write(message)
    else:
        print(f"train: {message}", flush=True)


def _evaluate(sharded: ShardedTrainStep, params, pipeline) -> dict:
    totals = {"ce_sum": 0.0, "tokens": 0.0, "correct": 0.0}
    for step in range(pipeline.num_steps):
        batch = global_batch(pipeline.batch(step), sharded.rows)
        sums = jax.device_get(sharded.evaluate(params, batch))
        for key in totals:
            totals[key] += float(sums[key])
    tokens = max(totals["tokens"], 1.0)
    return {"eval_loss": totals["ce_sum"] / tokens, "eval_token_accuracy": totals["correct"] / tokens}


def _compile_only(config: ml_collections.ConfigDict) -> dict:
    """The pod plan check: compile the step for `config.topology`, report memory, stop."""
    from lima_jax.train.aot import compile_plan, format_plan

    report = compile_plan(config)
    if jax.process_index() == 0:
        print(format_plan(report), flush=True)
        if config.workdir:
            workdir = pathlib.Path(config.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            write_json(workdir / "plan.json", report)
    return report


def checkpointed(fns, state: dict) -> dict:
    """What a checkpoint holds of the train state: all of it, or under LoRA all but the frozen
    base (read again from model.init_from: `lima_jax.train.base_weights`)."""
    return {**state, "params": fns.trainable(state["params"])} if fns.lora else state


def _restore(checkpointer: TrainCheckpointer, sharded: ShardedTrainStep, iterator) -> tuple[dict, int]:
    """(state, its step) from the newest checkpoint that restores; the ones that do not are
    named (a warning) and set aside, so the run can save those steps again."""
    saved, (state, data_state, _), skipped = checkpointer.restore_newest(checkpointed(sharded.fns, sharded.abstract_state))
    if skipped:
        moved = checkpointer.set_aside(skipped)
        if moved:
            print(f"train: moved the checkpoints that did not restore to {moved[0].parent}", flush=True)
    iterator.set_state(data_state)
    step = int(jax.device_get(state["step"]))
    if jax.process_index() == 0:
        print(f"train: resumed from {checkpointer.directory / str(saved)} at step {step}", flush=True)
    return state, step


def train(config: ml_collections.ConfigDict) -> dict:
    """Runs (or resumes) the training run `config` describes; returns a summary dict."""
    # ---------------------------------------------------------------- hosts, config and workdir
    sharding_lib.maybe_initialize_distributed(config)
    validate_config(config)
    if config.compile_only:
        return _compile_only(config)
    is_main = jax.process_index() == 0
    mesh = make_run_mesh(config)
    workdir = pathlib.Path(config.workdir).absolute()
    resume = claim_workdir(config, workdir)  # one run per workdir: refuse, resume or start over
    prepare_demo_data(config, workdir)
    check_run(config, workdir, resume)  # a resumed run keeps its recipe and data (run.json)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        log.info("resolved config:\n%s", config)

    # ---------------------------------------------------------------- data
    pipeline = build_pipeline(config.data, workdir=str(workdir))
    tokenizer = pipeline.tokenizer
    total_steps = pipeline.num_steps
    run_steps = min(total_steps, config.train.max_steps or total_steps)
    epoch_ends = [int(x) for x in np.cumsum(pipeline.steps_per_epoch)]
    if is_main:  # where each epoch ends, for `python -m lima_jax.evaluate select`
        write_json(workdir / EPOCHS_FILE, {"epoch_end_steps": epoch_ends})
    if is_main:
        print(f"train: {total_steps} steps in {len(epoch_ends)} epochs"
              + (f", cut to {run_steps} by train.max_steps" if run_steps < total_steps else ""),
              flush=True)

    # ---------------------------------------------------------------- model, optimizer, shardings
    check_train_serve(config, tokenizer)  # before any weight loads or anything compiles
    needed_ids = sorted(ids_the_run_needs(tokenizer, pipeline.examples.ids))
    model_config = make_model_config(config, tokenizer, needed_ids)
    sharded = compile_train_step(config, model_config, mesh, total_steps)
    fns, rows = sharded.fns, sharded.rows

    # ---------------------------------------------------------------- state: restore or init
    keep = [epoch_ends[e - 1] for e in range(config.checkpoint.keep_epochs_from,
                                             config.checkpoint.keep_epochs_to + 1)
            if 0 < e <= len(epoch_ends)]
    # checkpoint.selection: the kept epochs as parameters-only snapshots (only the latest full
    # state stays), or as full train states (README "Training").
    snapshots = config.checkpoint.selection == "snapshot"
    checkpointer = TrainCheckpointer(workdir / CHECKPOINTS_DIR, keep_steps=() if snapshots else keep,
                                     async_save=config.checkpoint.async_save)
    snapshot_writer = SnapshotWriter(workdir / SNAPSHOTS_DIR, async_save=config.checkpoint.async_save) \
        if snapshots and keep else None
    iterator = pipeline.iterator()
    start_step = 0

    def starting_params():
        return initial_params(config.model.init_from, model_config, sharded.param_shardings, needed_ids,
                              rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), rules=sharded.rules)

    if resume:
        state, start_step = _restore(checkpointer, sharded, iterator)
        if fns.lora:  # checkpoints hold the adapters: the frozen base is read again, as at the start
            state["params"] = lora_lib.join(state["params"], lora_lib.split_trainable(starting_params())[1])
    else:
        params = starting_params()
        state = sharded.init_state(jax.random.PRNGKey(config.seed), params)
        del params  # the state holds them now
    record_run(config, workdir, resume)  # the fingerprint in run.json

    # ---------------------------------------------------------------- compile
    example = global_batch(pipeline.batch(min(start_step, total_steps - 1)), rows)
    compiled = sharded.compile(state, example)
    compile_s = compiled.compile_s
    memory = compiled.memory_analysis()
    if is_main:
        print(f"train: step compiled in {compile_s:.1f}s"
              + (f"; per-device temp {memory.temp_size_in_bytes / 2**20:.1f} MiB, "
                 f"arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB"
                 if memory is not None else ""), flush=True)

    eval_pipeline = None
    if config.train.eval_data:
        eval_data = ml_collections.ConfigDict(config.data.to_dict())
        eval_data.path, eval_data.num_epochs, eval_data.shuffle = config.train.eval_data, 1, False
        eval_data.tokenizer = tokenizer.path or eval_data.tokenizer
        eval_pipeline = build_pipeline(eval_data, tokenizer=tokenizer, workdir=str(workdir))

    # ---------------------------------------------------------------- loop
    # 6 FLOPs per matmul parameter, and under LoRA 4 per frozen one (no weight gradient).
    flops_per_token = model_flops_per_token(model_config, config.data.max_len)
    peak = peak_flops_per_device()
    metrics_log = MetricsLogger(workdir, enabled=is_main, total_steps=run_steps,
                                initial_step=start_step)
    # The tokenizer travels inside every checkpoint, so a checkpoint is self-contained.
    meta = {"config": json.loads(config.to_json_best_effort()), **tokenizer.to_meta(),
            "model_config": model_config.to_dict()}
    if fns.lora:  # how to read the frozen base again (decode, export, resume)
        meta[LORA_BASE_META] = {"needed_ids": needed_ids}

    def save(step: int, data_state: dict):
        """The state after `step`, with the data iterator's state that goes with it (the
        prefetch thread has moved the iterator itself further on)."""
        checkpointer.save(step, checkpointed(fns, state), data_state, dict(meta, step=step))

    snapshot_dtype = config.checkpoint.snapshot_dtype
    snapshot_meta = dict(meta, model_config=model_config.replace(param_dtype=snapshot_dtype).to_dict())

    def save_snapshot(step: int):
        """The parameters after `step`, in checkpoint.snapshot_dtype, for choosing between epochs."""
        snapshot_writer.save(step, fns.trainable(state["params"]), dict(snapshot_meta, step=step), snapshot_dtype)

    summary = {"compile_s": compile_s, "start_step": start_step, "total_steps": total_steps}
    def generation_score() -> dict:
        if not (config.train.eval_exact_match and eval_pipeline is not None):
            return {}
        if jax.process_count() > 1:
            log.info("train.eval_exact_match: skipped on a multi-host run")
            return {}
        from lima_jax.train.held_out import exact_match

        result = exact_match(fns.model(state["params"]), tokenizer, config.train.eval_data,
                             template=config.data.template)
        return {"eval_exact_match": result["exact_match"], "eval_example": result.get("sample")}

    if eval_pipeline is not None and start_step == 0 and config.train.eval_at_start:
        summary["eval_at_start"] = _evaluate(sharded, state["params"], eval_pipeline)
        summary["eval_at_start"].update(generation_score())
        metrics_log.log({"step": 0, **summary["eval_at_start"]})
        metrics_log.write(f"held-out before training: {summary['eval_at_start']}")

    last_saved = start_step if resume else None
    lines = _StepLines(metrics_log, epoch_ends=epoch_ends, run_steps=run_steps,
                       log_every=config.train.log_every, flops_per_token=flops_per_token, peak=peak)
    timer = StepTimer()

    def finish(flight: _StepInFlight) -> None:
        """The host's part of a step, once its metrics arrive: the NaN/inf guard, then its line."""
        metrics, step_time = _read_metrics(flight, timer)
        if not metrics["finite"]:  # the step kept the old state: stop before saving anything
            raise _stop_at_non_finite(flight.step, metrics, last_saved, checkpointer, metrics_log)
        lines.write(flight.step, metrics, step_time)

    status = "completed"
    in_flight = None  # the step last dispatched, until its metrics are read
    batches = BatchPrefetcher(iterator, rows, first_step=start_step + 1, count=run_steps - start_step)
    with watch_preemption() as preemption, batches:
        for batch in batches:
            done = batch.step
            dispatched_at = time.perf_counter()
            state, metrics = compiled(state, batch.arrays)
            LOOP_EVENTS.record("dispatch", done)
            if in_flight is not None:
                finish(in_flight)  # the previous step's metrics, read while the device runs this one
            in_flight = _StepInFlight(done, metrics, dispatched_at)
            epoch = lines.epoch(done)
            at_epoch_end = done in epoch_ends
            snapshot_due = snapshot_writer is not None and done in keep
            save_due = (at_epoch_end and not snapshots) or _every(config.checkpoint.every_steps, done)
            eval_due = (at_epoch_end and eval_pipeline is not None
                        and epoch % config.train.eval_every_epochs == 0)
            preempted = preemption.reached(done)  # every host reaches it at the same step
            if not (save_due or snapshot_due or eval_due or preempted or done == run_steps):
                continue  # the next step is dispatched before this one's metrics are read
            # The state after this step is about to be saved or evaluated: the guard speaks first.
            finish(in_flight)
            in_flight = None
            if save_due:
                save(done, batch.data_state)
                last_saved = done
            if snapshot_due:
                save_snapshot(done)
            if eval_due:
                result = _evaluate(sharded, state["params"], eval_pipeline)
                metrics_log.log({"step": done, "epoch": epoch, **result})
                metrics_log.write(f"epoch {epoch}: held-out {result}")
            if preempted:
                if last_saved != done:
                    save(done, batch.data_state)
                    last_saved = done
                status = "preempted"
                _say_on_every_host(metrics_log, f"SIGTERM (preemption): saved step {done}, exiting")
                break
            if done == run_steps and last_saved != done:  # the end of the run
                save(done, batch.data_state)
                last_saved = done
    checkpointer.close()
    if snapshot_writer is not None:
        snapshot_writer.close()

    # ---------------------------------------------------------------- report
    summary.update(status=status, last_checkpoint=last_saved,
                   checkpoint_bytes_written={"full_state": checkpointer.bytes_written,
                                             "snapshots": snapshot_writer.bytes_written if snapshot_writer else 0})
    if eval_pipeline is not None and status == "completed":
        summary["eval_at_end"] = _evaluate(sharded, state["params"], eval_pipeline)
        summary["eval_at_end"].update(generation_score())
        metrics_log.write(f"held-out after training: {summary['eval_at_end']}")
    metrics_log.close()
    if is_main:
        curve = plot_loss_curve(workdir / "metrics.jsonl", workdir / "loss_curve.png")
        summary["loss_curve"] = str(curve) if curve else None
        write_json(workdir / "summary.json", summary)
        print(f"train: {status}; summary in {workdir / 'summary.json'}", flush=True)
    return summary
