"""Packing: which examples share a row of ``max_len`` positions, planned from lengths alone.

Written here rather than taken from grain: grain's ``FirstFitPackIterDataset`` and
``BestFitPackIterDataset`` do fill per-segment ``segment_ids`` and ``positions`` (both start at
1 and 0 as our batch contract wants), but they are stream transforms whose row count is known
only after running them, they flush all ``num_packing_bins`` open bins as soon as one example
fits none of them, and each host would pack its own examples into a different number of rows.
Planning from the lengths of the whole epoch gives every host the same rows and the exact number
of steps before the first batch, keeps every bin of the epoch open (higher efficiency), and
leaves the batch stage a random-access map (so the iterator state is one index).

Both algorithms are online over the epoch's shuffled order and deterministic:
  first_fit: each example goes into the lowest-numbered row with room for it;
  best_fit: into the row whose free space is the smallest that still fits (ties: lowest row).
Rows are numbered in the order they were opened.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from lima_jax.errors import InputError

ALGORITHMS = ("best_fit", "first_fit")


def _first_fit(lengths: np.ndarray, order: Sequence[int], max_len: int) -> list[list[int]]:
    free = np.empty(len(order), np.int64)  # free positions per open row; at most one row each
    rows: list[list[int]] = []
    for index in order:
        need = lengths[index]
        fits = free[: len(rows)] >= need
        row = int(fits.argmax()) if len(rows) else 0
        if len(rows) and fits[row]:
            rows[row].append(int(index))
            free[row] -= need
        else:
            free[len(rows)] = max_len - need
            rows.append([int(index)])
    return rows


def _best_fit(lengths: np.ndarray, order: Sequence[int], max_len: int) -> list[list[int]]:
    # Sorted (free, row) pairs: the first pair with free >= need is the tightest fit.
    by_free: list[tuple[int, int]] = []
    rows: list[list[int]] = []
    for index in order:
        need = int(lengths[index])
        k = bisect.bisect_left(by_free, (need, -1))
        if k < len(by_free):
            free, row = by_free.pop(k)
            rows[row].append(int(index))
            bisect.insort(by_free, (free - need, row))
        else:
            rows.append([int(index)])
            bisect.insort(by_free, (max_len - need, len(rows) - 1))
    return rows


def pack(
    lengths: np.ndarray, order: Sequence[int], max_len: int, algorithm: str = "best_fit"
) -> list[list[int]]:
    """Groups examples into rows of at most ``max_len`` positions.

    Args:
      lengths: int [N] positions each example occupies (every one <= max_len).
      order: the example indices to place, in the order to place them.
      max_len: row length T.
      algorithm: 'best_fit' or 'first_fit'.
    Returns:
      rows: list of example-index lists, each row's examples in placement order.
    """
    lengths = np.asarray(lengths)
    if len(order) and int(lengths[np.asarray(order)].max()) > max_len:
        raise InputError(f"an example is longer than max_len={max_len}; trim before packing")
    if algorithm == "first_fit":
        return _first_fit(lengths, order, max_len)
    if algorithm == "best_fit":
        return _best_fit(lengths, order, max_len)
    raise InputError(f"unknown packing algorithm {algorithm!r}; choose one of {ALGORITHMS}")


def efficiency(lengths: np.ndarray, rows: Sequence[Sequence[int]], max_len: int) -> float:
    """Non-padding fraction of ``rows``: sum of lengths placed / (rows * max_len)."""
    if not rows:
        return 0.0
    used = sum(int(lengths[i]) for row in rows for i in row)
    return used / (len(rows) * max_len)
