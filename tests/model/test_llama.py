"""Behaviour of the Flax NNX LLaMA: packed rows, residual dropout, the layer scan,
vocabulary padding, dtypes and configuration errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lima_jax.model import ConfigError, Llama, LlamaConfig, get_preset
from lima_jax.model.attention import make_attend
from lima_jax.model.config import RopeScaling
from lima_jax.model.layers import rope_inverse_frequencies
from lima_jax.model.llama import DecoderBlock
from tests.helpers.model_helpers import forward


def tiny(**overrides) -> Llama:
    return Llama(get_preset("tiny", **overrides), rngs=nnx.Rngs(0))


def test_packed_row_gives_each_example_its_own_logits():
    model = tiny(vocab_size=200)
    rng = np.random.RandomState(1)
    first, second = rng.randint(0, 200, 7), rng.randint(0, 200, 9)
    tokens = np.concatenate([first, second, np.zeros(4, int)])[None]
    segments = np.asarray([[1] * 7 + [2] * 9 + [0] * 4])
    positions = np.asarray([list(range(7)) + list(range(9)) + [0] * 4])
    packed = forward(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
    alone_first = forward(model, jnp.asarray(first[None]))
    alone_second = forward(model, jnp.asarray(second[None]))
    np.testing.assert_allclose(packed[0, :7], alone_first[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 7:16], alone_second[0], atol=1e-5)
    assert np.isfinite(packed).all() or (packed[..., 200:] < -1e30).all()
    # Without segment ids the second example would see the first: the check can fail.
    unpacked = forward(model, jnp.asarray(tokens), jnp.asarray(positions))
    assert np.abs(unpacked[0, 7:16] - alone_second[0]).max() > 1e-3


def test_default_positions_and_segments_are_one_example_per_row():
    model = tiny()
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, 256, (2, 12)))
    explicit = forward(model, tokens, jnp.tile(jnp.arange(12), (2, 1)), jnp.ones((2, 12), jnp.int32))
    np.testing.assert_array_equal(forward(model, tokens), explicit)


def test_residual_dropout_rates_rise_linearly_from_zero():
    config = get_preset("tiny", n_layers=5, residual_dropout=0.3)
    np.testing.assert_allclose(config.residual_dropout_rates(), [0.0, 0.075, 0.15, 0.225, 0.3])
    assert get_preset("tiny", n_layers=1, residual_dropout=0.2).residual_dropout_rates() == [0.0]


def test_residual_dropout_only_in_training_and_from_the_given_rng():
    model = tiny(residual_dropout=0.3)
    tokens = jnp.asarray(np.random.RandomState(3).randint(0, 256, (2, 16)))
    eval_logits = forward(model, tokens)
    np.testing.assert_array_equal(
        forward(model, tokens, dropout_rng=jax.random.key(0)), eval_logits)  # deterministic
    train_a = forward(model, tokens, dropout_rng=jax.random.key(0), deterministic=False)
    train_a2 = forward(model, tokens, dropout_rng=jax.random.key(0), deterministic=False)
    train_b = forward(model, tokens, dropout_rng=jax.random.key(1), deterministic=False)
    np.testing.assert_array_equal(train_a, train_a2)
    assert np.abs(train_a - eval_logits).max() > 1e-3
    assert np.abs(train_a - train_b).max() > 1e-3
    with pytest.raises(ValueError, match="dropout_rng"):
        model(tokens, deterministic=False)
    # With a zero maximum rate, training mode is exactly evaluation.
    no_dropout = tiny(residual_dropout=0.0)
    np.testing.assert_array_equal(
        forward(no_dropout, tokens, dropout_rng=jax.random.key(0), deterministic=False),
        forward(no_dropout, tokens))


def test_dropout_hits_the_sublayer_output_before_the_residual_add():
    """With the MLP zeroed, block(x) - x is the attention output, dropped and rescaled."""
    config = get_preset("tiny")
    block = DecoderBlock(config, rngs=nnx.Rngs(0))
    for w in (block.mlp.w_gate, block.mlp.w_up, block.mlp.w_down):
        w[...] = jnp.zeros_like(w[...])
    x = jax.random.normal(jax.random.key(1), (2, 64, config.dim))
    positions = jnp.tile(jnp.arange(64), (2, 1))
    inv_freq = rope_inverse_frequencies(config.head_dim, config.rope_theta, None)
    angles = positions[..., None] * inv_freq
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    attend = make_attend("xla", None, positions, config.head_dim)
    clean = np.asarray(block(x, cos, sin, attend) - x)
    dropped = np.asarray(block(x, cos, sin, attend, jnp.float32(0.25), jax.random.key(2)) - x)
    kept = dropped != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(dropped[kept], clean[kept] / 0.75, rtol=1e-5, atol=1e-6)


def test_layers_are_scanned_not_unrolled():
    """An 80-layer model traces to the same program size as a 2-layer one."""
    def equation_count(n_layers):
        model = Llama(get_preset("tiny", n_layers=n_layers), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        tokens = jnp.zeros((1, 8), jnp.int32)
        jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(tokens))(state)
        return len(str(jaxpr).splitlines())

    assert equation_count(80) == equation_count(2)


def test_parameters_carry_logical_axes_matching_their_shapes():
    model = tiny()
    allowed = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers"}
    variables = jax.tree.leaves(nnx.state(model, nnx.Param),
                                is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(variables) == 12  # embedding, lm_head, final norm, 9 stacked block tensors
    for variable in variables:
        axes = variable.get_metadata()["logical_axes"]
        assert len(axes) == variable[...].ndim and set(axes) <= allowed
    assert model.layers.attention.wq.get_metadata()["logical_axes"] == (
        "layers", "embed", "heads", "head_dim")


def test_vocabulary_is_padded_and_padding_is_masked():
    model = tiny(vocab_size=300)
    assert model.config.padded_vocab_size == 384
    assert model.embedding[...].shape == (384, 64)
    logits = forward(model, jnp.zeros((1, 4), jnp.int32))
    assert logits.shape == (1, 4, 384)
    assert (np.argmax(logits, -1) < 300).all() and (logits[..., 300:] < -1e30).all()


def test_bfloat16_compute_with_float32_parameters():
    model = tiny(dtype="bfloat16")
    assert model.layers.mlp.w_up[...].dtype == jnp.float32
    full = tiny()
    tokens = jnp.asarray(np.random.RandomState(4).randint(0, 256, (2, 16)))
    low, high = forward(model, tokens), forward(full, tokens)
    assert low.dtype == np.float32
    assert np.abs(low - high).max() < 0.1 * np.abs(high).max()
    bf16_params = tiny(param_dtype="bfloat16", dtype="bfloat16")
    assert bf16_params.embedding[...].dtype == jnp.bfloat16


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
    scaling = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    plain = rope_inverse_frequencies(128, 500000.0, None)
    scaled = rope_inverse_frequencies(128, 500000.0, scaling)
    wavelength = 2 * np.pi / plain
    np.testing.assert_array_equal(scaled[wavelength < 8192 / 4], plain[wavelength < 8192 / 4])
    np.testing.assert_allclose(scaled[wavelength > 8192], plain[wavelength > 8192] / 8, rtol=1e-6)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n_kv_heads=3), "n_kv_heads=3 must divide model.n_heads=4"),
        (dict(dim=66), "n_heads=4 must divide model.dim=66"),
        (dict(dtype="float64"), "model.dtype='float64'"),
        (dict(attention="flash"), "model.attention='flash'"),
        (dict(residual_dropout=1.0), "residual_dropout must be in"),
        (dict(vocab_size=0), "model.vocab_size must be a positive integer"),
        (dict(eot_token_id=256), "eot_token_id=256 lies outside"),
    ],
)
def test_invalid_config_names_the_field(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        get_preset("tiny", **changes)


def test_config_json_round_trip():
    config = get_preset("llama3.1-8b", eot_token_id=128256, vocab_size=128257)
    again = LlamaConfig.from_json(config.to_json())
    assert again == config and again.rope_scaling.factor == 8.0
    with pytest.raises(ConfigError, match="unknown model config keys"):
        LlamaConfig.from_dict(dict(config.to_dict(), hidden=3))


def test_unrolled_layers_give_the_scanned_logits():
    tokens = jnp.asarray(np.random.RandomState(5).randint(0, 256, (2, 16)))
    scanned = forward(tiny(n_layers=3), tokens)
    unrolled = forward(tiny(n_layers=3, scan_unroll=0), tokens)
    np.testing.assert_allclose(unrolled, scanned, atol=1e-5)
