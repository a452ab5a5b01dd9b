"""The Pallas flash-attention kernels (GPU Triton, TPU Mosaic) against the jnp reference,
in interpret mode on CPU: outputs and the gradients of q, k, v; argument checks; the
block-skipping plan; no [T, T] buffer; the GPU kernels lower to Triton IR."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lima_jax.kernels import BlockSizes, attention_reference, flash_attention
from lima_jax.kernels.blocks import (
    plan_by_key,
    plan_by_query,
    segment_ranges,
    visible_tiles,
)
from tests.helpers.kernel_cases import (
    TOLERANCE,
    case_id,
    grid_cases,
    inputs,
    random_packing,
    relative_error,
    value_and_grads,
)


def _reference(q, k, v, seg, causal):
    f32 = lambda x: x.astype(jnp.float32)
    return lambda q_, k_, v_: attention_reference(f32(q_), f32(k_), f32(v_), segment_ids=seg,
                                                  causal=causal)


@pytest.mark.parametrize("case", grid_cases(), ids=case_id)
def test_kernel_matches_reference_in_value_and_gradient(case):
    q, k, v, seg, w = inputs(case)
    kernel = lambda q_, k_, v_: flash_attention(
        q_, k_, v_, segment_ids=seg, causal=case["causal"], backend=case["backend"], interpret=True)
    out, grads = value_and_grads(kernel, q, k, v, w)
    ref_out, ref_grads = value_and_grads(_reference(q, k, v, seg, case["causal"]), q, k, v, w)
    assert out.dtype == q.dtype and out.shape == q.shape
    errors = {"out": relative_error(out, ref_out)}
    errors.update({f"d{name}": relative_error(g, r)
                   for name, g, r in zip("qkv", grads, ref_grads)})
    print(case_id(case), {name: f"{e:.2e}" for name, e in errors.items()})
    assert all(g.dtype == x.dtype for g, x in zip(grads, (q, k, v)))
    assert max(errors.values()) <= TOLERANCE[case["dtype"]], errors


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_lengths_off_the_block_grid_are_padded_and_masked(backend):
    """T = 200 with 128-blocks: padded to 256 inside, the padding never seen."""
    case = dict(t=200, heads=(4, 2), h=64, causal=True, packed=True, dtype="float32")
    q, k, v, seg, w = inputs(case, seed=3, batch=2)
    blocks = BlockSizes(128, 128, 128, 128, 128, 128)
    kernel = lambda q_, k_, v_: flash_attention(
        q_, k_, v_, segment_ids=seg, backend=backend, interpret=True, block_sizes=blocks)
    out, grads = value_and_grads(kernel, q, k, v, w)
    ref_out, ref_grads = value_and_grads(_reference(q, k, v, seg, True), q, k, v, w)
    assert out.shape == (2, 200, 4, 64)
    assert relative_error(out, ref_out) <= 1e-5
    for g, r in zip(grads, ref_grads):
        assert relative_error(g, r) <= 1e-5


def test_no_segment_ids_means_one_example_per_row():
    case = dict(t=256, heads=(4, 4), h=64, causal=True, packed=False, dtype="float32")
    q, k, v, _, _ = inputs(case, seed=1)
    ones = jnp.ones(q.shape[:2], jnp.int32)
    a = flash_attention(q, k, v, backend="tpu", interpret=True)
    b = flash_attention(q, k, v, segment_ids=ones, backend="tpu", interpret=True)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------- argument checks

def _qkv(t=128, n=4, k=2, h=64, dtype=jnp.float32):
    return (jnp.zeros((1, t, n, h), dtype), jnp.zeros((1, t, k, h), dtype),
            jnp.zeros((1, t, k, h), dtype))


@pytest.mark.parametrize("change, message", [
    (lambda q, k, v: (q[0], k, v), "q must be \\[B, T, heads, H\\]"),
    (lambda q, k, v: (q.astype(jnp.float16), k, v), "q.dtype=float16"),
    (lambda q, k, v: (q, k.astype(jnp.bfloat16), v), "dtypes differ"),
    (lambda q, k, v: (q, k[:, :64], v[:, :64]), "does not match q"),
    (lambda q, k, v: (q, k, v[:, :, :1]), "k.shape .* != v.shape"),
    (lambda q, k, v: (q[:, :, :3], k, v), "2 key/value heads do not divide 3"),
    (lambda q, k, v: (q[..., :32], k[..., :32], v[..., :32]), "head dim 32"),
])
def test_bad_shapes_and_dtypes_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        flash_attention(*change(*_qkv()), backend="tpu", interpret=True)


def test_bad_segment_ids_scale_and_backend_are_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="segment_ids shape"):
        flash_attention(q, k, v, segment_ids=jnp.ones((1, 64), jnp.int32), backend="tpu")
    with pytest.raises(ValueError, match="integer"):
        flash_attention(q, k, v, segment_ids=jnp.ones((1, 128)), backend="tpu")
    with pytest.raises(ValueError, match="sm_scale"):
        flash_attention(q, k, v, sm_scale=-1.0, backend="tpu")
    with pytest.raises(ValueError, match="backend='cuda'"):
        flash_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="no Pallas backend on CPU"):
        flash_attention(q, k, v)
    with pytest.raises(ValueError, match="TPU kernels need a multiple of 128"):
        flash_attention(jnp.zeros((1, 512, 4, 64)), jnp.zeros((1, 512, 2, 64)),
                        jnp.zeros((1, 512, 2, 64)), backend="tpu",
                        block_sizes=BlockSizes(block_q=64), interpret=True)


@pytest.mark.parametrize("bad", [dict(block_q=96), dict(block_kv=8), dict(block_q_dq=0),
                                 dict(block_kv_dkv=128.0)])
def test_block_sizes_are_validated_at_construction(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=f"BlockSizes.{field}"):
        BlockSizes(**bad)


def test_block_sizes_are_frozen():
    with pytest.raises(AttributeError):
        BlockSizes().block_q = 256


# ---------------------------------------------------------------------- block skipping

def _visible_pairs(seg: np.ndarray, causal: bool) -> np.ndarray:
    same = seg[:, :, None] == seg[:, None, :]
    if causal:
        same &= np.tril(np.ones(same.shape[1:], bool))[None]
    return same


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("layout", ["packed", "shuffled"])
def test_the_plan_never_skips_a_visible_pair(causal, layout):
    """Exact for any segment layout, including non-contiguous ones."""
    rng = np.random.default_rng(7)
    seg = random_packing(rng, 4, 1024)
    if layout == "shuffled":
        seg = np.stack([rng.permutation(row) for row in seg])
    pairs = _visible_pairs(seg, causal)
    bq, bk = 128, 64
    plan = plan_by_query(jnp.asarray(seg), bq, bk, causal)
    tiles = np.asarray(visible_tiles(plan.q_ranges, plan.kv_ranges, bq, bk, causal))
    first, last = np.asarray(plan.first), np.asarray(plan.last)
    needed = pairs.reshape(4, 1024 // bq, bq, 1024 // bk, bk).any(axis=(2, 4))
    assert (tiles | ~needed).all()
    j = np.arange(tiles.shape[2])
    assert ((j >= first[..., None]) & (j <= last[..., None]) | ~needed).all()
    key_plan = plan_by_key(jnp.asarray(seg), bq, bk, causal)
    i = np.arange(tiles.shape[1])
    inside = (i[None, :, None] >= np.asarray(key_plan.first)[:, None, :]) & \
             (i[None, :, None] <= np.asarray(key_plan.last)[:, None, :])
    assert (inside | ~needed).all()


def test_causal_and_packed_plans_skip_tiles():
    t, block = 2048, 128
    one = jnp.ones((1, t), jnp.int32)
    packed = jnp.asarray(np.repeat(np.arange(1, 5), t // 4)[None].astype(np.int32))
    count = lambda seg, causal: int(visible_tiles(
        segment_ranges(seg, block), segment_ranges(seg, block), block, block, causal).sum())
    tiles = (t // block) ** 2
    assert count(one, False) == tiles
    assert count(one, True) == (t // block) * (t // block + 1) // 2  # the diagonal and below
    assert count(packed, True) == 4 * (4 * 5 // 2)  # four 4x4-tile triangles: 40 of 256
    assert count(packed, False) == 4 * 16


def test_no_t_by_t_buffer_in_forward_or_backward():
    t = 1024
    case = dict(t=t, heads=(4, 2), h=64, causal=True, packed=True, dtype="float32")
    q, k, v, seg, w = inputs(case)

    def loss(q_, k_, v_):
        out = flash_attention(q_, k_, v_, segment_ids=seg, backend="tpu", interpret=True)
        return jnp.sum(out * w)

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    shapes = []

    def walk(jp):
        for eqn in jp.eqns:
            shapes.extend(tuple(var.aval.shape) for var in eqn.outvars if hasattr(var.aval, "shape"))
            for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
                walk(sub)
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jaxpr.jaxpr)
    assert shapes, "no shapes were collected"
    assert not [s for s in shapes if sum(d >= t for d in s) >= 2], "a [T, T] buffer exists"


# ---------------------------------------------------------------------- GPU lowering

@pytest.mark.parametrize("t, h, heads, dtype", [(1024, 128, (8, 2), jnp.bfloat16),
                                                (384, 64, (4, 4), jnp.float32)])
def test_gpu_kernels_lower_to_triton(t, h, heads, dtype):
    """No GPU here: lowering for CUDA runs Pallas' Triton lowering in Python, which checks
    the kernels' shapes and operations; PTX compilation needs the GPU itself."""
    n, k = heads

    def loss(q, kk, v, seg):
        return jnp.sum(flash_attention(q, kk, v, segment_ids=seg, backend="gpu").astype(jnp.float32))

    args = (jax.ShapeDtypeStruct((2, t, n, h), dtype), jax.ShapeDtypeStruct((2, t, k, h), dtype),
            jax.ShapeDtypeStruct((2, t, k, h), dtype), jax.ShapeDtypeStruct((2, t), jnp.int32))
    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(*args).lower(
        lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert text.count("__gpu$xla.gpu.triton") == 3  # forward, dQ, dK/dV
    for name in ("fwd", "dq", "dkv"):
        assert f"lima_flash_attention_{name}_gpu" in text
