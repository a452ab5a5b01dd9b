"""Flash attention inside a sharded program: the kernel under `shard_map`.

A Pallas call is opaque to XLA's partitioner (Mosaic calls must even sit in a manual
region), so inside a jitted, sharded step the kernel runs per device on its own rows
and heads: batch over the mesh axes of the `batch` rule, query and K/V heads over
those of the `heads` rule. Attention never mixes rows or heads, so no communication is
needed. The mesh and rules come from the enclosing `sharding.activation_context`; with
no mesh (or one device) the kernel is called directly.
"""

from __future__ import annotations

import functools
import logging

import jax
from jax.sharding import PartitionSpec

from lima_jax import sharding as sharding_lib
from lima_jax.kernels.blocks import BlockSizes
from lima_jax.kernels.flash_attention import default_backend, flash_attention

log = logging.getLogger(__name__)


def _axes(spec_entry) -> tuple[str, ...]:
    if spec_entry is None:
        return ()
    return (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry)


def sharded_flash_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, T, K, H]
    v: jax.Array,  # [B, T, K, H]
    segment_ids: jax.Array | None,  # [B, T]
    *,
    causal: bool = True,
    backend: str | None = None,
    interpret: bool | None = None,
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """`flash_attention` partitioned over the context mesh. On CPU (no Pallas backend)
    it runs the TPU kernel in interpret mode: exact, and slow."""
    if backend is None:
        backend = default_backend() or "tpu"
    if interpret is None:
        interpret = default_backend() is None
    attend = functools.partial(flash_attention, causal=causal, backend=backend,
                               interpret=interpret, block_sizes=block_sizes)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return attend(q, k, v, segment_ids=segment_ids)

    rules = sharding_lib.context_rules()
    b, _, n, _ = q.shape
    kv_heads = k.shape[2]
    (batch,) = sharding_lib.logical_to_spec(("batch",), (b,), mesh, rules)
    (heads,) = sharding_lib.logical_to_spec(("heads",), (n,), mesh, rules)
    (kv,) = sharding_lib.logical_to_spec(("kv_heads",), (kv_heads,), mesh, rules)
    if _axes(heads) != _axes(kv):
        # Query head n reads K/V head n // G: both must be split the same way, or a
        # device would hold query heads whose K/V head lives elsewhere.
        log.warning("flash attention: %d query and %d K/V heads cannot be split alike over "
                    "%s; heads are gathered for attention", n, kv_heads, _axes(heads) or _axes(kv))
        heads = None
    rows = PartitionSpec(batch, None, heads, None)
    if segment_ids is None:
        fn = jax.shard_map(lambda q_, k_, v_: attend(q_, k_, v_), mesh=mesh,
                           in_specs=(rows, rows, rows), out_specs=rows, check_vma=False)
        return fn(q, k, v)
    fn = jax.shard_map(lambda q_, k_, v_, s_: attend(q_, k_, v_, segment_ids=s_), mesh=mesh,
                       in_specs=(rows, rows, rows, PartitionSpec(batch, None)), out_specs=rows,
                       check_vma=False)
    return fn(q, k, v, segment_ids)
