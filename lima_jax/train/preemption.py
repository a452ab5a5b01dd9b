"""SIGTERM as a preemption notice: the loop saves a checkpoint and stops cleanly, and on a
multi-host run every host stops at the same step (README "Training").

One host: a Python SIGTERM handler sets a flag that the loop reads after each step.

Several hosts: `jax.distributed.initialize` starts JAX's preemption service, whose own SIGTERM
handler tells the coordinator that this host is being preempted. Every host calls
`multihost_utils.reached_preemption_sync_point(step)` after every step; it turns true on all of
them at the same step (the one after the largest step any host had reached when the notice
spread), so all hosts save that step together and exit, whichever host got the signal. A Python
handler there would replace the service's, so none is installed. Where the service is switched
off (`jax_enable_preemption_service`), the hosts share their SIGTERM flags after each step instead.
"""

from __future__ import annotations

import logging
import signal

import jax

from lima_jax import sharding as sharding_lib

log = logging.getLogger("lima_jax.train")


class SigtermFlag:
    """One host: SIGTERM sets a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside some test runners)
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, step: int) -> bool:
        """Whether to save `step` and stop."""
        return self.requested


class SharedSigtermFlag(SigtermFlag):
    """Several hosts without JAX's preemption service: any host's flag stops them all (one
    small all-gather per step)."""

    def reached(self, step: int) -> bool:
        return not sharding_lib.on_every_host(not self.requested)


class PreemptionSyncPoint:
    """Several hosts: JAX's preemption service picks the one step at which all of them stop."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def reached(self, step: int) -> bool:
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(step)


def watch_preemption() -> SigtermFlag | PreemptionSyncPoint:
    """The SIGTERM watch for this run: a context manager whose `reached(step)`, called after
    every step on every host, says when to save and stop."""
    if jax.process_count() == 1:
        return SigtermFlag()
    if jax.config.jax_enable_preemption_service:
        return PreemptionSyncPoint()
    log.warning("jax_enable_preemption_service is off: the hosts share their SIGTERM flags every step")
    return SharedSigtermFlag()
