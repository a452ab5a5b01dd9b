"""The test grid of the attention kernels: factors, random packings, error measures.

The issue's grid (T x heads x H x causal x segments x dtype x backend) is 192 cases of
interpreted kernels, about 40 minutes on a 2-core machine. CI runs a pairwise covering
of it (every value of every factor meets every value of every other factor at least
once); LIMA_FULL_KERNEL_GRID=1 runs all of it.
"""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.kernels.bench import random_packing, relative_error  # noqa: F401 (the tests' names)

FACTORS = {
    "t": (128, 384, 1024),
    "heads": ((8, 8), (8, 2)),
    "h": (64, 128),
    "causal": (True, False),
    "packed": (False, True),
    "dtype": ("float32", "bfloat16"),
    "backend": ("tpu", "gpu"),
}
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


def _pairs(case: dict) -> set:
    items = sorted(case.items())
    return {(a, b) for a, b in itertools.combinations(items, 2)}


def pairwise_cases() -> list[dict]:
    """A small set of cases covering every pair of factor values (greedy, deterministic)."""
    names = list(FACTORS)
    everything = [dict(zip(names, values)) for values in itertools.product(*FACTORS.values())]
    uncovered = set().union(*(_pairs(c) for c in everything))
    chosen = []
    while uncovered:
        best = max(everything, key=lambda c: len(_pairs(c) & uncovered))
        chosen.append(best)
        uncovered -= _pairs(best)
    return chosen


def grid_cases() -> list[dict]:
    if os.environ.get("LIMA_FULL_KERNEL_GRID") == "1":
        names = list(FACTORS)
        return [dict(zip(names, v)) for v in itertools.product(*FACTORS.values())]
    return pairwise_cases()


def case_id(case: dict) -> str:
    n, k = case["heads"]
    return (f"{case['backend']}-T{case['t']}-N{n}K{k}-H{case['h']}-"
            f"{'causal' if case['causal'] else 'full'}-{'packed' if case['packed'] else 'plain'}-"
            f"{case['dtype']}")


def inputs(case: dict, seed: int = 0, batch: int = 1):
    rng = np.random.default_rng(seed)
    n, k = case["heads"]
    t, h = case["t"], case["h"]
    dtype = jnp.dtype(case["dtype"])
    q = jnp.asarray(rng.normal(size=(batch, t, n, h)), dtype)
    kk = jnp.asarray(rng.normal(size=(batch, t, k, h)), dtype)
    v = jnp.asarray(rng.normal(size=(batch, t, k, h)), dtype)
    seg = jnp.asarray(random_packing(rng, batch, t)) if case["packed"] else None
    # A fixed random cotangent: the loss sum(out * w) reaches every output element.
    w = jnp.asarray(rng.normal(size=(batch, t, n, h)), jnp.float32)
    return q, kk, v, seg, w


def value_and_grads(attention, q, k, v, w):
    def loss(q_, k_, v_):
        return jnp.sum(attention(q_, k_, v_).astype(jnp.float32) * w)
    out = attention(q, k, v)
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    return out, grads
