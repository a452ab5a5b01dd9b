#!/usr/bin/env python3
"""Runs `python -m lima_jax.train` as N local processes that form one multi-host run.

    python launch/local_multiprocess.py --num-processes 2 --devices-per-process 2 -- \
        --config configs/demo.py --config.workdir=/tmp/lima_demo_2hosts

Each process gets its own fake CPU devices (XLA's host-platform device count) and joins
the others through `jax.distributed` with a coordinator on localhost; CPU collectives run
over gloo. This is how multi-host behaviour (each host feeding its share of the global
batch, only process 0 writing logs, every host stopping at the same step after a SIGTERM) is
exercised without a pod. Each process's pid is printed (`process 1: pid 1234`), so one host
alone can be sent a SIGTERM; a SIGTERM to this launcher goes to every process, as a preemption
of the whole slice would. Exits non-zero if any process fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def forward_signals(processes: list[subprocess.Popen]) -> None:
    """A SIGTERM to the launcher is passed on to every process (they save and stop together)
    instead of killing the launcher and orphaning them. (Ctrl-C reaches them all already: the
    terminal signals the whole process group.)"""
    def forward(signum, frame):
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=2)
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="arguments for python -m lima_jax.train (after --)")
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    address = f"localhost:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices_per_process}")
    processes = []
    for index in range(args.num_processes):
        command = [sys.executable, "-m", "lima_jax.train", *train_args,
                   f"--config.distributed.coordinator_address={address}",
                   f"--config.distributed.num_processes={args.num_processes}",
                   f"--config.distributed.process_id={index}"]
        processes.append(subprocess.Popen(command, env=env))
        print(f"local_multiprocess: process {index}: pid {processes[-1].pid}", file=sys.stderr, flush=True)
    forward_signals(processes)
    codes = [p.wait() for p in processes]
    for index, code in enumerate(codes):
        if code:
            print(f"process {index} exited with {code}", file=sys.stderr)
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
