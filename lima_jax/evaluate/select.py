"""Epoch checkpoint selection: LIMA picked its checkpoint between epochs 5 and 10 by the
quality of generations on a held-out dev set, not by perplexity.

`evaluate select --workdir RUN --epochs 5-10 --dev FILE --judge SPEC --out DIR` decodes the
dev prompts with each epoch's checkpoint (`python -m lima_jax.decode`, LIMA's sampling),
grades every answer on the 1-6 helpfulness scale, and names the epoch with the best mean.
The training run records where each epoch ends in `RUN/epochs.json`.
"""

from __future__ import annotations

import json
import pathlib

from lima_jax.errors import InputError
from lima_jax.evaluate import scale
from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.judges import Judge
from lima_jax.evaluate.responses import ResponseError, read_responses


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
    record = workdir / "epochs.json"
    if not record.is_file():
        raise ResponseError(f"{record}: missing; is {workdir} a lima_jax training workdir?")
    ends = json.loads(record.read_text())["epoch_end_steps"]
    found = {}
    for epoch in epochs:
        if epoch > len(ends):
            raise InputError(f"--epochs: the run has {len(ends)} epochs, not {epoch}")
        step_dir = workdir / "checkpoints" / str(ends[epoch - 1])
        found[epoch] = step_dir if step_dir.is_dir() else None
    return found


def select_checkpoint(workdir: str | pathlib.Path, epochs: list[int], dev: str, judge: Judge,
                      out: str | pathlib.Path, *, decode_args: list[str] = (),
                      quiet: bool = True) -> dict:
    """Decodes, grades and ranks the epochs' checkpoints; writes select.md/json into `out`."""
    from lima_jax.decode.cli import main as decode_main

    workdir, out = pathlib.Path(workdir), pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = ReplyCache(out / "judge_cache.jsonl")
    rows, missing = [], []
    for epoch, step_dir in epoch_checkpoints(workdir, epochs).items():
        if step_dir is None:
            missing.append(epoch)
            continue
        answers = out / f"epoch_{epoch}.jsonl"
        code = decode_main(["--ckpt", str(step_dir), "--prompts", dev, "--out", str(answers),
                            "--quiet", *decode_args])
        if code:
            raise InputError(f"decoding epoch {epoch} ({step_dir}) failed with exit status {code}")
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
    (out / "select.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result["markdown"] = table
    return result
