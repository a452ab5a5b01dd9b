"""`python -m lima_jax.ablate --config configs/ablations/{quantity,quality,diversity,tiny}.py`

LIMA's ablations (section 5): train one model per cell (a training subset) with the same recipe,
answer the test prompts (5 samples each, LIMA's sampling), grade every answer 1-6 for helpfulness
with the configured judge, and plot the mean score with its 95% confidence interval against the
data size or the condition. In the workdir:

    cells/<cell>/data.jsonl       the cell's subset (LIMA JSONL), checked again on every resume
    cells/<cell>/train/           its training run (lima_jax.train: checkpoints, metrics, summary)
    cells/<cell>/responses.jsonl  the decoded answers (python -m lima_jax.decode's format)
    cells/<cell>/decode.json      the decoding settings those answers were sampled with
    cells/<cell>/scores.jsonl     the judge's grade of each answer
    cells/<cell>/result.json      the cell's mean, interval and counts: the cell is done
    results.json, results.md, scores.png, judge_cache.jsonl

It resumes cell by cell: a cell with a result.json is skipped, an interrupted training run
resumes from its latest checkpoint (the trainer's own resume), an interrupted decode keeps its
answers and an interrupted grading keeps the judge's replies (judge_cache.jsonl). A new judge
regrades the kept answers without training again. Every subset is built and checked against
the one already on disk before the first cell trains, so a bad size or source, or a subset that
changed under a half-finished cell, stops the run at once; so do changed decode settings.
"""

from __future__ import annotations

import gc
import pathlib
import shutil

import ml_collections

from lima_jax.ablate.config import validate_ablation
from lima_jax.ablate.report import plot_results, results_markdown
from lima_jax.ablate.subsets import (
    AblationError,
    read_pool,
    resolve_generated,
    select_subset,
    shared_tokenizer,
    write_subset,
)
from lima_jax.errors import LimaError
from lima_jax.jsonl import read_json, write_json, write_jsonl

RESULT_FILE = "result.json"


def _say(message: str) -> None:
    print(f"ablate: {message}", flush=True)


def _cell_run_config(config, cell_dir: pathlib.Path, data_path: pathlib.Path,
                     tokenizer: str) -> ml_collections.ConfigDict:
    """The recipe with this cell's workdir and data. resume and overwrite together: an
    interrupted run continues from its checkpoint, and a cell with none starts afresh."""
    run = ml_collections.ConfigDict(config.recipe.to_dict())
    run.workdir = str(cell_dir / "train")
    run.data.path = str(data_path)
    run.data.tokenizer = tokenizer
    run.resume = True
    run.overwrite = True
    return run


def _train_cell(name: str, run_config) -> dict:
    """Trains the cell unless its run already completed; returns the trainer's summary."""
    summary_file = pathlib.Path(run_config.workdir) / "summary.json"
    if summary_file.is_file():
        summary = read_json(summary_file)
        if summary.get("status") == "completed":
            return summary
    from lima_jax.train import train

    _say(f"cell {name}: training in {run_config.workdir}")
    summary = train(run_config)
    if summary.get("status") != "completed":
        raise AblationError(f"cell {name}: training stopped ({summary.get('status')}); rerun the same "
                            "command to resume it from its last checkpoint")
    return summary


def _checkpoint_for(train_dir: pathlib.Path, epoch: int) -> pathlib.Path:
    from lima_jax.checkpoint import epoch_checkpoint

    if not epoch:
        return train_dir  # the decoder takes the workdir's latest step
    step_dir = epoch_checkpoint(train_dir, epoch)
    if step_dir is None:
        raise AblationError(f"{train_dir / 'checkpoints'}: epoch {epoch}'s checkpoint was not kept "
                            "(config.decode.epoch)")
    return step_dir


def _sampling(d):
    """config.decode's SamplingConfig; temperature 0 is greedy (its repetition penalty kept)."""
    from lima_jax.decode.sampling import SamplingConfig

    if d.temperature == 0:
        return SamplingConfig.greedy_config(float(d.repetition_penalty))
    return SamplingConfig(temperature=float(d.temperature), top_p=float(d.top_p),
                          repetition_penalty=float(d.repetition_penalty))


def _check_decode_settings(name: str, cell_dir: pathlib.Path, config) -> None:
    """Answers sampled with other settings (cell_dir/decode.json) are never reused or mixed."""
    record = cell_dir / "decode.json"
    if not record.is_file():
        return
    before, now = read_json(record), config.decode.to_dict()
    changed = sorted(k for k in now if before.get(k) != now[k])
    if changed:
        raise AblationError(
            f"cell {name}: its answers were decoded with other settings (config.decode.{changed[0]}: "
            f"{before.get(changed[0])!r} then, {now[changed[0]]!r} now); restore them, or delete "
            f"{cell_dir / 'responses.jsonl'}, {record} and {cell_dir / RESULT_FILE} to decode again")


def _decode_cell(name: str, cell_dir: pathlib.Path, train_dir: pathlib.Path, prompts: str, config) -> None:
    """Decodes the test prompts into cell_dir/responses.jsonl unless it already holds every
    (prompt, sample) answer; the settings go to cell_dir/decode.json."""
    from lima_jax.decode import answer_file, missing_answers

    _check_decode_settings(name, cell_dir, config)
    d = config.decode
    out = cell_dir / "responses.jsonl"
    if not missing_answers(prompts, out, num_samples=d.num_samples, limit=d.limit):
        return
    write_json(cell_dir / "decode.json", d.to_dict())
    checkpoint = _checkpoint_for(train_dir, d.epoch)
    _say(f"cell {name}: decoding {prompts} with {checkpoint}")
    try:
        answer_file(prompts, out, ckpt=str(checkpoint), template=d.template, sampling=_sampling(d),
                    max_new_tokens=d.max_new_tokens, num_samples=d.num_samples,
                    batch_size=d.batch_size, seed=d.seed, limit=d.limit, progress=config.progress)
    except (LimaError, FileNotFoundError) as err:
        raise AblationError(f"cell {name}: decoding failed ({err}); rerun to resume it") from err


def _recipe_summary(recipe) -> dict:
    model = recipe.model.init_from or f"{recipe.model.preset} from scratch"
    return {"model": model, "epochs": recipe.data.num_epochs, "batch": recipe.data.global_batch_size,
            "learning_rate": recipe.optimizer.learning_rate,
            "end_learning_rate": recipe.optimizer.end_learning_rate}


def _decode_summary(d) -> dict:
    sampling = ("greedy" if d.temperature == 0 else
                f"temperature {d.temperature}, top-p {d.top_p}")
    return {**d.to_dict(), "summary": f"{sampling}, repetition penalty {d.repetition_penalty}, "
                                      f"{d.num_samples} samples, at most {d.max_new_tokens} new tokens"}


def build_subsets(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """Validates the config, then writes (or checks) every cell's data file before any training,
    so a wrong size, source or quota stops the run at once. Returns ({pool path: records},
    {cell: (data file, examples)})."""
    validate_ablation(config)
    workdir = pathlib.Path(config.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    pools: dict[str, list[dict]] = {}
    subsets = {}
    for name, cell in config.cells.items():
        path = resolve_generated(cell.path, workdir, "train")
        if path not in pools:
            pools[path] = read_pool(path)
        records = select_subset(name, cell, pools[path], config.seed)
        subsets[name] = write_subset(workdir / "cells" / name / "data.jsonl", records, name), len(records)
    _say(f"{len(subsets)} cells: " + ", ".join(f"{n} ({size})" for n, (_, size) in subsets.items()))
    return pools, subsets


def run_ablation(config: ml_collections.ConfigDict) -> dict:
    """Runs (or resumes) every cell of `config`; returns the results dict written to results.json.

    Each cell's entry carries `status`: 'done' (ran now) or 'resumed' (its result.json existed)."""
    workdir = pathlib.Path(config.workdir).absolute()
    pools, subsets = build_subsets(config)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    prompts = resolve_generated(config.decode.prompts, workdir, "test")

    def finished(name: str) -> dict | None:
        """The cell's result when it is done and graded by today's judge (a new judge regrades
        the kept answers; nothing is trained or decoded again)."""
        path = workdir / "cells" / name / RESULT_FILE
        result = read_json(path) if path.is_file() else None
        return result if result and result.get("judge_spec") == config.judge.spec else None

    todo = [name for name in config.cells if finished(name) is None]
    tokenizer = shared_tokenizer(config.recipe, list(pools.values()), workdir) if todo else ""
    judge = cache = None
    results = []
    for name, cell in config.cells.items():
        cell_dir = workdir / "cells" / name
        if name not in todo:
            _check_decode_settings(name, cell_dir, config)
            result = finished(name)
            result["status"] = "resumed"
            _say(f"cell {name}: done earlier (mean {result['mean']}), skipped")
            results.append(result)
            continue
        data_path, size = subsets[name]
        run_config = _cell_run_config(config, cell_dir, data_path, tokenizer)
        train_summary = _train_cell(name, run_config)
        train_dir = pathlib.Path(run_config.workdir)
        gc.collect()  # the train state (~80 GB for 7B) must leave the accelerator before decoding
        _decode_cell(name, cell_dir, train_dir, prompts, config)
        responses = cell_dir / "responses.jsonl"

        from lima_jax.evaluate import scale
        from lima_jax.evaluate.cache import ReplyCache
        from lima_jax.evaluate.responses import read_responses

        if judge is None:  # a local judge loads a model: only when a cell needs grading
            from lima_jax.evaluate.judges.reference import make_ablation_judge

            judge = make_ablation_judge(config.judge, prompts)
            cache = ReplyCache(workdir / "judge_cache.jsonl")
        records = scale.run_scale(list(read_responses(responses).values()), judge, cache,
                                  quiet=not config.progress)
        write_jsonl(cell_dir / "scores.jsonl", records)
        summary = scale.scale_summary(records, name)
        if summary["skips"].get("judge_error"):
            raise AblationError(f"cell {name}: {summary['skips']['judge_error']} judge requests failed "
                                f"(see {cell_dir / 'scores.jsonl'}); rerun to retry only those")
        result = {"cell": name, "label": cell.label or name, **cell.to_dict(), "size": size,
                  **{k: summary[k] for k in ("mean", "ci_low", "ci_high", "prompts", "scored",
                                             "skipped", "skips")},
                  "judge_spec": config.judge.spec, "judge": judge.judge_id, "tokenizer": tokenizer,
                  "train": {k: train_summary.get(k) for k in ("total_steps", "status", "last_checkpoint")}}
        write_json(cell_dir / RESULT_FILE, result)
        if not config.keep_checkpoints:
            shutil.rmtree(train_dir / "checkpoints", ignore_errors=True)
        _say(f"cell {name}: mean {result['mean']} (95% CI {result['ci_low']} to {result['ci_high']})")
        result["status"] = "done"
        results.append(result)

    report = {"name": config.name, "plot": config.plot, "judge": config.judge.spec,
              "prompts": config.decode.prompts, "decode": _decode_summary(config.decode),
              "recipe": _recipe_summary(config.recipe), "cells": results}
    chart = plot_results(results, workdir / "scores.png", kind=config.plot, title=config.name,
                         judge=config.judge.spec)
    report["chart"] = str(chart) if chart else None
    write_json(workdir / "results.json", report)
    markdown = results_markdown(config.name, results, judge=config.judge.spec,
                                decode=report["decode"], recipe=report["recipe"])
    (workdir / "results.md").write_text(markdown, encoding="utf-8")
    print(markdown, end="", flush=True)
    return report
