"""Plain-jnp attention: the reference every Pallas kernel is tested against.

Same contract as `flash_attention`: q [B, T, N, H], k and v [B, T, K, H] with K dividing N
(grouped-query heads share K/V through a reshape, never a repeat), optional
`segment_ids` [B, T] (0 = padding), causal by token index. Logits and softmax in float32.
It builds the whole [B, K, G, T, T] logit tensor, so it is for tests and small shapes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def attention_mask(segment_ids: jax.Array | None, t: int, causal: bool, batch: int) -> jax.Array:
    """[B, T, T] bool: query i may see key j (same segment, and j <= i when causal).

    Padding (segment 0) sees padding only, so its softmax stays finite.
    """
    mask = jnp.ones((batch, t, t), bool)
    if segment_ids is not None:
        mask = segment_ids[:, :, None] == segment_ids[:, None, :]
    if causal:
        mask = mask & (jnp.arange(t)[None, :, None] >= jnp.arange(t)[None, None, :])
    return mask


def attention_reference(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
    *,
    segment_ids: jax.Array | None = None,  # [B, T] int32, 0 = padding
    causal: bool = True,
    sm_scale: float | None = None,
) -> jax.Array:
    """Softmax attention [B, T, N, H] in q's dtype, computed the plain way."""
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    scale = 1.0 / math.sqrt(h) if sm_scale is None else sm_scale
    q_btkgh = q.reshape(b, t, kv_heads, n // kv_heads, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q_btkgh, k, preferred_element_type=jnp.float32)
    logits = logits * scale
    mask = attention_mask(segment_ids, t, causal, b)
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, n, h).astype(q.dtype)
