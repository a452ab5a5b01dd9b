"""Flash attention for GPU in Pallas (Triton lowering): forward, dK/dV and dQ kernels.

Layout: the model's own [B, T, heads, H], no transposes; a program owns one block of
rows of one head and loops over the blocks of the other side with `fori_loop`, keeping
its accumulators in registers (FlashAttention-2's split: the forward and dQ passes
loop over keys for a query block, the dK/dV pass loops over queries for a key block).

The block plan (blocks.py) gives each program the first and last block of its loop, so
tiles above the causal diagonal and tiles of other packed examples are never loaded.
Grouped-query heads: the forward and dQ programs of query head n read K/V head n // G;
a dK/dV program owns one K/V head and walks its G query heads, so K/V are never copied.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from lima_jax.kernels.blocks import MASK_VALUE, BlockPlan, pair_mask, plan_by_key, plan_by_query

LAYOUT = "BTNH"


def _compiler_params(head_dim: int, num_stages: int = 2):
    return pl_triton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=num_stages)


def _plan_arrays(plan: BlockPlan) -> tuple[jax.Array, ...]:
    return (plan.q_ranges.lo, plan.q_ranges.hi, plan.kv_ranges.lo, plan.kv_ranges.hi,
            plan.first, plan.last)


def _plan_specs(plan: BlockPlan, batch_of) -> list[pl.BlockSpec]:
    """Each plan array [B, blocks] as one row per program (indexed by batch)."""
    return [pl.BlockSpec((None, x.shape[1]), lambda *g: (batch_of(*g), 0))
            for x in _plan_arrays(plan)]


def _dot_nt(x, y):
    """x @ y.T with f32 accumulation."""
    return jax.lax.dot_general(x, y, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


# ------------------------------------------------------------------------------ forward


def _forward_kernel(q_ref, k_ref, v_ref, seg_ref,  # [bq, H] [T, H] [T, H] [T]
                    q_lo, q_hi, kv_lo, kv_hi, first, last,  # [blocks]
                    o_ref, lse_ref,  # [bq, H] [bq]
                    *, causal, segments, scale, block_q, block_kv):
    del q_lo, q_hi, kv_lo, kv_hi  # the loop bounds already hold the skipping
    i = pl.program_id(0)
    q = q_ref[...]
    h = q.shape[-1]
    q_index = i * block_q + jnp.arange(block_q)
    q_seg = seg_ref[pl.ds(i * block_q, block_q)]

    def body(j, carry):
        acc, m, l = carry
        keys = pl.ds(j * block_kv, block_kv)
        s = _dot_nt(q, k_ref[keys, :]) * scale  # [bq, bk]
        mask = pair_mask(q_index[:, None], (j * block_kv + jnp.arange(block_kv))[None, :],
                     q_seg[:, None], seg_ref[keys][None, :], causal, segments)
        if mask is not None:
            s = jnp.where(mask, s, MASK_VALUE)
        m_next = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp(s - m_next[:, None])
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        alpha = jnp.exp(m - m_next)
        v = v_ref[keys, :]
        acc = alpha[:, None] * acc + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return acc, m_next, alpha * l + p.sum(axis=-1)

    init = (jnp.zeros((block_q, h), jnp.float32), jnp.full((block_q,), -jnp.inf, jnp.float32),
            jnp.zeros((block_q,), jnp.float32))
    acc, m, l = jax.lax.fori_loop(first[i], last[i] + 1, body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def forward(q, k, v, segment_ids, *, causal, segments, scale, blocks, interpret):
    """q [B, T, N, H], k/v [B, T, K, H], segment_ids [B, T] -> (out [B, T, N, H], lse [B, N, T])."""
    b, t, n, h = q.shape
    groups = n // k.shape[2]
    bq, bk = blocks.block_q, blocks.block_kv
    plan = plan_by_query(segment_ids, bq, bk, causal)
    kernel = functools.partial(_forward_kernel, causal=causal, segments=segments, scale=scale,
                               block_q=bq, block_kv=bk)
    return pl.pallas_call(
        kernel,
        grid=(t // bq, b, n),
        in_specs=[
            pl.BlockSpec((None, bq, None, h), lambda i, b_, n_: (b_, i, n_, 0)),
            pl.BlockSpec((None, t, None, h), lambda i, b_, n_: (b_, 0, n_ // groups, 0)),
            pl.BlockSpec((None, t, None, h), lambda i, b_, n_: (b_, 0, n_ // groups, 0)),
            pl.BlockSpec((None, t), lambda i, b_, n_: (b_, 0)),
            *_plan_specs(plan, lambda i, b_, n_: b_),
        ],
        out_specs=[
            pl.BlockSpec((None, bq, None, h), lambda i, b_, n_: (b_, i, n_, 0)),
            pl.BlockSpec((None, None, bq), lambda i, b_, n_: (b_, n_, i)),
        ],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, n, t), jnp.float32)],
        compiler_params=_compiler_params(h),
        interpret=interpret,
        name="lima_flash_attention_fwd_gpu",
    )(q, k, v, segment_ids, *_plan_arrays(plan))


# ------------------------------------------------------------------------------ dQ


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_ref,
               q_lo, q_hi, kv_lo, kv_hi, first, last, dq_ref,
               *, causal, segments, scale, block_q, block_kv):
    del q_lo, q_hi, kv_lo, kv_hi
    i = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_index = i * block_q + jnp.arange(block_q)
    q_seg = seg_ref[pl.ds(i * block_q, block_q)]

    def body(j, dq):
        keys = pl.ds(j * block_kv, block_kv)
        k, v = k_ref[keys, :], v_ref[keys, :]
        p = jnp.exp(_dot_nt(q, k) * scale - lse[:, None])  # [bq, bk]
        mask = pair_mask(q_index[:, None], (j * block_kv + jnp.arange(block_kv))[None, :],
                     q_seg[:, None], seg_ref[keys][None, :], causal, segments)
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        ds = p * (_dot_nt(do, v) - delta[:, None])
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    dq = jax.lax.fori_loop(first[i], last[i] + 1, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _backward_dq(q, k, v, segment_ids, do, lse, delta, *, causal, segments, scale, blocks,
                 interpret):
    b, t, n, h = q.shape
    groups = n // k.shape[2]
    bq, bk = blocks.block_q_dq, blocks.block_kv_dq
    plan = plan_by_query(segment_ids, bq, bk, causal)
    kernel = functools.partial(_dq_kernel, causal=causal, segments=segments, scale=scale,
                               block_q=bq, block_kv=bk)
    q_spec = pl.BlockSpec((None, bq, None, h), lambda i, b_, n_: (b_, i, n_, 0))
    kv_spec = pl.BlockSpec((None, t, None, h), lambda i, b_, n_: (b_, 0, n_ // groups, 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda i, b_, n_: (b_, n_, i))
    return pl.pallas_call(
        kernel,
        grid=(t // bq, b, n),
        in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec,
                  pl.BlockSpec((None, t), lambda i, b_, n_: (b_, 0)),
                  *_plan_specs(plan, lambda i, b_, n_: b_)],
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(h),
        interpret=interpret,
        name="lima_flash_attention_dq_gpu",
    )(q, k, v, do, lse, delta, segment_ids, *_plan_arrays(plan))


# ------------------------------------------------------------------------------ dK, dV


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, seg_ref,
                # [T, G, H] [bk, H] [bk, H] [T, G, H] [G, T] [G, T] [T]
                q_lo, q_hi, kv_lo, kv_hi, first, last, dk_ref, dv_ref,
                *, causal, segments, scale, block_q, block_kv, groups):
    del q_lo, q_hi, kv_lo, kv_hi
    j = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]
    kv_index = j * block_kv + jnp.arange(block_kv)
    kv_seg = seg_ref[pl.ds(j * block_kv, block_kv)]

    def body(i, carry, g):
        dk, dv = carry
        rows = pl.ds(i * block_q, block_q)
        q, do = q_ref[rows, g, :], do_ref[rows, g, :]
        p_t = jnp.exp(_dot_nt(k, q) * scale - lse_ref[g, rows][None, :])  # [bk, bq]
        mask = pair_mask((i * block_q + jnp.arange(block_q))[None, :], kv_index[:, None],
                     seg_ref[rows][None, :], kv_seg[:, None], causal, segments)
        if mask is not None:
            p_t = jnp.where(mask, p_t, 0.0)
        dv = dv + jnp.dot(p_t.astype(do.dtype), do, preferred_element_type=jnp.float32)
        ds_t = p_t * (_dot_nt(v, do) - delta_ref[g, rows][None, :])
        dk = dk + jnp.dot(ds_t.astype(q.dtype), q, preferred_element_type=jnp.float32)
        return dk, dv

    carry = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    for g in range(groups):  # static: G is small, and each head is its own strided load
        carry = jax.lax.fori_loop(first[j], last[j] + 1, functools.partial(body, g=g), carry)
    dk, dv = carry
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _backward_dkv(q, k, v, segment_ids, do, lse, delta, *, causal, segments, scale, blocks,
                  interpret):
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    groups = n // kv_heads
    bq, bk = blocks.block_q_dkv, blocks.block_kv_dkv
    plan = plan_by_key(segment_ids, bq, bk, causal)
    kernel = functools.partial(_dkv_kernel, causal=causal, segments=segments, scale=scale,
                               block_q=bq, block_kv=bk, groups=groups)
    heads_spec = pl.BlockSpec((None, t, groups, h), lambda j, b_, kh: (b_, 0, kh, 0))
    kv_spec = pl.BlockSpec((None, bk, None, h), lambda j, b_, kh: (b_, j, kh, 0))
    rows_spec = pl.BlockSpec((None, groups, t), lambda j, b_, kh: (b_, kh, 0))
    return pl.pallas_call(
        kernel,
        grid=(t // bk, b, kv_heads),
        in_specs=[heads_spec, kv_spec, kv_spec, heads_spec, rows_spec, rows_spec,
                  pl.BlockSpec((None, t), lambda j, b_, kh: (b_, 0)),
                  *_plan_specs(plan, lambda j, b_, kh: b_)],
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(h),
        interpret=interpret,
        name="lima_flash_attention_dkv_gpu",
    )(q, k, v, do, lse, delta, segment_ids, *_plan_arrays(plan))


def backward(q, k, v, segment_ids, out, lse, do, *, causal, segments, scale, blocks, interpret):
    """Gradients (dq, dk, dv) in the layout of (q, k, v); lse [B, N, T] from `forward`."""
    delta = jnp.einsum("BTNH,BTNH->BNT", out.astype(jnp.float32), do.astype(jnp.float32))
    common = dict(causal=causal, segments=segments, scale=scale, blocks=blocks, interpret=interpret)
    dq = _backward_dq(q, k, v, segment_ids, do, lse, delta, **common)
    dk, dv = _backward_dkv(q, k, v, segment_ids, do, lse, delta, **common)
    return dq, dk, dv
