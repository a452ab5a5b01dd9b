"""Block sizes and the block-sparsity plan shared by the GPU and TPU kernels.

A kernel walks the [T, T] attention matrix in tiles of (block_q, block_kv). Two kinds of
tile hold no visible pair and are skipped: tiles above the causal diagonal, and tiles
whose query rows and key columns share no segment of a packed row. The plan is computed
from `segment_ids` alone (a few integers per block) before the kernel runs:

* each block's segment range [lo, hi], padding (0) ranked last so that a packed row
  (segments 1..k, then padding) gives increasing ranges;
* two blocks can share a segment only if their ranges intersect: skipping the others is
  exact for any segment layout and tight for packed rows;
* for every query block the first and last key block worth visiting (and for every key
  block the first and last query block, for the dK/dV pass); in between, a tile whose
  ranges do not intersect is still skipped inside the kernel.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

_PADDING_RANK = jnp.iinfo(jnp.int32).max


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the three kernels: forward (block_q x block_kv), the dK/dV pass and
    the dQ pass. Each must be a power of two, at least 16 (the smallest MMA tile); the
    TPU kernels also need multiples of 128 (the lane width), checked when they run."""

    block_q: int = 128
    block_kv: int = 128
    block_q_dkv: int = 128
    block_kv_dkv: int = 128
    block_q_dq: int = 128
    block_kv_dq: int = 128

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(
                    f"BlockSizes.{field.name}={value!r}: must be a power of two >= 16")

    @property
    def largest(self) -> int:
        return max(getattr(self, f.name) for f in dataclasses.fields(self))

    def clipped(self, length: int, floor: int = 16) -> BlockSizes:
        """The same sizes, none larger than `length` rounded up to a power of two (and
        not below `floor`), so a short sequence is not padded to a long block."""
        cap = max(floor, 1 << (max(length, 1) - 1).bit_length())
        return BlockSizes(**{f.name: min(getattr(self, f.name), cap)
                             for f in dataclasses.fields(self)})


def default_block_sizes(backend: str, head_dim: int) -> BlockSizes:
    """Starting points (not tuned on hardware here): TPU tiles are large to amortise the
    per-step overhead of the grid; GPU tiles keep the f32 accumulators in registers."""
    if backend == "tpu":
        return BlockSizes(512, 512, 256, 512, 512, 256)
    if head_dim <= 64:
        return BlockSizes(128, 64, 64, 128, 128, 64)
    return BlockSizes(128, 64, 64, 64, 64, 64)


class SegmentRanges(NamedTuple):
    """Per-block segment ranges [lo, hi] of one blocking of a [B, T] row: [B, T / block]."""

    lo: jax.Array
    hi: jax.Array


def segment_ranges(segment_ids: jax.Array, block: int) -> SegmentRanges:
    """Ranges of `segment_ids` [B, T] (T a multiple of `block`), padding ranked last."""
    b, t = segment_ids.shape
    ranked = jnp.where(segment_ids == 0, _PADDING_RANK, segment_ids).reshape(b, t // block, block)
    return SegmentRanges(ranked.min(-1).astype(jnp.int32), ranked.max(-1).astype(jnp.int32))


def visible_tiles(q: SegmentRanges, kv: SegmentRanges, block_q: int, block_kv: int,
                  causal: bool) -> jax.Array:
    """[B, T/block_q, T/block_kv] bool: the tile may hold a visible (query, key) pair."""
    overlap = (kv.lo[:, None, :] <= q.hi[:, :, None]) & (q.lo[:, :, None] <= kv.hi[:, None, :])
    if causal:
        nq, nk = q.lo.shape[1], kv.lo.shape[1]
        first_key = jnp.arange(nk) * block_kv
        last_query = jnp.arange(nq) * block_q + block_q - 1
        overlap = overlap & (first_key[None, :] <= last_query[:, None])[None]
    return overlap


def first_last(visible: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For each row of `visible` [B, I, J]: the first and last J index that is True
    (every row has one: a query block always sees its own diagonal)."""
    j = visible.shape[-1]
    first = jnp.argmax(visible, axis=-1).astype(jnp.int32)
    last = (j - 1 - jnp.argmax(visible[..., ::-1], axis=-1)).astype(jnp.int32)
    return first, last


class BlockPlan(NamedTuple):
    """What a kernel needs to skip tiles: the segment ranges of its query and key blocks,
    and for each outer block the first and last inner block to visit."""

    q_ranges: SegmentRanges  # [B, T / block_q]
    kv_ranges: SegmentRanges  # [B, T / block_kv]
    first: jax.Array  # [B, outer blocks]
    last: jax.Array  # [B, outer blocks]


def plan_by_query(segment_ids, block_q: int, block_kv: int, causal: bool) -> BlockPlan:
    """Plan for a pass whose outer loop is over query blocks (forward, dQ)."""
    q, kv = segment_ranges(segment_ids, block_q), segment_ranges(segment_ids, block_kv)
    first, last = first_last(visible_tiles(q, kv, block_q, block_kv, causal))
    return BlockPlan(q, kv, first, last)


def plan_by_key(segment_ids, block_q: int, block_kv: int, causal: bool) -> BlockPlan:
    """Plan for a pass whose outer loop is over key blocks (dK/dV)."""
    q, kv = segment_ranges(segment_ids, block_q), segment_ranges(segment_ids, block_kv)
    visible = visible_tiles(q, kv, block_q, block_kv, causal)
    first, last = first_last(jnp.swapaxes(visible, 1, 2))
    return BlockPlan(q, kv, first, last)


def tile_is_visible(q_lo, q_hi, kv_lo, kv_hi, q_block, kv_block, block_q: int, block_kv: int,
                    causal: bool):
    """The in-kernel form of `visible_tiles` for one tile, from scalars."""
    visible = (kv_lo <= q_hi) & (q_lo <= kv_hi)
    if causal:
        visible = visible & (kv_block * block_kv <= q_block * block_q + block_q - 1)
    return visible


# The logit of a pair that may not attend: far below any real logit, yet finite, so a fully
# masked tile row gives exp() == 0 instead of the NaN that -inf - (-inf) would.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def pair_mask(q_index, kv_index, q_seg, kv_seg, causal: bool, segments: bool):
    """In-kernel: which (query, key) pairs of a tile are visible, or None when all are.
    The arguments broadcast to the tile's shape (either orientation)."""
    mask = None
    if causal:
        mask = kv_index <= q_index
    if segments:
        same = q_seg == kv_seg
        mask = same if mask is None else mask & same
    return mask
