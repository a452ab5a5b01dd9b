"""Entry point: ``python -m lima_jax.decode`` (see lima_jax.decode.cli)."""

import sys

from lima_jax.decode.cli import main

if __name__ == "__main__":
    sys.exit(main())
