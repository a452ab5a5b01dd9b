"""`python -m lima_jax.train --config configs/NAME.py [--config.section.key=value ...]`

LIMA supervised fine-tuning, top to bottom: hosts, config and workdir (one run per workdir:
`lima_jax.train.workdir`), data, model and optimizer, shardings, state (restored from the
newest checkpoint that restores, or initialised shape-first), compile, the loop (with
per-epoch checkpoints, held-out evaluation, metrics, the SIGTERM watch of
`lima_jax.train.preemption` and the NaN/inf guard), and the end-of-run report. The same
command runs on every host of a pod (README "Training").
"""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import time

import jax
import ml_collections
import numpy as np

from lima_jax import sharding as sharding_lib
from lima_jax.checkpoint import CHECKPOINTS_DIR, EPOCHS_FILE, TrainCheckpointer
from lima_jax.chips import peak_flops_per_device
from lima_jax.data import build_pipeline
from lima_jax.errors import LimaError
from lima_jax.jsonl import write_json
from lima_jax.train.config import make_run_mesh, total_flops_per_token, validate_config
from lima_jax.train.metrics import MetricsLogger, plot_loss_curve
from lima_jax.train.preemption import watch_preemption
from lima_jax.train.state import initial_params, make_model_config, prepare_demo_data
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


def _say_on_every_host(metrics_log: MetricsLogger, message: str) -> None:
    """`message` from every host (process 0 through its progress bar), each naming itself."""
    if jax.process_count() > 1:
        message = f"process {jax.process_index()}: {message}"
    if jax.process_index() == 0:
        metrics_log.write(message)
    else:
        print(f"train: {message}", flush=True)


def _global_batch(local_batch: dict, rows: jax.sharding.NamedSharding) -> dict:
    """This host's rows -> global arrays sharded over the batch mesh axes."""
    return {k: jax.make_array_from_process_local_data(rows, np.asarray(v))
            for k, v in local_batch.items()}


def _evaluate(sharded: ShardedTrainStep, params, pipeline) -> dict:
    totals = {"ce_sum": 0.0, "tokens": 0.0, "correct": 0.0}
    for step in range(pipeline.num_steps):
        batch = _global_batch(pipeline.batch(step), sharded.rows)
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


def _restore(checkpointer: TrainCheckpointer, sharded: ShardedTrainStep, iterator) -> tuple[dict, int]:
    """(state, its step) from the newest checkpoint that restores; the ones that do not are
    named (a warning) and set aside, so the run can save those steps again."""
    saved, (state, data_state, _), skipped = checkpointer.restore_newest(sharded.abstract_state)
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
    model_config = make_model_config(config, tokenizer)
    sharded = compile_train_step(config, model_config, mesh, total_steps)
    fns, rows = sharded.fns, sharded.rows

    # ---------------------------------------------------------------- state: restore or init
    keep = [epoch_ends[e - 1] for e in range(config.checkpoint.keep_epochs_from,
                                             config.checkpoint.keep_epochs_to + 1)
            if 0 < e <= len(epoch_ends)]
    checkpointer = TrainCheckpointer(workdir / CHECKPOINTS_DIR, keep_steps=keep,
                                     async_save=config.checkpoint.async_save)
    iterator = pipeline.iterator()
    start_step = 0
    if resume:
        state, start_step = _restore(checkpointer, sharded, iterator)
    else:
        params = initial_params(config, model_config, fns, sharded.param_shardings)
        state = sharded.init_state(jax.random.PRNGKey(config.seed), params)
        del params  # the state holds them now
    record_run(config, workdir, resume)  # the fingerprint in run.json

    # ---------------------------------------------------------------- compile
    example = _global_batch(pipeline.batch(min(start_step, total_steps - 1)), rows)
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
    flops_per_token = total_flops_per_token(
        fns.matmul_param_count(), model_config.n_layers, config.data.max_len,
        model_config.n_heads * model_config.head_dim)
    peak = peak_flops_per_device()
    metrics_log = MetricsLogger(workdir, enabled=is_main, total_steps=run_steps,
                                initial_step=start_step)
    # The tokenizer travels inside every checkpoint, so a checkpoint is self-contained.
    meta = {"config": json.loads(config.to_json_best_effort()), "tokenizer_path": tokenizer.path,
            "tokenizer_model_b64": base64.b64encode(tokenizer.model_proto).decode("ascii"),
            "model_config": model_config.to_dict()}

    def save(step: int):
        checkpointer.save(step, state, iterator.get_state(), dict(meta, step=step))

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
    status = "completed"
    with watch_preemption() as preemption:
        for step in range(start_step, run_steps):
            batch = _global_batch(next(iterator), rows)
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            metrics = jax.device_get(metrics)
            step_time = time.perf_counter() - t0
            done = step + 1
            if not metrics["finite"]:  # the step kept the old state: stop before saving anything
                metrics_log.log({"step": done, "update_skipped": {
                    "loss": str(float(metrics["loss"])), "grad_norm": str(float(metrics["grad_norm"]))}})
                checkpointer.close()  # waits for the saves in flight: the last good one is whole
                metrics_log.close()
                raise _non_finite_error(done, metrics, last_saved, checkpointer.directory)
            loss = float(metrics["loss"])
            epoch = int(np.searchsorted(epoch_ends, done, side="left")) + 1
            tokens_per_s = float(metrics["tokens"]) / step_time
            if done % config.train.log_every == 0 or done == run_steps:
                mfu = (flops_per_token * tokens_per_s / jax.device_count() / peak) if peak else None
                metrics_log.log({
                    "step": done, "epoch": epoch, "loss": loss, "lr": float(metrics["lr"]),
                    "grad_norm": float(metrics["grad_norm"]), "tokens_per_s": tokens_per_s,
                    "step_time_s": step_time, "mfu": mfu,
                    "loss_tokens": float(metrics["loss_tokens"]),
                })
            metrics_log.advance()
            at_epoch_end = done in epoch_ends
            if at_epoch_end or (config.checkpoint.every_steps and done % config.checkpoint.every_steps == 0):
                save(done)
                last_saved = done
            if (at_epoch_end and eval_pipeline is not None
                    and epoch % config.train.eval_every_epochs == 0):
                result = _evaluate(sharded, state["params"], eval_pipeline)
                metrics_log.log({"step": done, "epoch": epoch, **result})
                metrics_log.write(f"epoch {epoch}: held-out {result}")
            if preemption.reached(done):  # every host reaches it at the same step
                if last_saved != done:
                    save(done)
                    last_saved = done
                status = "preempted"
                _say_on_every_host(metrics_log, f"SIGTERM (preemption): saved step {done}, exiting")
                break
        else:
            if run_steps > start_step and last_saved != run_steps:
                save(run_steps)
                last_saved = run_steps
    checkpointer.close()

    # ---------------------------------------------------------------- report
    summary.update(status=status, last_checkpoint=last_saved)
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
