"""`flash_attention`: the public entry to the Pallas attention kernels (GPU and TPU).

Checks every argument, pads the sequence to a whole number of blocks (the padding is a
segment of its own, so real tokens never see it), moves heads to the backend's layout,
and wraps the backend's forward and backward kernels in a `jax.custom_vjp`. The forward
keeps only the output and the per-row logsumexp; the backward recomputes the attention
probabilities tile by tile, so no [T, T] buffer exists in either direction.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType

import jax
import jax.numpy as jnp

from lima_jax.kernels import gpu, tpu
from lima_jax.kernels.blocks import BlockSizes, default_block_sizes

BACKENDS = ("gpu", "tpu")
SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16)


def context_platform() -> str:
    """The platform code is traced for: the enclosing mesh's (`jax.set_mesh`; an
    ahead-of-time TPU compile on a CPU host traces for 'tpu'), else the default backend's."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return device.platform if device is not None else jax.default_backend()


def default_backend() -> str | None:
    """The kernel family of the platform being traced for: 'gpu', 'tpu', or None (CPU)."""
    platform = context_platform()
    if platform == "tpu":
        return "tpu"
    if platform in ("gpu", "cuda", "rocm"):
        return "gpu"
    return None


def _backend_module(backend: str) -> ModuleType:
    return {"gpu": gpu, "tpu": tpu}[backend]


def _check_inputs(q, k, v, segment_ids, sm_scale) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"flash_attention: {name} must be [B, T, heads, H], "
                             f"got shape {getattr(x, 'shape', None)}")
        if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in SUPPORTED_DTYPES]:
            raise ValueError(f"flash_attention: {name}.dtype={x.dtype} is not float32 or bfloat16")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"flash_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    b, t, n, h = q.shape
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k.shape {k.shape} != v.shape {v.shape}")
    if k.shape[0] != b or k.shape[1] != t or k.shape[3] != h:
        raise ValueError(f"flash_attention: k/v shape {k.shape} does not match q {q.shape} "
                         f"in batch, length or head dim (self-attention: [B, T, K, H])")
    if n % k.shape[2]:
        raise ValueError(f"flash_attention: {k.shape[2]} key/value heads do not divide "
                         f"{n} query heads")
    if h not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash_attention: head dim {h} is not one of {SUPPORTED_HEAD_DIMS}")
    if segment_ids is not None:
        if segment_ids.shape != (b, t):
            raise ValueError(f"flash_attention: segment_ids shape {segment_ids.shape} != "
                             f"(B, T) = {(b, t)}")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"flash_attention: segment_ids.dtype={segment_ids.dtype} "
                             "must be an integer type")
    if sm_scale is not None and not (isinstance(sm_scale, (int, float)) and sm_scale > 0):
        raise ValueError(f"flash_attention: sm_scale={sm_scale!r} must be a positive number")


def flash_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
    *,
    segment_ids: jax.Array | None = None,  # [B, T] int, 0 = padding
    causal: bool = True,
    sm_scale: float | None = None,
    block_sizes: BlockSizes | None = None,
    backend: str | None = None,
    interpret: bool = False,
) -> jax.Array:
    """Softmax attention [B, T, N, H] (q's dtype) with Pallas kernels, differentiable.

    K must divide N (grouped-query heads share K/V without copies). `segment_ids` packs
    several examples into a row: a token sees only tokens of its own segment (and with
    `causal`, only those at or before its index). `sm_scale` defaults to 1/sqrt(H).
    `backend` is 'gpu' (Triton) or 'tpu' (Mosaic); the default follows the platform, and
    on CPU a backend must be named and run with `interpret=True`.
    """
    _check_inputs(q, k, v, segment_ids, sm_scale)
    if backend is None:
        backend = default_backend()
        if backend is None:
            raise ValueError("flash_attention: no Pallas backend on CPU; pass backend='gpu' or "
                             "'tpu' with interpret=True (or use the jnp reference)")
    if backend not in BACKENDS:
        raise ValueError(f"flash_attention: backend={backend!r} is not one of {BACKENDS}")
    if block_sizes is None:
        block_sizes = default_block_sizes(backend, q.shape[-1])
    if not isinstance(block_sizes, BlockSizes):
        raise ValueError(f"flash_attention: block_sizes must be a BlockSizes, got {block_sizes!r}")
    module = _backend_module(backend)

    b, t, _, h = q.shape
    blocks = block_sizes.clipped(t, floor=tpu.LANES if backend == "tpu" else 16)
    if backend == "tpu":
        tpu.check_block_sizes(blocks)
    padded = -(-t // blocks.largest) * blocks.largest
    segments = segment_ids is not None or padded != t
    if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
    segment_ids = segment_ids.astype(jnp.int32)
    if padded != t:
        pad = ((0, 0), (0, padded - t), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, padded - t)))
    if module.LAYOUT == "BNTH":
        q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    scale = 1.0 / math.sqrt(h) if sm_scale is None else float(sm_scale)
    out = _flash(q, k, v, segment_ids, backend, causal, segments, scale, blocks, interpret)
    if module.LAYOUT == "BNTH":
        out = jnp.swapaxes(out, 1, 2)
    return out[:, :t]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9))
def _flash(q, k, v, segment_ids, backend, causal, segments, scale, blocks, interpret):
    out, _ = _backend_module(backend).forward(
        q, k, v, segment_ids, causal=causal, segments=segments, scale=scale, blocks=blocks,
        interpret=interpret)
    return out


def _flash_fwd(q, k, v, segment_ids, backend, causal, segments, scale, blocks, interpret):
    out, lse = _backend_module(backend).forward(
        q, k, v, segment_ids, causal=causal, segments=segments, scale=scale, blocks=blocks,
        interpret=interpret)
    return out, (q, k, v, segment_ids, out, lse)


def _flash_bwd(backend, causal, segments, scale, blocks, interpret, residuals, do):
    q, k, v, segment_ids, out, lse = residuals
    dq, dk, dv = _backend_module(backend).backward(
        q, k, v, segment_ids, out, lse, do, causal=causal, segments=segments, scale=scale,
        blocks=blocks, interpret=interpret)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)
