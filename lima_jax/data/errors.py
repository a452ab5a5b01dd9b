"""Data errors a user can act on, and the counter of skipped bad records.

Every problem with an input file is reported as ``file:line: what was wrong (what to do)``.
With ``on_error='raise'`` (the default) the first one stops the run; with ``on_error='skip'``
each is counted by kind and the first few locations are kept for the data report, so a bad
record is never dropped silently.
"""

from __future__ import annotations

import collections
import dataclasses

from lima_jax.errors import LimaError

# How many skipped locations the report lists; the counts cover all of them.
MAX_LISTED_LOCATIONS = 5


class DataError(LimaError, ValueError):
    """A problem with input data or a data setting, located and explained.

    Attributes:
      location: ``path:line`` (or ``path`` alone, or a config key) where it happened.
      what: what was wrong.
      hint: what to do about it (may be empty).
      kind: a short machine-readable category (``malformed_json``, ``missing_field``, ...).
    """

    def __init__(self, location: str, what: str, hint: str = "", kind: str = "error"):
        self.location = location
        self.kind = kind
        super().__init__(what, where=location, hint=hint)


class RecordError(LimaError, ValueError):
    """A record that cannot be turned into a conversation; the reader adds the location."""

    def __init__(self, what: str, kind: str):
        self.kind = kind
        super().__init__(what)


@dataclasses.dataclass
class SkipLog:
    """Counts records skipped under ``on_error='skip'``, keeping the first few locations."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first: list = dataclasses.field(default_factory=list)

    def add(self, error: DataError) -> None:
        self.counts[error.kind] += 1
        if len(self.first) < MAX_LISTED_LOCATIONS:
            self.first.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: SkipLog) -> None:
        self.counts.update(other.counts)
        for message in other.first:
            if len(self.first) < MAX_LISTED_LOCATIONS:
                self.first.append(message)

    def to_dict(self) -> dict:
        return {"total": self.total, "by_kind": dict(self.counts), "first": list(self.first)}


def check_on_error(on_error: str) -> None:
    """Raises a DataError unless ``on_error`` is 'raise' or 'skip'."""
    if on_error not in ("raise", "skip"):
        raise DataError(
            "config.data.on_error", f"unknown value {on_error!r}", "use 'raise' or 'skip'", "config"
        )
