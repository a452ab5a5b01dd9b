"""Batches ready before their step: a background thread pulls this host's batches from the data
iterator, places them on the devices and hands them to the loop in order, up to `depth` of them
waiting while a step runs (README "Training").

The loop dispatches step n+1 before it reads step n's metrics, so the device always has the
next step queued; a batch built only when its step is due would leave the device idle while the
host builds it. Here the host's share of the batch is read (`next(iterator)`) and turned into
global arrays (`jax.make_array_from_process_local_data`, no communication between hosts) while
earlier steps run.

Prefetching moves the iterator past the step being trained, so every batch carries the
iterator's state taken right after it was read: the state a checkpoint of that step must hold
for a resumed run to read the same batches (README "Training", checkpoints).

`LOOP_EVENTS` records what the loop and this thread did, in order (`build`/`built` a batch,
`dispatch` a step, `read` its metrics); it records nothing unless a test turns it on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import queue
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np


class EventLog:
    """(event, step, time, thread name) tuples in the order they happened; off by default."""

    def __init__(self):
        self._events: list | None = None
        self._lock = threading.Lock()

    def record(self, event: str, step: int) -> None:
        if self._events is None:
            return
        with self._lock:  # the prefetch thread and the loop both record
            self._events.append((event, step, time.perf_counter(), threading.current_thread().name))

    @contextlib.contextmanager
    def recording(self):
        """Turns recording on for the `with` block; yields the list the events go to."""
        self._events = events = []
        try:
            yield events
        finally:
            self._events = None


LOOP_EVENTS = EventLog()


def global_batch(local_batch: dict, rows: jax.sharding.NamedSharding) -> dict:
    """This host's rows -> global arrays sharded over the batch mesh axes."""
    return {k: jax.make_array_from_process_local_data(rows, np.asarray(v))
            for k, v in local_batch.items()}


@dataclasses.dataclass(frozen=True)
class PreparedBatch:
    """One step's batch, on the devices, with the data iterator's state that goes with it."""

    step: int  # the step it feeds, counted from 1 as metrics.jsonl counts them
    arrays: dict  # global jax.Arrays (`global_batch`)
    data_state: dict  # the iterator's state after this batch: what a checkpoint of `step` saves


@dataclasses.dataclass(frozen=True)
class _Failure:
    """An exception of the prefetch thread, raised in the loop where it asks for the batch."""

    error: BaseException


class BatchPrefetcher(Iterator[PreparedBatch]):
    """Steps `first_step` .. `first_step + count - 1` from `iterator`, placed with `rows` by a
    background thread: up to `depth` batches wait for the loop, and one more waits in the thread
    for room. Use it as a context manager: leaving the block stops the thread (on an error or a
    preemption, too)."""

    def __init__(self, iterator, rows: jax.sharding.NamedSharding, *, first_step: int, count: int,
                 depth: int = 2):
        self._iterator = iterator  # the thread's alone from `__enter__` on
        self._rows = rows
        self._steps = range(first_step, first_step + count)
        self._handed_out = 0
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="lima-prefetch", daemon=True)

    def __enter__(self) -> BatchPrefetcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stops the thread; a batch it is reading or placing is finished first."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __next__(self) -> PreparedBatch:
        if self._handed_out == len(self._steps):
            raise StopIteration
        item = self._ready.get()
        if isinstance(item, _Failure):
            self._ready.put(item)  # the thread has ended: every later call raises it too
            raise item.error
        self._handed_out += 1
        return item

    def _produce(self) -> None:
        try:
            for step in self._steps:
                if not self._hand_over(self._prepare(step)):
                    return
        except StopIteration:  # raised in the loop it would end the loop silently: say it
            self._hand_over(_Failure(RuntimeError(
                f"the data iterator ended before step {step} of {self._steps[-1]}")))
        except Exception as error:  # the loop's to handle, as if it had read the batch itself
            self._hand_over(_Failure(error))

    def _prepare(self, step: int) -> PreparedBatch:
        LOOP_EVENTS.record("build", step)
        local = next(self._iterator)
        # A copy: the state must not change when the iterator moves on to later batches.
        data_state = copy.deepcopy(self._iterator.get_state())
        batch = PreparedBatch(step, global_batch(local, self._rows), data_state)
        LOOP_EVENTS.record("built", step)
        return batch

    def _hand_over(self, item) -> bool:
        """Queues `item`, waiting while `depth` batches are ready; False once told to stop."""
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False
