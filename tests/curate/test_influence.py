"""Influence-based selection (LESS-style) on a tiny model: a target drawn from one source of a
mixed pool pulls the selection toward that source; per-example features do not mix examples."""

import collections
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lima_jax.curate.influence import (
    GradientFeaturizer,
    encode_batch_arrays,
    influence_scores,
    select_by_influence,
)
from lima_jax.curate.records import Record
from lima_jax.data.tokenizer import Tokenizer, train_tokenizer
from lima_jax.model.llama import abstract_model
from lima_jax.model.presets import get_preset

_WORDS = ["apple", "river", "stone", "cloud", "garden", "window", "silver", "forest", "candle", "bridge"]


def _pool(rng: random.Random, per_source: int, start: int = 0):
    """Three sources that differ in vocabulary and task: sums, word sorting, shouted letters."""
    out = []
    for i in range(start, start + per_source):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append(Record(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", "math", f"m{i}"))
        words = rng.sample(_WORDS, 4)
        out.append(Record("Sort these words: " + " ".join(words), " ".join(sorted(words)), "sort", f"s{i}"))
        letters = "".join(rng.choice("qxzjkvw") for _ in range(6))
        out.append(Record(f"Shout {letters}", letters.upper() + "!!", "shout", f"c{i}"))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = random.Random(0)
    pool = _pool(rng, 40)
    target = [r for r in _pool(rng, 8, start=100) if r.source == "sort"]
    texts = [t for r in pool + target for t in (r.prompt, r.response)]
    tokenizer = Tokenizer.load(train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=360))
    config = get_preset("tiny", vocab_size=tokenizer.vocab_size, eot_token_id=tokenizer.eot_id,
                        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, max_seq_len=32,
                        dim=32, n_layers=1, n_heads=2, n_kv_heads=1, mlp_dim=64, scan_unroll=0)
    return pool, target, tokenizer, config, _random_params(config)


def _random_params(config):
    """Parameters drawn with numpy: N(0, 0.02) matrices, unit norm scales. The model's own eager
    initialisation compiles every op once (~6 s of CPU here), more than the rest of a test."""
    rng = np.random.default_rng(0)
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    return jax.tree.map(lambda x: jnp.asarray(
        np.ones(x.shape) if x.ndim == 1 else rng.normal(0.0, 0.02, x.shape), jnp.float32), abstract)


def test_selection_favours_the_target_source(setup):
    pool, target, tokenizer, config, params = setup
    result = select_by_influence(pool, target, 40, tokenizer=tokenizer, model_config=config,
                                 params=params, max_len=32, warmup_steps=8, batch_size=16)
    counts = collections.Counter(pool[i].source for i in result.selected)
    assert counts["sort"] >= 30, counts  # a random 40 of this pool holds ~13
    by_source = {s: np.mean([result.scores[i] for i, r in enumerate(pool) if r.source == s])
                 for s in ("math", "sort", "shout")}
    assert by_source["sort"] > max(by_source["math"], by_source["shout"]) + 0.1, by_source
    assert len(set(result.selected)) == 40
    assert np.all(np.diff(result.scores[result.selected]) <= 1e-7)  # highest first


def test_features_are_per_example(setup):
    pool, _, tokenizer, config, params = setup
    arrays = encode_batch_arrays(pool[:16], tokenizer, 32)
    assert arrays["loss_mask"].sum(axis=1).min() > 0 and arrays["tokens"].shape == (16, 32)
    featurize = GradientFeaturizer(config)  # the selection's dim: one compilation
    features = featurize(params, arrays, batch_size=16)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    # Reversing the batch reverses the features: no example's gradient leaks into another's.
    reversed_rows = {k: v[::-1].copy() for k, v in arrays.items()}
    np.testing.assert_allclose(featurize(params, reversed_rows, batch_size=16)[::-1], features,
                               rtol=1e-4, atol=1e-5)
    # A partial last batch is padded, and padding changes nothing.
    np.testing.assert_allclose(featurize(params, {k: v[:5] for k, v in arrays.items()}, batch_size=16),
                               features[:5], rtol=1e-4, atol=1e-5)
    # Examples of one source are closer to each other than to the other sources.
    sims = features @ features.T
    same = [sims[i, j] for i in range(16) for j in range(16) if i != j and pool[i].source == pool[j].source]
    other = [sims[i, j] for i in range(16) for j in range(16) if pool[i].source != pool[j].source]
    assert np.mean(same) > np.mean(other)


def test_bad_arguments(setup):
    pool, target, tokenizer, config, params = setup
    with pytest.raises(ValueError, match="between 1 and the pool size"):
        select_by_influence(pool, target, len(pool) + 1, tokenizer=tokenizer, model_config=config, params=params)
    with pytest.raises(ValueError, match="matches no parameter"):
        GradientFeaturizer(config, param_filter="no_such_leaf").projections(params)
    with pytest.raises(ValueError, match="all zero"):
        influence_scores(np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32))
