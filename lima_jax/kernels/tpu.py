"""Flash attention for TPU in Pallas (Mosaic): forward, dK/dV and dQ kernels.

Layout: heads before time, so each tile is a [block, H] slab whose last two dims satisfy
Mosaic's (8, 128) tiling: q, out, dq [B, N, T, H]; k, v, dk, dv [B, K, T, H]. Per-row
statistics (logsumexp, delta) travel as a column [B, N, T, 1] for passes whose tiles are
(query x key) and as a row [B, N, 1, T] for the dK/dV pass, whose tiles are (key x query);
segment ids likewise as a column [B, T, 1] and a row [B, 1, T]. So every matmul is a plain
or right-transposed one, and no value moves between lanes and sublanes.

Grids put the reduction axis last ("arbitrary") with f32 accumulators in VMEM scratch.
The block plan (blocks.py) is prefetched into SMEM: a tile that holds no visible pair is
not computed, and its index map repeats the previous block index so its DMA is elided
too. Grouped-query heads: the K/V index map sends query head n to K/V head n // G; the
dK/dV grid walks the G query heads of each K/V head as an inner reduction axis.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lima_jax.kernels.blocks import (
    MASK_VALUE,
    BlockPlan,
    pair_mask,
    plan_by_key,
    plan_by_query,
    tile_is_visible,
)

LAYOUT = "BNTH"
LANES = 128
_NT = (((1,), (1,)), ((), ()))  # contract the last dims: x @ y.T


def check_block_sizes(blocks) -> None:
    for name in ("block_q", "block_kv", "block_q_dkv", "block_kv_dkv", "block_q_dq", "block_kv_dq"):
        if getattr(blocks, name) % LANES:
            raise ValueError(f"BlockSizes.{name}={getattr(blocks, name)}: the TPU kernels need "
                             f"a multiple of {LANES} (the lane width)")


def _prefetch(plan: BlockPlan) -> tuple[jax.Array, ...]:
    return (plan.q_ranges.lo, plan.q_ranges.hi, plan.kv_ranges.lo, plan.kv_ranges.hi,
            plan.first, plan.last)


def _compiler_params(semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


def _query_major_specs(groups: int, bq: int, bk: int, h: int) -> SimpleNamespace:
    """BlockSpecs of the passes whose grid is (B, N, query block, key block): forward and
    dQ. Key-side blocks are clamped to the plan's [first, last] (prefetch refs 4 and 5),
    so a skipped tile repeats the previous block index and its DMA is elided."""

    def kv_block(b_, i, j, p):
        return jnp.clip(j, p[4][b_, i], p[5][b_, i])

    def q_map(b_, n_, i, j, *p):
        return (b_, n_, i, 0)

    def kv_map(b_, n_, i, j, *p):
        return (b_, n_ // groups, kv_block(b_, i, j, p), 0)

    return SimpleNamespace(
        q=pl.BlockSpec((None, None, bq, h), q_map),  # q, out, do, dq: [bq, H]
        kv=pl.BlockSpec((None, None, bk, h), kv_map),  # k, v: [bk, H]
        q_stat=pl.BlockSpec((None, None, bq, 1), q_map),  # lse, delta: [bq, 1]
        q_seg=pl.BlockSpec((None, bq, 1), lambda b_, n_, i, j, *p: (b_, i, 0)),
        kv_seg=pl.BlockSpec((None, 1, bk), lambda b_, n_, i, j, *p: (b_, 0, kv_block(b_, i, j, p))),
    )


# ------------------------------------------------------------------------------ forward


def _forward_kernel(q_lo, q_hi, kv_lo, kv_hi, first, last,  # SMEM [B, blocks]
                    q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref,  # [bq, H] [bk, H] [bk, H] [bq, 1] [1, bk]
                    o_ref, lse_ref,  # [bq, H] [bq, 1]
                    m_scratch, l_scratch, acc_scratch,  # [bq, 1] [bq, 1] [bq, H]
                    *, causal, segments, scale, block_q, block_kv):
    del first, last  # used by the index maps
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        m_scratch[...] = jnp.full(m_scratch.shape, -jnp.inf, jnp.float32)
        l_scratch[...] = jnp.zeros(l_scratch.shape, jnp.float32)
        acc_scratch[...] = jnp.zeros(acc_scratch.shape, jnp.float32)

    visible = tile_is_visible(q_lo[b, i], q_hi[b, i], kv_lo[b, j], kv_hi[b, j], i, j,
                              block_q, block_kv, causal)

    @pl.when(visible)
    def _tile():
        s = jax.lax.dot_general(q_ref[...], k_ref[...], _NT,
                                preferred_element_type=jnp.float32) * scale  # [bq, bk]
        mask = pair_mask(i * block_q + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0),
                     j * block_kv + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1),
                     q_seg_ref[...], kv_seg_ref[...], causal, segments)
        if mask is not None:
            s = jnp.where(mask, s, MASK_VALUE)
        m_prev = m_scratch[...]
        m_next = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
        p = jnp.exp(s - m_next)
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_scratch[...] = alpha * l_scratch[...] + p.sum(axis=-1, keepdims=True)
        v = v_ref[...]
        acc_scratch[...] = alpha * acc_scratch[...] + jnp.dot(
            p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        m_scratch[...] = m_next

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        l = l_scratch[...]
        o_ref[...] = (acc_scratch[...] / l).astype(o_ref.dtype)
        lse_ref[...] = m_scratch[...] + jnp.log(l)


def forward(q, k, v, segment_ids, *, causal, segments, scale, blocks, interpret):
    """q [B, N, T, H], k/v [B, K, T, H], segment_ids [B, T] -> (out [B, N, T, H], lse [B, N, T, 1])."""
    b, n, t, h = q.shape
    groups = n // k.shape[1]
    bq, bk = blocks.block_q, blocks.block_kv
    plan = plan_by_query(segment_ids, bq, bk, causal)
    specs = _query_major_specs(groups, bq, bk, h)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=6,
        grid=(b, n, t // bq, t // bk),
        in_specs=[specs.q, specs.kv, specs.kv, specs.q_seg, specs.kv_seg],
        out_specs=[specs.q, specs.q_stat],
        scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                        pltpu.VMEM((bq, h), jnp.float32)],
    )
    kernel = functools.partial(_forward_kernel, causal=causal, segments=segments, scale=scale,
                               block_q=bq, block_kv=bk)
    out, lse = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, n, t, 1), jnp.float32)],
        compiler_params=_compiler_params(("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="lima_flash_attention_fwd_tpu",
    )(*_prefetch(plan), q, k, v, segment_ids[:, :, None], segment_ids[:, None, :])
    return out, lse


# ------------------------------------------------------------------------------ dQ


def _dq_kernel(q_lo, q_hi, kv_lo, kv_hi, first, last,
               q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref,
               dq_ref, dq_scratch, *, causal, segments, scale, block_q, block_kv):
    del first, last
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        dq_scratch[...] = jnp.zeros(dq_scratch.shape, jnp.float32)

    visible = tile_is_visible(q_lo[b, i], q_hi[b, i], kv_lo[b, j], kv_hi[b, j], i, j,
                              block_q, block_kv, causal)

    @pl.when(visible)
    def _tile():
        k, v = k_ref[...], v_ref[...]
        s = jax.lax.dot_general(q_ref[...], k, _NT, preferred_element_type=jnp.float32) * scale
        p = jnp.exp(s - lse_ref[...])  # [bq, bk]
        mask = pair_mask(i * block_q + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0),
                     j * block_kv + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1),
                     q_seg_ref[...], kv_seg_ref[...], causal, segments)
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        dp = jax.lax.dot_general(do_ref[...], v, _NT, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_ref[...])
        dq_scratch[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (dq_scratch[...] * scale).astype(dq_ref.dtype)


def backward_dq(q, k, v, segment_ids, do, lse, delta, *, causal, segments, scale, blocks, interpret):
    b, n, t, h = q.shape
    groups = n // k.shape[1]
    bq, bk = blocks.block_q_dq, blocks.block_kv_dq
    plan = plan_by_query(segment_ids, bq, bk, causal)
    specs = _query_major_specs(groups, bq, bk, h)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=6,
        grid=(b, n, t // bq, t // bk),
        in_specs=[specs.q, specs.kv, specs.kv, specs.q, specs.q_stat, specs.q_stat,
                  specs.q_seg, specs.kv_seg],
        out_specs=specs.q,
        scratch_shapes=[pltpu.VMEM((bq, h), jnp.float32)],
    )
    kernel = functools.partial(_dq_kernel, causal=causal, segments=segments, scale=scale,
                               block_q=bq, block_kv=bk)
    return pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(("parallel", "parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="lima_flash_attention_dq_tpu",
    )(*_prefetch(plan), q, k, v, do, lse, delta, segment_ids[:, :, None], segment_ids[:, None, :])


# ------------------------------------------------------------------------------ dK, dV


def _dkv_kernel(q_lo, q_hi, kv_lo, kv_hi, first, last,
                q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, kv_seg_ref, q_seg_ref,
                # [bq, H] [bk, H] [bk, H] [bq, H] [1, bq] [1, bq] [bk, 1] [1, bq]
                dk_ref, dv_ref, dk_scratch, dv_scratch,
                *, causal, segments, scale, block_q, block_kv):
    del first, last
    b, j, g, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_scratch[...] = jnp.zeros(dk_scratch.shape, jnp.float32)
        dv_scratch[...] = jnp.zeros(dv_scratch.shape, jnp.float32)

    visible = tile_is_visible(q_lo[b, i], q_hi[b, i], kv_lo[b, j], kv_hi[b, j], i, j,
                              block_q, block_kv, causal)

    @pl.when(visible)
    def _tile():
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s_t = jax.lax.dot_general(k, q, _NT, preferred_element_type=jnp.float32) * scale  # [bk, bq]
        p_t = jnp.exp(s_t - lse_ref[...])
        mask = pair_mask(i * block_q + jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 1),
                     j * block_kv + jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 0),
                     q_seg_ref[...], kv_seg_ref[...], causal, segments)
        if mask is not None:
            p_t = jnp.where(mask, p_t, 0.0)
        dv_scratch[...] += jnp.dot(p_t.astype(do.dtype), do, preferred_element_type=jnp.float32)
        dp_t = jax.lax.dot_general(v, do, _NT, preferred_element_type=jnp.float32)
        ds_t = p_t * (dp_t - delta_ref[...])
        dk_scratch[...] += jnp.dot(ds_t.astype(q.dtype), q, preferred_element_type=jnp.float32)

    @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
    def _finish():
        dk_ref[...] = (dk_scratch[...] * scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scratch[...].astype(dv_ref.dtype)


def backward_dkv(q, k, v, segment_ids, do, lse_row, delta_row, *, causal, segments, scale,
                 blocks, interpret):
    b, n, t, h = q.shape
    kv_heads = k.shape[1]
    groups = n // kv_heads
    bq, bk = blocks.block_q_dkv, blocks.block_kv_dkv
    plan = plan_by_key(segment_ids, bq, bk, causal)

    def q_block(b_, j, i, first, last):
        return jnp.clip(i, first[b_, j], last[b_, j])

    def q_map(b_, kh, j, g, i, *p):
        return (b_, kh * groups + g, q_block(b_, j, i, p[4], p[5]), 0)

    def row_map(b_, kh, j, g, i, *p):
        return (b_, kh * groups + g, 0, q_block(b_, j, i, p[4], p[5]))

    def kv_map(b_, kh, j, g, i, *p):
        return (b_, kh, j, 0)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=6,
        grid=(b, kv_heads, t // bk, groups, t // bq),
        in_specs=[
            pl.BlockSpec((None, None, bq, h), q_map),
            pl.BlockSpec((None, None, bk, h), kv_map),
            pl.BlockSpec((None, None, bk, h), kv_map),
            pl.BlockSpec((None, None, bq, h), q_map),
            pl.BlockSpec((None, None, 1, bq), row_map),
            pl.BlockSpec((None, None, 1, bq), row_map),
            pl.BlockSpec((None, bk, 1), lambda b_, kh, j, g, i, *p: (b_, j, 0)),
            pl.BlockSpec((None, 1, bq), lambda b_, kh, j, g, i, *p: (b_, 0, q_block(b_, j, i, p[4], p[5]))),
        ],
        out_specs=[pl.BlockSpec((None, None, bk, h), kv_map),
                   pl.BlockSpec((None, None, bk, h), kv_map)],
        scratch_shapes=[pltpu.VMEM((bk, h), jnp.float32), pltpu.VMEM((bk, h), jnp.float32)],
    )
    kernel = functools.partial(_dkv_kernel, causal=causal, segments=segments, scale=scale,
                               block_q=bq, block_kv=bk)
    dk, dv = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(
            ("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
        interpret=interpret,
        name="lima_flash_attention_dkv_tpu",
    )(*_prefetch(plan), q, k, v, do, lse_row, delta_row,
      segment_ids[:, :, None], segment_ids[:, None, :])
    return dk, dv


def backward(q, k, v, segment_ids, out, lse, do, *, causal, segments, scale, blocks, interpret):
    """Gradients (dq, dk, dv) in the layout of (q, k, v); lse [B, N, T, 1] from `forward`."""
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    common = dict(causal=causal, segments=segments, scale=scale, blocks=blocks, interpret=interpret)
    dq = backward_dq(q, k, v, segment_ids, do, lse, delta, **common)
    lse_row, delta_row = (jnp.swapaxes(x, 2, 3) for x in (lse, delta))
    dk, dv = backward_dkv(q, k, v, segment_ids, do, lse_row, delta_row, **common)
    return dq, dk, dv
