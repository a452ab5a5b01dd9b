"""The one base of every error lima_jax raises for a user to act on.

A `LimaError` carries what was wrong, where (``file:line``, a config key, a path) and what to do
about it, and prints as one line: ``where: what (hint)``. Every command reaches the user through
`lima_jax.cli.run_command`, which prints ``error: <that line>`` and exits with the error's
`exit_code` (2 for bad input, 1 for a run that stopped on its own) instead of a traceback.
"""

from __future__ import annotations


class LimaError(Exception):
    """An error a user can act on: `what` was wrong, `where`, and a `hint` of what to do."""

    exit_code = 2

    def __init__(self, what: str = "", where: str = "", hint: str = ""):
        self.what = what
        self.where = where
        self.hint = hint
        message = f"{where}: {what}" if where else what
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class InputError(LimaError, ValueError):
    """A value a user gave (an option, a record, a size) that cannot work; a ValueError too."""
