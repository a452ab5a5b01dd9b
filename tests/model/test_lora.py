"""LoRA adapters and the qwix-quantized frozen base (`lima_jax.model.lora`): a fresh adapter changes
nothing, merging gives the adapted model's logits for every base dtype, the quantized base stays
close to the weights it came from, new token rows replace the tables' rows, and bad values name
their key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lima_jax.model import lora
from lima_jax.model.config import ConfigError, LlamaConfig, LoraSpec
from lima_jax.model.llama import Llama

BASE = LlamaConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=128,
                   eot_token_id=299, tie_embeddings=False)
TOKENS = jnp.array([[1, 5, 299, 7, 299, 11], [3, 299, 4, 4, 9, 2]])


def _model(config: LlamaConfig, params: dict) -> Llama:
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def plain():
    return nnx.to_pure_dict(nnx.state(Llama(BASE, rngs=nnx.Rngs(0)), nnx.Param))


def _lora(plain, tied=False, **spec):
    base = BASE.replace(tie_embeddings=tied)
    if tied:
        plain = {k: v for k, v in plain.items() if k != "lm_head"}
    config = base.replace(lora=LoraSpec(rank=4, **spec))
    return base, config, jax.jit(lambda p, r: lora.attach(p, config, r))(plain, jax.random.PRNGKey(1)), plain


def _moved(params: dict, seed: int = 0) -> dict:
    """`params` with every trainable leaf moved (as training would move it)."""
    trainable, frozen = lora.split_trainable(params)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(trainable))))
    trainable = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), trainable)
    return lora.join(trainable, frozen)


def test_a_fresh_adapter_leaves_the_model_as_it_was(plain):
    base, config, params, plain = _lora(plain, token_ids=(299,))
    # The new token's logits come from their own matmul (`Llama.token_columns`): equal to rounding.
    np.testing.assert_allclose(_model(config, params)(TOKENS), _model(base, plain)(TOKENS), atol=1e-6, rtol=0)


@pytest.mark.parametrize("base_dtype, tied", [("", False), ("int8", False), ("nf4", True), ("bfloat16", True)])
def test_merged_weights_give_the_adapted_models_logits(plain, base_dtype, tied):
    _, config, params, _ = _lora(plain, tied=tied, base_dtype=base_dtype, token_ids=(299,))
    params = _moved(params)
    adapted = _model(config, params)(TOKENS)
    merged_params, merged_config = lora.merge(params, config)
    assert merged_config.lora is None
    merged = _model(merged_config, merged_params)(TOKENS)
    np.testing.assert_allclose(merged, adapted, atol=2e-5, rtol=1e-5)


def test_only_adapters_and_new_token_rows_train(plain):
    _, config, params, _ = _lora(plain, targets=("q", "down"), token_ids=(299,))
    trainable, frozen = lora.split_trainable(params)
    names = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(trainable)}
    assert names == {"['token_rows']", "['token_head']", "['layers']['attention']['wq_lora_a']",
                     "['layers']['attention']['wq_lora_b']", "['layers']['mlp']['w_down_lora_a']",
                     "['layers']['mlp']['w_down_lora_b']"}
    assert lora.join(trainable, frozen).keys() == params.keys()
    # The trainable rows start as the checkpoint's rows of that token.
    np.testing.assert_array_equal(trainable["token_rows"][0], frozen["embedding"][299])
    np.testing.assert_array_equal(trainable["token_head"][:, 0], frozen["lm_head"][:, 299])
    assert lora.trainable_parameter_count(config) == sum(x.size for x in jax.tree.leaves(trainable))


@pytest.mark.parametrize("qtype, bits, tolerance", [("int8", 8, 0.01), ("int4", 4, 0.2), ("nf4", 4, 0.2)])
def test_the_quantized_base_is_stored_small_and_stays_close(plain, qtype, bits, tolerance):
    _, config, params, plain = _lora(plain, base_dtype=qtype)
    for target, (module, name, _) in lora.TARGET_WEIGHTS.items():
        stored = params["layers"][module][name]
        assert jnp.issubdtype(stored.dtype, jnp.integer) and jnp.iinfo(stored.dtype).bits == bits, target
        w = lora.dequantized(stored, params["layers"][module][name + lora.SCALE], qtype)
        original = plain["layers"][module][name]
        relative = float(jnp.linalg.norm(w - original) / jnp.linalg.norm(original))
        assert relative < tolerance, (target, relative)
    # Everything else of the frozen base is bfloat16; the adapters keep param_dtype.
    assert params["embedding"].dtype == jnp.bfloat16 and params["final_norm"]["scale"].dtype == jnp.bfloat16
    assert params["layers"]["attention"]["wq_lora_a"].dtype == jnp.float32


def test_4bit_values_in_byte_containers_compute_the_same(plain):
    _, packed_config, packed, _ = _lora(plain, base_dtype="nf4")
    _, bytes_config, unpacked, _ = _lora(plain, base_dtype="nf4", packed_4bit=False)
    assert packed["layers"]["mlp"]["w_up"].dtype == jnp.uint4
    assert unpacked["layers"]["mlp"]["w_up"].dtype == jnp.uint8
    np.testing.assert_array_equal(_model(bytes_config, unpacked)(TOKENS), _model(packed_config, packed)(TOKENS))


def test_adapter_dropout_draws_only_when_training(plain):
    _, config, params, _ = _lora(plain, dropout=0.5)
    model = _model(config, _moved(params))
    deterministic = model(TOKENS)
    np.testing.assert_array_equal(model(TOKENS, dropout_rng=jax.random.PRNGKey(0)), deterministic)
    dropped = model(TOKENS, dropout_rng=jax.random.PRNGKey(0), deterministic=False)
    assert not np.allclose(dropped, deterministic)


@pytest.mark.parametrize("spec, message", [
    (dict(rank=65), r"lora.rank=65 exceeds the dimensions of target 'q' \(its smaller side is 64\)"),
    (dict(rank=4, targets=("q", "attn")), r"lora.targets: \['attn'\] is not among q, k, v, o, gate, up, down"),
    (dict(rank=4, base_dtype="fp8"), r"lora.base_dtype='fp8' is not one of"),
    (dict(rank=0), r"lora.rank must be a positive integer"),
    (dict(rank=4, token_ids=(300,)), r"lora.token_ids \[300\] lie outside the vocabulary"),
])
def test_bad_lora_values_name_the_key(spec, message):
    with pytest.raises(ConfigError, match=message):
        BASE.replace(lora=LoraSpec(**spec))


def test_the_spec_round_trips_through_json():
    config = BASE.replace(lora=LoraSpec(rank=8, alpha=32.0, targets=("q", "v"), base_dtype="nf4", token_ids=(299,)))
    assert LlamaConfig.from_json(config.to_json()) == config


def test_the_kv_cache_decoder_runs_an_adapted_quantized_model_as_its_merge(plain):
    """In-training exact match decodes the LoRA model itself (its base dequantized layer by layer);
    greedy tokens equal those of the merged weights."""
    from lima_jax.decode.generate import Generator
    from lima_jax.decode.sampling import SamplingConfig

    _, config, params, _ = _lora(plain, base_dtype="nf4", token_ids=(299,))
    params = _moved(params, seed=1)
    merged_params, merged_config = lora.merge(params, config)
    greedy = SamplingConfig(temperature=0.0)
    prompts = [[1, 5, 299, 7], [3, 4]]
    adapted = Generator(_model(config, params)).generate(prompts, sampling=greedy, max_new_tokens=6)
    merged = Generator(_model(merged_config, merged_params)).generate(prompts, sampling=greedy, max_new_tokens=6)
    assert [g.tokens for g in adapted] == [g.tokens for g in merged]
