"""``python -m lima_jax.train --config configs/NAME.py [--config.section.key=value ...]``."""

from lima_jax.train.cli import run

if __name__ == "__main__":
    run()
