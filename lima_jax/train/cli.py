"""The command ``python -m lima_jax.train --config configs/NAME.py [--config.a.b=value ...]``.

The config file's ``get_config()`` is locked, so an override of a key it does not have stops
before anything is built, with absl naming the key; a bad value stops before compiling with
``error: config.<key>: <what>``.
"""

from __future__ import annotations

import ml_collections

from lima_jax.cli import config_command, run_command, setup_logging


def main(config: ml_collections.ConfigDict) -> int:
    """Trains (or resumes) the run `config` describes; returns the exit code."""
    from lima_jax.train.loop import train

    setup_logging()
    return run_command(train, config)


def run(argv=None) -> None:
    config_command(main, "a run config file (configs/*.py) with get_config()", argv,
                   usage=__doc__)
