"""The model's attention implementations, chosen by `LlamaConfig.attention`.

* 'xla': plain jnp (`kernels.reference.masked_attention`) with a [B, T, T] mask from positions and
  segments; runs anywhere, and is the reference.
* 'pallas': the flash-attention kernels of `lima_jax.kernels` (Triton on GPU, Mosaic on
  TPU, the TPU kernel in interpret mode on CPU), under `shard_map` in a sharded step.
  Causality is by token index and packed examples are kept apart by segment, which
  equals the position mask for rows built by the packer (each example one run of
  increasing positions); outputs at padding differ, and no loss reads them.
* 'cudnn': `jax.nn.dot_product_attention(implementation='cudnn')`, causal, with each
  row's padding given as its length. It cannot keep packed examples apart: training
  configs refuse `data.pack` with it, and a row holding a second segment turns the
  output into NaN so a mistake stops the run instead of training on leaked attention.
* 'auto': the fastest correct choice for the platform: 'xla' on CPU, 'pallas' on TPU,
  and on GPU 'cudnn' for rows of one example, 'pallas' for packed rows ('xla' where the
  kernels do not support the head dim). The model decides per call (segment_ids given
  = maybe packed); training configs decide from `data.pack`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lima_jax.kernels.reference import attention_mask, masked_attention

IMPLEMENTATIONS = ("auto", "xla", "pallas", "cudnn")
PALLAS_HEAD_DIMS = (64, 128)

Attend = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def context_platform() -> str:
    """The platform being traced for (imported lazily: Pallas loads only when used)."""
    from lima_jax.kernels.flash_attention import context_platform as platform

    return platform()


def resolve(implementation: str, *, packed: bool, head_dim: int, platform: str | None = None) -> str:
    """The concrete implementation for 'auto' (others are returned as given)."""
    if implementation != "auto":
        return implementation
    platform = platform or context_platform()
    if platform in ("gpu", "cuda", "rocm") and not packed:
        return "cudnn"
    if platform in ("tpu", "gpu", "cuda", "rocm") and head_dim in PALLAS_HEAD_DIMS:
        return "pallas"
    return "xla"


def cudnn_attention(q_btnh, k_bskh, v_bskh, segment_ids_bt):
    """Causal cuDNN attention for rows of one example followed by padding."""
    lengths = (segment_ids_bt != 0).sum(axis=1).astype(jnp.int32)
    out = jax.nn.dot_product_attention(
        q_btnh, k_bskh, v_bskh, is_causal=True, query_seq_lengths=lengths,
        key_value_seq_lengths=lengths, implementation="cudnn")
    # A second segment would attend to the first: poison rather than leak.
    packed = (segment_ids_bt > 1).any(axis=1)
    return jnp.where(packed[:, None, None, None], jnp.nan, out).astype(q_btnh.dtype)


def make_attend(implementation: str, segment_ids: jax.Array | None, positions: jax.Array,
                head_dim: int) -> Attend:
    """`attend(q [B,T,N,H], k [B,T,K,H], v [B,T,K,H]) -> [B,T,N,H]` for one forward
    pass; `segment_ids` None means one example per row (no padding)."""
    implementation = resolve(implementation, packed=segment_ids is not None, head_dim=head_dim)
    if implementation == "pallas":
        from lima_jax.kernels.sharded import (
            sharded_flash_attention,  # Pallas loads lazily
        )

        return lambda q, k, v: sharded_flash_attention(q, k, v, segment_ids)
    if implementation == "cudnn":
        b, t = positions.shape
        ids = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
        return lambda q, k, v: cudnn_attention(q, k, v, ids)
    ids = jnp.ones(positions.shape, jnp.int32) if segment_ids is None else segment_ids
    mask_bts = attention_mask(ids, ids, positions, positions)
    return lambda q, k, v: masked_attention(q, k, v, mask_bts)
