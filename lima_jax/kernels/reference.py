"""Plain-jnp attention: the model's 'xla' attention and the reference every Pallas kernel is
tested against (one implementation, as jax's Pallas ops keep `mha_reference` beside the kernel).

q [B, T, N, H], k and v [B, S, K, H] with K dividing N (grouped-query heads share K/V through a
reshape, never a repeat). Logits and softmax in float32. It builds the whole [B, K, G, T, S]
logit tensor, so the kernels replace it on accelerators for long rows.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def attention_mask(
    q_segment_ids: jax.Array,  # [B, T] int32, 0 = padding
    kv_segment_ids: jax.Array,  # [B, S]
    q_positions: jax.Array,  # [B, T]
    kv_positions: jax.Array,  # [B, S]
    causal: bool = True,
) -> jax.Array:
    """[B, T, S] bool: a query sees a key of its own segment (at or before its position).

    Packed examples never see each other; padding (segment 0) sees only padding, which
    keeps its softmax finite.
    """
    mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        mask = mask & (kv_positions[:, None, :] <= q_positions[:, :, None])
    return mask


def masked_attention(q_btnh: jax.Array, k_bskh: jax.Array, v_bskh: jax.Array, mask_bts: jax.Array,
                     sm_scale: float | None = None) -> jax.Array:
    """Softmax attention [B, T, N, H] in q's dtype under a [B, T, S] visibility mask."""
    b, t, n, h = q_btnh.shape
    kv_heads = k_bskh.shape[2]
    q_btkgh = q_btnh.reshape(b, t, kv_heads, n // kv_heads, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q_btkgh, k_bskh, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(h) if sm_scale is None else logits * sm_scale
    logits = jnp.where(mask_bts[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_bskh.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_bskh, preferred_element_type=jnp.float32)
    return out.reshape(b, t, n, h).astype(q_btnh.dtype)


def attention_reference(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
    *,
    segment_ids: jax.Array | None = None,  # [B, T] int32, 0 = padding
    causal: bool = True,
    sm_scale: float | None = None,
) -> jax.Array:
    """`flash_attention`'s contract computed the plain way: causal by token index, packed
    examples kept apart by `segment_ids`."""
    b, t = q.shape[:2]
    ids = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = attention_mask(ids, ids, index, index, causal)
    return masked_attention(q, k, v, mask, 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale)
