"""The command ``python -m lima_jax.ablate --config configs/ablations/{quantity,quality,diversity,tiny}.py``.

The config is locked: an override of a key the config file does not have stops before anything
runs, with absl naming the key. What the run writes is described in `lima_jax.ablate.runner`.
"""

from __future__ import annotations

import ml_collections

from lima_jax.cli import config_command, run_command, setup_logging


def main(config: ml_collections.ConfigDict) -> int:
    """Runs (or resumes) the ablation `config` describes; returns the exit code."""
    from lima_jax.ablate.runner import run_ablation

    setup_logging(quiet=("lima_jax.train",))
    return run_command(run_ablation, config)


def run(argv=None) -> None:
    config_command(main, "an ablation config file (configs/ablations/*.py) with get_config()", argv,
                   usage=__doc__)
