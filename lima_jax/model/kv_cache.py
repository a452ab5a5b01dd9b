"""The LLaMA decoder with a key/value cache: a prefill over the prompts, then one token per step.

Same modules and parameters as `Llama.__call__` (each layer runs through
`DecoderBlock.with_attend`); only attention differs: the prefill attends within
the prompt and returns every layer's keys and values, and a decode step writes
one key/value per row into the cache and attends to the entries at or before its
position. The cache is keys and values [L, B, S, K, H] with logical axes
`CACHE_AXES`, so it rides along the layer scan and shards over KV heads under
tensor parallelism like the `wk`/`wv` weights that fill it.

Prompts of different lengths share a batch right-padded: row b's token at
position p lives in cache slot p. Padding writes slots past a row's prompt, but
a query at position p only sees slots <= p, and the decode step writes slot p
before any query can see it, so padding never leaks into a real token.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lima_jax.kernels.reference import attention_mask, masked_attention
from lima_jax.model.layers import rope_cos_sin, rope_inverse_frequencies
from lima_jax.model.llama import Llama

CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


class KVCache(NamedTuple):
    """Keys and values of every layer: [L, B, S, K, H] each, slot s = position s."""

    k: jax.Array
    v: jax.Array

    @property
    def length(self) -> int:
        """S: the slots per row."""
        return self.k.shape[2]


def _scan_layers(model: Llama, body, carry, extra_xs=None):
    """Runs `body(carry, block, extra) -> (carry, out)` over the stacked decoder blocks."""
    graphdef, stacked_state = nnx.split(model.layers)
    config = model.config
    unroll = config.n_layers if config.scan_unroll == 0 else config.scan_unroll

    def layer(carry, xs):
        layer_state, extra = xs
        return body(carry, nnx.merge(graphdef, layer_state), extra)

    return jax.lax.scan(layer, carry, (stacked_state, extra_xs), unroll=unroll)


def _cos_sin(model: Llama, positions_bt: jax.Array):
    config = model.config
    inv_freq = rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    return rope_cos_sin(positions_bt, inv_freq)


def prefill(model: Llama, tokens_bt: jax.Array, cache_length: int,
            last_b: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Runs the prompts [B, T] (right-padded) and returns (logits, cache of S=cache_length).

    logits: [B, V_padded] at each row's last prompt token `last_b` (index into T), or
    [B, T, V_padded] at every position when `last_b` is None. The head runs only on
    the rows it returns, so a long prompt does not pay for T x V logits.
    """
    b, t = tokens_bt.shape
    if cache_length < t:
        raise ValueError(f"prefill: cache_length={cache_length} is shorter than the prompts (T={t})")
    positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    ones_bt = jnp.ones((b, t), jnp.int32)
    mask_bts = attention_mask(ones_bt, ones_bt, positions_bt, positions_bt)
    cos_bth, sin_bth = _cos_sin(model, positions_bt)

    def body(x_btd, block, _):
        def attend(q, k_btkh, v_btkh):
            return masked_attention(q, k_btkh, v_btkh, mask_bts), (k_btkh, v_btkh)

        return block.with_attend(x_btd, cos_bth, sin_bth, attend)

    x_btd, (k_lbtkh, v_lbtkh) = _scan_layers(model, body, model.embed(tokens_bt))
    pad = ((0, 0), (0, 0), (0, cache_length - t), (0, 0), (0, 0))
    cache = KVCache(jnp.pad(k_lbtkh, pad), jnp.pad(v_lbtkh, pad))
    if last_b is None:
        return model.logits(x_btd), cache
    x_b1d = jnp.take_along_axis(x_btd, last_b[:, None, None].astype(jnp.int32), axis=1)
    return model.logits(x_b1d)[:, 0], cache


def decode_step(model: Llama, tokens_b: jax.Array, positions_b: jax.Array,
                cache: KVCache) -> tuple[jax.Array, KVCache]:
    """One new token per row: tokens [B] at positions [B] -> (logits [B, V_padded], cache).

    Writes each row's key and value into slot `positions_b` (a position at or past
    the cache length is dropped) and attends to slots 0..position.
    """
    b = tokens_b.shape[0]
    positions_b = positions_b.astype(jnp.int32)
    cos_bth, sin_bth = _cos_sin(model, positions_b[:, None])
    mask_bts = jnp.arange(cache.length)[None, None, :] <= positions_b[:, None, None]
    rows_b = jnp.arange(b)

    def body(carry, block, layer):
        x_btd, k_cache, v_cache = carry

        def attend(q, k_btkh, v_btkh):
            k_new = k_cache.at[layer, rows_b, positions_b].set(k_btkh[:, 0], mode="drop")
            v_new = v_cache.at[layer, rows_b, positions_b].set(v_btkh[:, 0], mode="drop")
            return masked_attention(q, k_new[layer], v_new[layer], mask_bts), (k_new, v_new)

        x_btd, (k_cache, v_cache) = block.with_attend(x_btd, cos_bth, sin_bth, attend)
        return (x_btd, k_cache, v_cache), None

    layers_l = jnp.arange(model.config.n_layers)
    (x_btd, k, v), _ = _scan_layers(model, body, (model.embed(tokens_b[:, None]), cache.k, cache.v),
                                    layers_l)
    return model.logits(x_btd)[:, 0], KVCache(k, v)
