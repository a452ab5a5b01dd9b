"""Packing and the epoch plan: properties that must hold for any lengths and seeds."""

import numpy as np
import pytest

from lima_jax.data import packing
from lima_jax.data.errors import DataError
from lima_jax.data.pipeline import make_plan


def random_lengths(seed, n=300, max_len=256):
    rng = np.random.default_rng(seed)
    return rng.integers(1, max_len + 1, size=n)


@pytest.mark.parametrize("algorithm", packing.ALGORITHMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_example_once_and_rows_fit(algorithm, seed):
    lengths, t = random_lengths(seed), 256
    order = np.random.default_rng(seed + 10).permutation(len(lengths))
    rows = packing.pack(lengths, order, t, algorithm)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= t for row in rows)
    # Lower bound on rows; online fit should be close to it on uniform lengths.
    assert len(rows) >= int(np.ceil(lengths.sum() / t))
    assert packing.efficiency(lengths, rows, t) > 0.85


def _replay(lengths, order, t, rows):
    """(row chosen, free space of every row just before) for each placement, in order."""
    where = {i: r for r, row in enumerate(rows) for i in row}
    free, out = [], []
    for i in order:
        out.append((where[i], list(free)))
        if where[i] == len(free):
            free.append(t)
        free[where[i]] -= lengths[i]
    return out


def test_first_fit_takes_the_lowest_row_that_fits():
    lengths, t = random_lengths(3, 200, 100), 100
    order = np.arange(len(lengths))
    rows = packing.pack(lengths, order, t, "first_fit")
    for i, (chosen, free) in zip(order, _replay(lengths, order, t, rows), strict=True):
        fitting = [r for r, f in enumerate(free) if f >= lengths[i]]
        assert chosen == (fitting[0] if fitting else len(free))


def test_best_fit_takes_the_tightest_row():
    lengths, t = random_lengths(4, 200, 100), 100
    order = np.arange(len(lengths))
    rows = packing.pack(lengths, order, t, "best_fit")
    for i, (chosen, free) in zip(order, _replay(lengths, order, t, rows), strict=True):
        fitting = [(f, r) for r, f in enumerate(free) if f >= lengths[i]]
        assert chosen == (min(fitting)[1] if fitting else len(free))


def test_too_long_example_is_refused():
    with pytest.raises(ValueError, match="longer than max_len"):
        packing.pack(np.array([5, 20]), [0, 1], 10)


def test_padded_plan_counts_steps_exactly_and_covers_each_epoch():
    lengths = random_lengths(5, n=103, max_len=64)
    plan = make_plan(lengths, max_len=64, num_epochs=3, global_batch_size=8, seed=7)
    assert plan.steps_per_epoch == [13, 13, 13] and plan.num_steps == 39  # ceil(103 / 8)
    items = [plan.row_items[plan.row_offsets[r]:plan.row_offsets[r + 1]] for r in range(39 * 8)]
    for e in range(3):
        epoch = [int(x) for row in items[e * 104:(e + 1) * 104] for x in row]
        assert sorted(epoch) == list(range(103))  # every example exactly once per epoch
        assert sum(len(row) == 0 for row in items[e * 104:(e + 1) * 104]) == 1  # one filler row
    orders = [[int(x) for row in items[e * 104:(e + 1) * 104] for x in row] for e in range(2)]
    assert orders[0] != orders[1]  # reshuffled every epoch
    again = make_plan(lengths, max_len=64, num_epochs=3, global_batch_size=8, seed=7)
    assert np.array_equal(again.row_items, plan.row_items)
    other = make_plan(lengths, max_len=64, num_epochs=3, global_batch_size=8, seed=8)
    assert not np.array_equal(other.row_items, plan.row_items)
    assert plan.epoch_of_step(12) == 0 and plan.epoch_of_step(13) == 1 and plan.epoch_of_step(38) == 2


def test_packed_plan_and_drop_remainder():
    lengths = random_lengths(6, n=200, max_len=64)
    plan = make_plan(lengths, max_len=64, num_epochs=2, global_batch_size=4, pack=True)
    for e, real in enumerate(plan.real_rows_per_epoch):
        assert plan.steps_per_epoch[e] == -(-real // 4)
    dropped = make_plan(lengths, max_len=64, num_epochs=2, global_batch_size=4, pack=True,
                        drop_remainder=True)
    assert dropped.steps_per_epoch == [r // 4 for r in plan.real_rows_per_epoch]
    with pytest.raises(DataError, match="global_batch_size"):
        make_plan(lengths[:3], max_len=64, num_epochs=1, global_batch_size=4, drop_remainder=True)
    with pytest.raises(DataError, match="no example left"):
        make_plan(lengths[:0], max_len=64, num_epochs=1, global_batch_size=4)
