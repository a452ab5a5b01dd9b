"""Model helpers for tests: a jitted forward (eager NNX dispatch is slow on 2 cores)
and a minimal greedy decoder (one jitted full forward over a fixed-size buffer per
step; the real decoder with a KV cache is lima_jax.decode)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def greedy_tokens(model, prompt: list[int], max_new_tokens: int, stop_ids=()) -> list[int]:
    graphdef, state = nnx.split(model)
    length = len(prompt) + max_new_tokens

    @jax.jit
    def next_token(state, buffer, last):
        logits = nnx.merge(graphdef, state)(buffer[None])
        return jnp.argmax(logits[0, last])

    buffer = np.zeros(length, np.int32)
    buffer[: len(prompt)] = prompt
    new = []
    for i in range(len(prompt), length):
        token = int(next_token(state, jnp.asarray(buffer), i - 1))
        buffer[i] = token
        new.append(token)
        if token in stop_ids:
            break
    return new


@nnx.jit(static_argnames=("deterministic",))
def _apply(model, tokens, positions, segment_ids, dropout_rng, deterministic):
    return model(tokens, positions, segment_ids, dropout_rng=dropout_rng,
                 deterministic=deterministic)


def forward(model, tokens, positions=None, segment_ids=None, *, dropout_rng=None,
            deterministic=True) -> np.ndarray:
    """model(...) under jit, as numpy."""
    as_array = lambda x: None if x is None else jnp.asarray(x)  # noqa: E731
    return np.asarray(_apply(model, as_array(tokens), as_array(positions),
                             as_array(segment_ids), dropout_rng, deterministic))
