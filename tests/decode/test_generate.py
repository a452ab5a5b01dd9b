"""KV-cache decoding: cached logits equal the full forward's at every step, greedy tokens equal
transformers' generate on stories260K, a batch of mixed prompt lengths equals one-by-one
(greedy and sampled), a row stops at EOT while the others go on, and sharded decoding on
8 fake devices equals the unsharded result."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from lima_jax.decode import Generator, SamplingConfig, encode_for_template
from lima_jax.model import Llama, get_preset
from lima_jax.model.kv_cache import decode_step, prefill
from lima_jax.sharding import make_mesh
from tests.helpers.model_helpers import forward

GREEDY = SamplingConfig.greedy_config()
SAMPLED = SamplingConfig(temperature=0.9, top_p=0.95, top_k=50, repetition_penalty=1.2)
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # halves XLA:CPU compile time


def tiny_model(**changes) -> Llama:
    """2 layers, GQA 8/4, weights wide enough (std 0.3) that logits are O(1) and
    greedy choices are not near-ties."""
    config = get_preset("tiny").replace(vocab_size=200, n_heads=8, n_kv_heads=4, head_dim=16,
                                        mlp_dim=128, initializer_range=0.3, **changes)
    return Llama(config, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def generator(model):
    return Generator(model, compiler_options=FAST_COMPILE)


# ---------------------------------------------------------------- the cache


@nnx.jit(static_argnums=2)
def _prefill(model, tokens, cache_length):
    return prefill(model, tokens, cache_length)


@nnx.jit
def _step(model, tokens, positions, cache):
    return decode_step(model, tokens, positions, cache)


def test_cached_logits_equal_full_forward_at_every_step(model):
    """Prefill 5 tokens, then feed the rest one at a time (rows at different positions):
    every step's logits equal the full forward's at that position."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 200, (2, 16)).astype(np.int32)
    full = forward(model, tokens)[..., :200]
    assert np.abs(full).max() > 1.0  # O(1) logits: the tolerance below is a real check
    logits, cache = _prefill(model, jnp.asarray(tokens[:, :5]), 24)
    diffs = [np.abs(np.asarray(logits)[..., :200] - full[:, :5]).max()]
    # Row 1 lags one step behind row 0, so a step sees rows at different positions.
    offsets = np.array([0, -1])
    for t in range(5, 17):
        pos = np.clip(t + offsets, 0, 15)
        step_logits, cache = _step(model, jnp.asarray(tokens[[0, 1], pos]), jnp.asarray(pos), cache)
        step_logits = np.asarray(step_logits)[:, :200]
        for row in (0, 1):
            if t + offsets[row] >= 5 and t + offsets[row] <= 15:
                diffs.append(np.abs(step_logits[row] - full[row, pos[row]]).max())
    assert len(diffs) == 1 + 11 + 11  # the prefill, then positions 5..15 of each row
    assert max(diffs) < 5e-5, f"max |cached - full| = {max(diffs)}"  # logits up to ~10


# ---------------------------------------------------------------- batches


PROMPTS = [[1, 5, 9, 3], list(range(1, 21)), [1, 7, 7, 8, 100, 150, 3, 44, 19]]


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_mixed_lengths_batch_equals_one_by_one(generator, sampling):
    ids = ["a", "b", "c"]
    batch = generator.generate(PROMPTS, sampling=sampling, max_new_tokens=12, prompt_ids=ids,
                               samples=[0, 1, 0], seed=5)
    alone = [generator.generate([p], sampling=sampling, max_new_tokens=12, prompt_ids=[i],
                                samples=[s], seed=5)[0]
             for p, i, s in zip(PROMPTS, ids, [0, 1, 0])]
    assert [g.tokens for g in batch] == [g.tokens for g in alone]
    assert all(len(g.tokens) == 12 and g.stop_reason == "length" for g in batch)
    if sampling is SAMPLED:  # a different sample index gives a different text
        other = generator.generate([PROMPTS[1]], sampling=sampling, max_new_tokens=12,
                                   prompt_ids=["b"], samples=[0], seed=5)[0]
        assert other.tokens != batch[1].tokens


def test_greedy_matches_naive_full_forward_decoder(model, generator):
    from tests.helpers.model_helpers import greedy_tokens

    out = generator.generate([PROMPTS[2]], sampling=GREEDY, max_new_tokens=10)[0]
    assert out.tokens == greedy_tokens(model, PROMPTS[2], 10)


def test_row_stops_at_eot_while_others_go_on(generator):
    free = generator.generate(PROMPTS[:2], sampling=GREEDY, max_new_tokens=12)
    # A token row 0 produces at step >= 1 that row 1 never produces acts as "EOT".
    candidates = [(i, t) for i, t in enumerate(free[0].tokens)
                  if i >= 1 and t not in free[1].tokens and t not in free[0].tokens[:i]]
    assert candidates, "no usable stop token in this greedy output"
    index, eot = candidates[0]
    stopped = generator.generate(PROMPTS[:2], sampling=GREEDY, max_new_tokens=12,
                                 stop_ids=[eot, 199], stop_names={eot: "eot", 199: "eos"})
    assert stopped[0].stop_reason == "eot" and stopped[0].stop_id == eot
    assert stopped[0].tokens == free[0].tokens[:index]
    assert stopped[1].tokens == free[1].tokens and stopped[1].stop_reason == "length"


def test_context_limit_stops_a_row():
    generator = Generator(tiny_model(max_seq_len=24), compiler_options=FAST_COMPILE)
    out = generator.generate([PROMPTS[1]], sampling=GREEDY, max_new_tokens=50)[0]
    assert out.stop_reason == "context" and len(PROMPTS[1]) + len(out.tokens) == 24
    with pytest.raises(ValueError, match="max_seq_len=24"):
        generator.generate([list(range(1, 30))], sampling=GREEDY, max_new_tokens=4)


# ---------------------------------------------------------------- sharding


def test_sharded_decoding_equals_unsharded(model, generator):
    mesh = make_mesh({"data": 2, "tensor": 4}, jax.devices()[:8])
    sharded = Generator(model, mesh=mesh, compiler_options=FAST_COMPILE)
    wq = sharded.state["layers"]["attention"]["wq"].get_value()
    assert "tensor" in str(wq.sharding.spec)
    assert sharded._cache_sharding((2, 4, 32, 4, 16)).spec == PartitionSpec(
        None, "data", None, "tensor", None)
    prompts = PROMPTS + [[1, 2]]
    for sampling in (GREEDY, SAMPLED):
        ours = sharded.generate(prompts, sampling=sampling, max_new_tokens=10, seed=1)
        ref = generator.generate(prompts, sampling=sampling, max_new_tokens=10, seed=1)
        assert [g.tokens for g in ours] == [g.tokens for g in ref]


# ---------------------------------------------------------------- parity with transformers


def test_greedy_64_tokens_equal_transformers_generate(shared_data):
    ckpt = shared_data / "checkpoints" / "stories260K-hf"
    if not ckpt.is_dir():
        pytest.skip(f"{ckpt} is absent")
    import torch
    from transformers import LlamaForCausalLM

    from lima_jax.decode.load import load_for_decoding

    model, tokenizer = load_for_decoding(hf=str(ckpt))
    texts = ["Once upon a time, there was a little", "The cat sat on the", "Lily wanted to",
             "One day, Tom and his dog went to the park. They"]
    prompts = [encode_for_template(t, tokenizer, "raw") for t in texts]
    ours = Generator(model).generate(prompts, sampling=GREEDY, max_new_tokens=64,
                                     stop_ids=[tokenizer.eos_id])
    hf = LlamaForCausalLM.from_pretrained(ckpt).eval()
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False,
                              num_beams=1, eos_token_id=tokenizer.eos_id)
        expected = out[0, len(prompt):].tolist()
        assert got.tokens + ([got.stop_id] if got.stop_id is not None else []) == expected
    assert sum(len(g.tokens) for g in ours) > 100  # most rows ran long, not stopped at once
