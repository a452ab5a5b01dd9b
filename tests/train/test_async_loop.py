"""The loop that never makes the device wait (README "Training"): batches built and placed ahead
by a background thread (`lima_jax.train.prefetch`), each step's metrics read only once the next
step is dispatched, the same metrics as a synchronous loop, each checkpoint with the data state
of its own step and saved only after its step's NaN/inf flag is read, and step_time_s for such
a loop (`lima_jax.train.metrics.StepTimer`)."""

from __future__ import annotations

import json
import threading
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lima_jax.checkpoint import TrainCheckpointer
from lima_jax.data import build_pipeline
from lima_jax.train import TrainingError, loop, train
from lima_jax.train.config import make_run_mesh
from lima_jax.train.metrics import StepTimer
from lima_jax.train.prefetch import LOOP_EVENTS, BatchPrefetcher, global_batch
from lima_jax.train.state import make_model_config
from lima_jax.train.step import compile_train_step
from tests.helpers.train_configs import tiny_config

# ----------------------------------------------------------------- the prefetcher alone


class _CountingIterator:
    """Batches of 8 rows whose every entry is the batch's index, slowly if asked, with a grain-like
    state (the next index) and the threads that read it."""

    def __init__(self, sleep_s: float = 0.0, fail_at: int | None = None):
        self.next_index, self.sleep_s, self.fail_at = 0, sleep_s, fail_at
        self.threads: set[str] = set()

    def __next__(self) -> dict:
        self.threads.add(threading.current_thread().name)
        if self.next_index == self.fail_at:
            raise ValueError(f"bad record in batch {self.fail_at}")
        time.sleep(self.sleep_s)
        batch = {"tokens": np.full((8, 4), self.next_index, np.int32)}
        self.next_index += 1
        return batch

    def get_state(self) -> dict:
        return {"next_index": self.next_index}


def _rows() -> NamedSharding:
    return NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))


def test_prefetched_batches_come_in_order_with_the_data_state_of_their_step():
    data = _CountingIterator()
    data.next_index = 3  # as after a restore at step 3
    with BatchPrefetcher(data, _rows(), first_step=4, count=3) as batches:
        got = list(batches)
    assert [b.step for b in got] == [4, 5, 6]
    for batch in got:  # batch of step s is the data's batch s-1; after it the state says s
        assert batch.data_state == {"next_index": batch.step}
        assert batch.arrays["tokens"].sharding == _rows()
        np.testing.assert_array_equal(np.asarray(batch.arrays["tokens"]), batch.step - 1)
    assert data.next_index == 6  # never read past the run's last step
    assert data.threads == {"lima-prefetch"}


def test_the_prefetcher_builds_ahead_of_a_slow_step():
    """A consumer slower than the data (a long step): every batch is on the devices before the
    step before it ends, and the thread stays at most `depth` + 1 batches ahead."""
    step_s, depth = 0.15, 2
    with LOOP_EVENTS.recording() as events:
        with BatchPrefetcher(_CountingIterator(sleep_s=0.02), _rows(), first_step=1, count=6,
                             depth=depth) as batches:
            for batch in batches:
                LOOP_EVENTS.record("dispatch", batch.step)
                time.sleep(step_s)  # the step runs
                LOOP_EVENTS.record("read", batch.step)
    order = [(event, step) for event, step, *_ in events]
    for n in range(1, 6):
        assert order.index(("built", n + 1)) < order.index(("read", n))
    for position, (event, step) in enumerate(order):
        if event == "built":
            taken = sum(1 for e, _ in order[:position] if e == "dispatch")
            assert step <= taken + depth + 1, (step, taken)


def test_a_data_error_reaches_the_loop_and_close_stops_a_waiting_thread():
    with BatchPrefetcher(_CountingIterator(fail_at=1), _rows(), first_step=1, count=5) as batches:
        assert next(batches).step == 1
        for _ in range(2):  # and again if asked again
            with pytest.raises(ValueError, match="bad record in batch 1"):
                next(batches)
    data = _CountingIterator()
    batches = BatchPrefetcher(data, _rows(), first_step=1, count=100, depth=1)
    with batches:
        time.sleep(0.2)  # the thread fills the queue and waits to put the next batch
    assert "lima-prefetch" not in {thread.name for thread in threading.enumerate()}
    assert data.next_index == 2  # one batch queued, one held: nothing read beyond them


def test_step_time_runs_from_the_later_of_dispatch_and_the_previous_end():
    now = [0.0]
    timer = StepTimer(clock=lambda: now[0])
    now[0] = 1.0
    assert timer.finished(dispatched_at=0.25) == 0.75  # the first step: from its dispatch
    now[0] = 1.5
    assert timer.finished(dispatched_at=0.5) == 0.5  # queued behind it: from its end
    now[0] = 4.0
    assert timer.finished(dispatched_at=3.0) == 1.0  # after a pause (a checkpoint): from dispatch


# ----------------------------------------------------------------- the loop


def _synchronous_metrics(config, steps: int) -> list[dict]:
    """The run's first `steps` steps the plain way: each batch built when its step is due and
    each step's metrics read before the next one is dispatched."""
    pipeline = build_pipeline(config.data, workdir=config.workdir)
    model_config = make_model_config(config, pipeline.tokenizer)
    sharded = compile_train_step(config, model_config, make_run_mesh(config), pipeline.num_steps)
    state = sharded.init_state(jax.random.PRNGKey(config.seed))
    compiled = sharded.compile(state, global_batch(pipeline.batch(0), sharded.rows))
    metrics = []
    for step in range(steps):
        state, step_metrics = compiled(state, global_batch(pipeline.batch(step), sharded.rows))
        metrics.append(jax.device_get(step_metrics))
    return metrics


class _SlowIterator:
    """The data iterator, `sleep_s` slower per batch, noting which threads read it."""

    def __init__(self, iterator, sleep_s: float):
        self._iterator, self._sleep_s = iterator, sleep_s
        self.threads: set[str] = set()

    def __next__(self):
        self.threads.add(threading.current_thread().name)
        time.sleep(self._sleep_s)
        return next(self._iterator)

    def get_state(self):
        return self._iterator.get_state()

    def set_state(self, state):
        self._iterator.set_state(state)


def _slow_data(monkeypatch, sleep_s: float) -> list[_SlowIterator]:
    """Every data iterator the loop makes, slowed down; returns them."""
    made = []

    def build_slow_pipeline(*args, **kwargs):
        pipeline = build_pipeline(*args, **kwargs)
        make_iterator = pipeline.iterator

        def slow_iterator():
            made.append(_SlowIterator(make_iterator(), sleep_s))
            return made[-1]

        pipeline.iterator = slow_iterator
        return pipeline

    monkeypatch.setattr(loop, "build_pipeline", build_slow_pipeline)
    return made


def _record_saves(monkeypatch) -> list[tuple[int, dict, int]]:
    """(step, data state, the state's own step) of every checkpoint saved, also in LOOP_EVENTS."""
    saved = []
    original = TrainCheckpointer.save

    def save(self, step, state, data_state, meta):
        LOOP_EVENTS.record("save", step)
        saved.append((step, data_state, int(jax.device_get(state["step"]))))
        original(self, step, state, data_state, meta)

    monkeypatch.setattr(TrainCheckpointer, "save", save)
    return saved


def test_the_loop_dispatches_step_n_plus_1_before_reading_step_n(tmp_path, monkeypatch):
    """With a slow data source: the batches come from the prefetch thread, step n+1 is on the
    device before the host reads step n's metrics (except where step n's state is saved: its
    flag is read first), every checkpoint holds the data state of its own step, and the metrics
    are bit for bit those of a synchronous loop."""
    c = tiny_config(tmp_path / "run", tmp_path / "data", train__eval_data="", train__max_steps=7,
                    checkpoint__every_steps=3)  # saves after steps 3, 6 and 7 (an epoch end)
    slow = _slow_data(monkeypatch, sleep_s=0.05)
    saved = _record_saves(monkeypatch)
    with LOOP_EVENTS.recording() as events:
        summary = train(c)
    assert summary["status"] == "completed" and summary["last_checkpoint"] == 7
    order = [(event, step) for event, step, *_ in events]
    threads = {(event, step): thread for event, step, _, thread in events}

    assert [s for e, s in order if e == "read"] == list(range(1, 8))  # each step read once, in order
    for n in (1, 2, 4, 5):  # no checkpoint after them: read one step late
        assert order.index(("dispatch", n + 1)) < order.index(("read", n))
    for n in (3, 6):  # a checkpoint after them: the flag first, then the save, then the next step
        assert order.index(("read", n)) < order.index(("save", n)) < order.index(("dispatch", n + 1))
    assert order.index(("dispatch", 7)) < order.index(("read", 7)) < order.index(("save", 7))
    # Where step n is read late, the next batch was on the devices before the host waited on
    # step n. (After a saved step the host reads at once, and whether the slow source has the
    # next batch ready by then depends on the machine's load; test_the_prefetcher_builds_ahead_
    # of_a_slow_step pins building ahead with a slow step.)
    for n in (1, 2, 4, 5):
        assert order.index(("built", n + 1)) < order.index(("read", n))
    assert {threads[("built", n)] for n in range(1, 8)} == {"lima-prefetch"}
    assert {threads[("dispatch", n)] for n in range(1, 8)} == {threading.main_thread().name}
    assert [it.threads for it in slow] == [{"lima-prefetch"}]  # the loop never reads the data itself

    assert [(step, data, state_step) for step, data, state_step in saved] == [
        (3, {"next_index": 3}, 3), (6, {"next_index": 6}, 6), (7, {"next_index": 7}, 7)]

    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 8))
    for line, reference in zip(lines, _synchronous_metrics(c, 7)):
        for key in ("loss", "grad_norm", "lr", "loss_tokens"):
            assert line[key] == float(reference[key]), (line["step"], key)
        assert line["step_time_s"] > 0 and line["tokens_per_s"] == pytest.approx(
            float(reference["tokens"]) / line["step_time_s"])


def test_a_non_finite_step_read_late_stops_before_any_save(tmp_path):
    """No checkpoint until the epoch end: the bad step's flag arrives one step late, and the run
    still stops naming that step, with no line for the step dispatched after it."""
    run = tmp_path / "run"
    c = tiny_config(run, tmp_path / "data", train__eval_data="")
    c.optimizer.learning_rate = c.optimizer.end_learning_rate = 1e30
    with LOOP_EVENTS.recording() as events, pytest.raises(
            TrainingError, match=r"step (\d+): .*the update was not applied .*last good checkpoint is none") as err:
        train(c)
    bad_step = int(str(err.value).split(":")[0].split()[1])
    order = [(event, step) for event, step, *_ in events]
    assert order.index(("dispatch", bad_step + 1)) < order.index(("read", bad_step))  # read late
    assert ("read", bad_step + 1) not in order
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, bad_step + 1))
    assert "update_skipped" in lines[-1] and all("loss" in r for r in lines[:-1])
    assert TrainCheckpointer(run / "checkpoints").all_steps() == []
