"""Rows of the vocabulary a base model never trained, made usable before fine-tuning.

Some base checkpoints ship special tokens whose embedding (and output) rows were never trained:
Llama 3's base models have ``<|eot_id|>`` and the header tokens at norms far below every other
row, and a run that starts from them learns its end of turn badly. A run that reuses such a token
(``config.data.eot = <|eot_id|>``, or a chat template) gets those rows initialised as LIMA
initialises a new EOT: the mean of the real rows (`lima_jax.model.hf.append_vocab_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

# A row counts as untrained when its norm is below this fraction of the median row norm.
UNTRAINED_FRACTION = 0.1


def _fix_table(table: jax.Array, ids: np.ndarray, vocab_size: int, axis: int) -> tuple[jax.Array, list[int]]:
    """`table` with its rows (axis 0) or columns (axis 1) `ids` set to the mean of the real ones
    where they are untrained; the ids fixed."""
    vd = table if axis == 0 else table.T
    norms = np.asarray(jax.device_get(jnp.linalg.norm(vd[:vocab_size].astype(jnp.float32), axis=1)))
    small = ids[norms[ids] < UNTRAINED_FRACTION * np.median(norms)]
    if small.size == 0:
        return table, []
    mean = vd[:vocab_size].astype(jnp.float32).mean(axis=0).astype(table.dtype)

    @jax.jit
    def fix(t):
        rows = t if axis == 0 else t.T
        rows = rows.at[small].set(mean)
        return rows if axis == 0 else rows.T

    fixed = fix(table)
    if getattr(table, "sharding", None) is not None:
        fixed = jax.device_put(fixed, table.sharding)
    return fixed, [int(i) for i in small]


def reinit_untrained_rows(params: dict, ids: Iterable[int], vocab_size: int) -> tuple[dict, list[int]]:
    """`params` (a pure dict with ``embedding`` [V, D] and, untied, ``lm_head`` [D, V]) with the
    untrained rows among `ids` set to the mean row; returns it and the ids fixed (in either table)."""
    ids = np.asarray(sorted({int(i) for i in ids if 0 <= int(i) < vocab_size}), np.int64)
    if ids.size == 0:
        return params, []
    params = dict(params)
    params["embedding"], fixed = _fix_table(params["embedding"], ids, vocab_size, axis=0)
    if "lm_head" in params:
        params["lm_head"], fixed_head = _fix_table(params["lm_head"], ids, vocab_size, axis=1)
        fixed = sorted(set(fixed) | set(fixed_head))
    return params, fixed
