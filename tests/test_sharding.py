"""Sharded creation and forward on a (data 2, fsdp 2, tensor 2) mesh of 8 fake CPU
devices, mesh resolution, and the logical-to-mesh rules."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lima_jax.checkpoint import load_model, save_model
from lima_jax.model import Llama, abstract_model, get_preset
from lima_jax.sharding import (
    ShardingError,
    batch_sharding,
    create_sharded,
    logical_to_spec,
    make_mesh,
    mesh_shape,
    state_shardings,
)

CONFIG = get_preset("tiny", vocab_size=250)  # padded to 256: divisible by every axis


def _variables(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip(f"needs 8 devices, found {jax.device_count()} (conftest sets 8 fake CPU devices)")
    return make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def test_parameters_are_created_sharded_and_never_whole_on_one_device(mesh):
    model = create_sharded(lambda: Llama(CONFIG, rngs=nnx.Rngs(0)), mesh)
    assert model.embedding[...].sharding.spec == P("tensor", "fsdp")
    assert model.lm_head[...].sharding.spec == P("fsdp", "tensor")
    assert model.layers.attention.wq[...].sharding.spec == P(None, "fsdp", "tensor", None)
    assert model.layers.mlp.w_down[...].sharding.spec == P(None, "tensor", "fsdp")
    for variable in _variables(model):
        array = variable[...]
        shard = array.addressable_shards[0].data
        assert shard.size < array.size, f"{variable.get_metadata()['logical_axes']} is whole"
        assert len(array.sharding.device_set) == 8


def test_sharded_init_and_logits_equal_unsharded(mesh):
    sharded = create_sharded(lambda: Llama(CONFIG, rngs=nnx.Rngs(0)), mesh)
    plain = Llama(CONFIG, rngs=nnx.Rngs(0))
    # Same random bits whatever the layout (partitionable threefry); jit and eager
    # turn them into normals with last-ulp differences.
    for a, b in zip(_variables(sharded), _variables(plain)):
        np.testing.assert_allclose(np.asarray(a[...]), np.asarray(b[...]), rtol=1e-6, atol=1e-8)

    rng = np.random.RandomState(0)
    tokens = rng.randint(0, 250, (4, 24)).astype(np.int32)
    segments = np.repeat([[1] * 10 + [2] * 10 + [0] * 4], 4, axis=0).astype(np.int32)
    positions = np.repeat([list(range(10)) * 2 + [0] * 4], 4, axis=0).astype(np.int32)

    graphdef, state = nnx.split(sharded)
    shardings = state_shardings(state, mesh)
    rows = batch_sharding(mesh)
    assert rows.spec == P(("data", "fsdp"), None)

    @jax.jit
    def apply(state, tokens, positions, segments):
        return nnx.merge(graphdef, state)(tokens, positions, segments)

    apply = jax.jit(apply, in_shardings=(shardings, rows, rows, rows))
    sharded_logits = apply(state, *(jax.device_put(x, rows) for x in (tokens, positions, segments)))
    assert len(sharded_logits.sharding.device_set) == 8
    # The same parameter values, gathered onto one device.
    plain_state = jax.device_put(jax.device_get(state), jax.devices()[0])
    plain_logits = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(plain_state, tokens, positions, segments)
    diff = np.abs(np.asarray(sharded_logits)[..., :250] - np.asarray(plain_logits)[..., :250]).max()
    print(f"sharded vs unsharded: max abs logit difference {diff:.2e}")
    assert diff <= 1e-5


def test_checkpoint_restores_straight_into_the_sharded_layout(mesh, tmp_path):
    plain = Llama(CONFIG, rngs=nnx.Rngs(3))
    save_model(plain, tmp_path / "ckpt")
    _, abstract_state = nnx.split(abstract_model(CONFIG))
    restored = load_model(tmp_path / "ckpt", shardings=state_shardings(abstract_state, mesh))
    assert restored.config == CONFIG
    assert restored.layers.attention.wk[...].sharding.spec == P(None, "fsdp", "tensor", None)
    for a, b in zip(_variables(restored), _variables(plain)):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]))


def test_mesh_shape_resolves_the_rest_and_refuses_bad_sizes():
    assert mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh_shape({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
    with pytest.raises(ShardingError, match="only one axis may be -1"):
        mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ShardingError, match="needs 6 devices"):
        mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(ShardingError, match="unknown axes \\['pipeline'\\]"):
        mesh_shape({"pipeline": 2}, 8)


def test_rules_replicate_indivisible_dims_and_refuse_conflicts(mesh):
    # 3 KV heads cannot split over tensor=2: replicated rather than failing.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 3, 16), mesh) == P("fsdp", None, None)
    conflicting = (("embed", "fsdp"), ("mlp", "fsdp"))
    with pytest.raises(ShardingError, match="both 'embed' and 'mlp'"):
        logical_to_spec(("embed", "mlp"), (64, 128), mesh, conflicting)
    with pytest.raises(ShardingError, match="no rule for logical axis 'experts'"):
        logical_to_spec(("experts",), (4,), mesh)
    with pytest.raises(ShardingError, match="not a mesh axis"):
        logical_to_spec(("embed",), (64,), mesh, (("embed", "model"),))


def test_sharded_hf_import_places_slices(mesh, tmp_path):
    from lima_jax.model import from_hf, load_hf_config
    from tests.helpers.hf_reference import make_hf_llama

    make_hf_llama(tmp_path, vocab_size=250, num_attention_heads=4, num_key_value_heads=2)
    config = load_hf_config(tmp_path)
    _, abstract_state = nnx.split(abstract_model(config))
    model = from_hf(tmp_path, shardings=state_shardings(abstract_state, mesh))
    plain = from_hf(tmp_path)
    assert model.layers.mlp.w_up[...].sharding.spec == P(None, "fsdp", "tensor")
    for a, b in zip(_variables(model), _variables(plain)):
        np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]))


def test_one_host_needs_no_barrier_and_agrees_with_itself():
    from lima_jax.sharding import on_every_host, sync_hosts

    sync_hosts("nothing to wait for")
    assert on_every_host(True) is True and on_every_host(False) is False
