"""Training metrics: `WORKDIR/metrics.jsonl`, TensorBoard event files, a progress bar and a
loss-curve PNG. (The loop computes the MFU it logs against `lima_jax.chips`' peak figures.)

Only process 0 writes; every other process gets a logger that does nothing.

`StepTimer` gives `step_time_s` (and so `tokens_per_s` and the MFU) for a loop that reads each
step's metrics one step late (README "Training"): the step's time on the device as the host sees
it, from when the device could start it to when its metrics arrive.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable

from lima_jax.jsonl import JsonlAppender, read_records, set_aside_torn_tail, write_jsonl


class MetricsLogger:
    """Writes one JSON line per logged step, TensorBoard scalars and a progress bar."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool, total_steps: int,
                 initial_step: int = 0, progress: bool = True):
        self.enabled = enabled
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self._truncate_after(initial_step)
        self._file = JsonlAppender(self.path)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
        except ImportError:  # optional: metrics.jsonl still has everything
            self._tb = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps the restored state has not taken yet, so the
        file reads as one uninterrupted run."""
        if not self.path.exists():
            return
        # A line cut off by a kill goes to metrics.jsonl.torn-<n>, set aside rather than lost.
        set_aside_torn_tail(self.path)
        kept = [r for r in read_records(self.path) if r.get("step", 0) <= step]
        write_jsonl(self.path, kept)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(record)
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tag = key.replace("eval_", "eval/") if key.startswith("eval_") else f"train/{key}"
                    self._tb.add_scalar(tag, value, record["step"])
        if self._bar is not None and "loss" in record:
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=record.get("epoch"))

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def write(self, message: str) -> None:
        """Prints without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._file.close()


class StepTimer:
    """`step_time_s` of each step whose metrics have arrived, in step order.

    A step starts at the later of its dispatch and the previous step's end (the device runs
    one step at a time, and the next one is queued while a step runs), and ends when its metrics
    reach the host. In a run whose device never waits this is the time between consecutive
    steps' metrics; after a pause (a checkpoint, an evaluation, the first step) it runs from the
    dispatch, so a pause of the host is not charged to the step. A step whose batch came late
    ends late, as the host sees it: the wait counts, once, towards the step before it."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._previous_end: float | None = None

    def finished(self, dispatched_at: float) -> float:
        """Seconds of the step dispatched at `dispatched_at` (`clock` time), whose metrics
        have just arrived."""
        end = self._clock()
        start = dispatched_at if self._previous_end is None else max(dispatched_at, self._previous_end)
        self._previous_end = end
        return end - start


def plot_loss_curve(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> pathlib.Path | None:
    """Training loss (and held-out loss, if logged) against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(metrics_path, skip_invalid=True)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held_out = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss")
    if held_out:
        ax.plot(*zip(*held_out), "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / loss token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = pathlib.Path(out_png)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
