"""The model's attention switch: 'pallas' gives the logits, gradients and sharded train
steps of 'xla'; 'cudnn' and 'auto' choose and refuse as documented; the TPU kernels
compile ahead of time inside the jitted, sharded train step for v5e and v5p."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lima_jax import sharding as sharding_lib
from lima_jax.model import ConfigError, Llama, get_preset
from lima_jax.model.attention import resolve
from lima_jax.train.config import RunConfigError, get_base_config, validate_config
from lima_jax.train.step import compile_train_step
from tests.helpers.kernel_cases import random_packing


def _config(attention: str, **changes):
    # head_dim 64: the smallest the kernels take.
    return get_preset("tiny", head_dim=64, attention=attention, **changes)


def _packed_batch(rows: int, length: int, seed: int = 0) -> dict:
    """Packed rows as the pipeline makes them: positions restart in each segment."""
    rng = np.random.default_rng(seed)
    seg = random_packing(rng, rows, length)
    positions = np.zeros_like(seg)
    for r in range(rows):
        for s in np.unique(seg[r][seg[r] > 0]):
            where = np.flatnonzero(seg[r] == s)
            positions[r, where] = np.arange(where.size)
    real = (seg > 0).astype(np.float32)
    return {"tokens": rng.integers(0, 256, (rows, length)).astype(np.int32),
            "targets": rng.integers(0, 256, (rows, length)).astype(np.int32),
            "loss_mask": real * (rng.random((rows, length)) > 0.3),
            "segment_ids": seg, "positions": positions.astype(np.int32)}


def test_pallas_logits_and_gradients_equal_xla():
    batch = _packed_batch(2, 256)
    models = {name: Llama(_config(name), rngs=nnx.Rngs(0)) for name in ("xla", "pallas")}
    real = batch["segment_ids"] > 0

    def loss(model):
        logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return (ce * batch["loss_mask"]).sum(), logits

    results = {}
    for name, model in models.items():
        graphdef, params = nnx.split(model, nnx.Param)
        value_and_grad = jax.value_and_grad(
            lambda p, g=graphdef: loss(nnx.merge(g, p)), has_aux=True)
        (value, logits), grads = jax.jit(value_and_grad)(params)
        results[name] = (value, np.asarray(logits)[real], jax.tree.leaves(grads))
    (v_x, l_x, g_x), (v_p, l_p, g_p) = results["xla"], results["pallas"]
    scale = np.abs(l_x).max()
    assert np.abs(l_p - l_x).max() / scale < 1e-5
    np.testing.assert_allclose(v_p, v_x, rtol=1e-5)
    for a, b in zip(g_p, g_x):
        assert np.abs(a - b).max() <= 1e-5 * max(np.abs(b).max(), 1e-6)


def _run_steps(attention: str, mesh, steps: int = 2):
    config = get_base_config()
    config.optimizer.learning_rate = 1e-2
    config.data.global_batch_size = 8  # the rows of _packed_batch below
    # The trainer's step: traced under the mesh and rules, so the kernel runs under shard_map.
    step = compile_train_step(config, _config(attention), mesh, total_steps=10)
    state = step.init_state(jax.random.PRNGKey(0))
    out = []
    for i in range(steps):
        state, metrics = step(state, _packed_batch(8, 128, seed=i))
        out.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    return np.asarray(out)


def test_sharded_pallas_steps_equal_unsharded_xla_steps():
    """data 2 x fsdp 2 x tensor 2: the kernel runs under shard_map on 2 rows and 2 of
    the 4 query heads (1 of 2 K/V heads) per device."""
    reference = _run_steps("xla", sharding_lib.make_mesh({}, devices=jax.devices()[:1]))
    sharded = _run_steps("pallas", sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    np.testing.assert_allclose(sharded[:, 0], reference[:, 0], rtol=2e-5)
    np.testing.assert_allclose(sharded[:, 1], reference[:, 1], rtol=2e-4)


def test_pallas_needs_a_supported_head_dim():
    with pytest.raises(ConfigError, match="model.attention='pallas' supports head dims 64 and 128"):
        get_preset("tiny", attention="pallas")  # head dim 16


def test_auto_picks_per_platform():
    assert resolve("auto", packed=True, head_dim=128, platform="cpu") == "xla"
    assert resolve("auto", packed=True, head_dim=128, platform="tpu") == "pallas"
    assert resolve("auto", packed=True, head_dim=128, platform="gpu") == "pallas"
    assert resolve("auto", packed=False, head_dim=128, platform="gpu") == "cudnn"
    assert resolve("auto", packed=True, head_dim=16, platform="tpu") == "xla"
    assert resolve("xla", packed=True, head_dim=128, platform="tpu") == "xla"


def test_cudnn_with_packing_is_refused_naming_the_key():
    c = get_base_config()
    c.workdir = "/tmp/unused"
    c.data.path = "generated:demo"
    c.model.attention = "cudnn"
    c.data.pack = True
    with pytest.raises(RunConfigError, match="config.model.attention"):
        validate_config(c)


def test_cudnn_poisons_rows_with_a_second_segment():
    """cuDNN cannot keep packed examples apart: such rows become NaN, never leaked
    attention. (Its kernel needs a GPU; here the check runs around jax's XLA path.)"""
    from lima_jax.model import attention as attention_lib

    q = jnp.ones((2, 8, 2, 64))
    seg = jnp.asarray([[1] * 8, [1] * 4 + [2] * 4], jnp.int32)
    original = jax.nn.dot_product_attention
    try:
        jax.nn.dot_product_attention = lambda *a, implementation=None, **k: original(*a, **k)
        out = attention_lib.cudnn_attention(q, q, q, seg)
    finally:
        jax.nn.dot_product_attention = original
    assert np.isfinite(np.asarray(out[0])).all() and np.isnan(np.asarray(out[1])).all()


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason='libtpu is not installed (pip install -e ".[tpu]")')


@needs_libtpu
@pytest.mark.parametrize("topology", ["v5e-4", "v5p-8"])
def test_tpu_kernels_compile_inside_the_sharded_train_step(topology):
    from lima_jax.train.aot import compile_plan

    c = get_base_config()
    c.compile_only = True
    c.topology = topology
    c.model.preset = "tiny"
    c.model.attention = "pallas"
    c.model.dim, c.model.n_heads, c.model.n_kv_heads = 256, 4, 2  # head dim 64
    c.model.max_seq_len = 1024
    c.mesh.fsdp, c.mesh.tensor, c.mesh.data = 1, 2, -1
    c.data.global_batch_size = 8
    c.data.max_len = 1024
    report = compile_plan(c)
    assert report["fits"] is True
    assert report["mesh"]["tensor"] == 2 and report["mesh"]["data"] >= 2
    assert report["pallas_kernels"] == ["lima_flash_attention_dkv_tpu",
                                        "lima_flash_attention_dq_tpu",
                                        "lima_flash_attention_fwd_tpu"]
