"""``python -m lima_jax.evaluate``: see `lima_jax.evaluate.cli`."""

import sys

from lima_jax.evaluate.cli import main

sys.exit(main())
