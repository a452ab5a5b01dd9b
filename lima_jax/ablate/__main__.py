"""``python -m lima_jax.ablate --config configs/ablations/NAME.py [--config.key=value ...]``."""

from lima_jax.ablate.cli import run

if __name__ == "__main__":
    run()
