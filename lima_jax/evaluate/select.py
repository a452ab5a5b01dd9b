"""Epoch checkpoint selection: LIMA picked its checkpoint between epochs 5 and 10 by the
quality of generations on a held-out dev set, not by perplexity.

`evaluate select --workdir RUN --epochs 5-10 --dev FILE --judge SPEC --out DIR` answers the
dev prompts with each epoch's checkpoint (`lima_jax.decode.answer_file`, LIMA's sampling by
default), grades every answer on the 1-6 helpfulness scale, and names the epoch with the best
mean. The training run records where each epoch ends in `RUN/epochs.json`
(`lima_jax.checkpoint.epoch_checkpoint`).
"""

from __future__ import annotations

import pathlib

from lima_jax.checkpoint import epoch_checkpoint
from lima_jax.decode.sampling import SamplingConfig
from lima_jax.errors import InputError, LimaError
from lima_jax.evaluate import scale
from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.judges import Judge
from lima_jax.evaluate.responses import read_responses
from lima_jax.jsonl import write_json


def parse_epochs(text: str) -> list[int]:
    """'5-10' -> [5, ..., 10]; '3' -> [3]; '2,4,6' -> [2, 4, 6]."""
    try:
        if "-" in text:
            low, high = (int(x) for x in text.split("-", 1))
            epochs = list(range(low, high + 1))
        else:
            epochs = [int(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--epochs {text!r}: expected a range like 5-10 or a list like 5,7") from None
    if not epochs or min(epochs) < 1:
        raise InputError(f"--epochs {text!r}: epochs are numbered from 1")
    return epochs


def epoch_checkpoints(workdir: pathlib.Path, epochs: list[int]) -> dict[int, pathlib.Path | None]:
    """Each epoch's checkpoint directory (None where it was not kept)."""
    return {epoch: epoch_checkpoint(workdir, epoch) for epoch in epochs}


def select_checkpoint(workdir: str | pathlib.Path, epochs: list[int], dev: str, judge: Judge,
                      out: str | pathlib.Path, *, template: str = "lima",
                      sampling: SamplingConfig | None = None, max_new_tokens: int = 2048,
                      seed: int = 0, quiet: bool = True) -> dict:
    """Answers `dev` with each epoch's checkpoint (into `out`/epoch_<n>.jsonl, resumed when it
    exists), grades and ranks them; writes select.md/json into `out`. `sampling` defaults to
    LIMA's."""
    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ReplyCache(out / "judge_cache.jsonl")
    rows, missing = [], []
    for epoch, step_dir in epoch_checkpoints(workdir, epochs).items():
        if step_dir is None:
            missing.append(epoch)
            continue
        answers = out / f"epoch_{epoch}.jsonl"
        _answer_dev(dev, answers, step_dir, epoch, template=template, sampling=sampling,
                    max_new_tokens=max_new_tokens, seed=seed)
        records = scale.run_scale(list(read_responses(answers).values()), judge, cache, quiet=quiet)
        summary = scale.scale_summary(records, f"epoch {epoch}")
        summary.update(epoch=epoch, step=int(step_dir.name), checkpoint=str(step_dir))
        rows.append(summary)
    if not rows:
        raise InputError(f"no checkpoint kept for epochs {epochs} in {workdir / 'checkpoints'}")
    scored = [r for r in rows if r["mean"] is not None]
    best = max(scored, key=lambda r: r["mean"]) if scored else None
    result = {"epochs": rows, "missing_epochs": missing,
              "best": None if best is None else {k: best[k] for k in ("epoch", "step", "checkpoint", "mean")}}
    table = scale.scale_markdown(rows)
    if best is not None:
        table += f"\nBest: epoch {best['epoch']} (step {best['step']}), mean {best['mean']:.2f}: {best['checkpoint']}\n"
    if missing:
        table += f"Not kept (no checkpoint): epochs {missing}\n"
    (out / "select.md").write_text(table, encoding="utf-8")
    write_json(out / "select.json", result)
    result["markdown"] = table
    return result


def _answer_dev(dev: str, answers: pathlib.Path, step_dir: pathlib.Path, epoch: int, **settings) -> None:
    """One epoch's answers to the dev prompts; a failure names the epoch and its checkpoint."""
    from lima_jax.decode import answer_file

    try:
        answer_file(dev, answers, ckpt=str(step_dir), **settings)
    except (LimaError, FileNotFoundError) as err:
        raise InputError(f"decoding epoch {epoch} ({step_dir}) failed: {err}") from err
