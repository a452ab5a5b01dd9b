"""Sampling rules on known logits: the CTRL repetition penalty, top-k, top-p (each also against
transformers' own logits processors), temperature frequencies, the vocabulary-padding mask,
and per-row keys that do not depend on the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lima_jax.decode.sampling import (
    SamplingConfig,
    SamplingError,
    next_tokens,
    penalize_repetition,
    processed_logits,
    row_keys,
    top_k_filter,
    top_p_filter,
)

NEG = -np.inf


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([[2.0, -2.0, 1.0, -1.0]], np.float32)
    seen = np.array([[True, True, False, False]])
    np.testing.assert_allclose(penalize_repetition(logits, seen, 2.0), [[1.0, -4.0, 1.0, -1.0]])


def test_top_k_keeps_the_k_largest():
    logits = np.array([[1.0, 5.0, 3.0, 4.0], [0.0, -1.0, 2.0, 1.0]], np.float32)
    np.testing.assert_array_equal(top_k_filter(logits, 2), [[NEG, 5, NEG, 4], [NEG, NEG, 2, 1]])
    np.testing.assert_array_equal(top_k_filter(logits, 0), logits)


@pytest.mark.parametrize("p, kept", [(0.7, 2), (0.8, 2), (0.81, 3), (0.4, 1), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    out = np.asarray(top_p_filter(np.log(probs)[None].astype(np.float32), p))[0]
    order = np.argsort(-probs)
    assert np.isfinite(out[order[:kept]]).all() and np.isneginf(out[order[kept:]]).all()


def test_penalty_top_k_top_p_match_transformers_processors():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 64)).astype(np.float32)
    history = rng.integers(0, 64, (4, 10))
    seen = np.zeros((4, 64), bool)
    np.put_along_axis(seen, history, True, axis=1)
    ids, scores = torch.tensor(history), torch.tensor(logits)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    np.testing.assert_allclose(penalize_repetition(logits, seen, 1.3), expected.numpy(), rtol=1e-6)
    expected = TopKLogitsWarper(7)(ids, scores.clone()).numpy()
    np.testing.assert_array_equal(np.isfinite(top_k_filter(logits, 7)), np.isfinite(expected))
    expected = TopPLogitsWarper(0.9)(ids, scores.clone()).numpy()
    np.testing.assert_array_equal(np.isfinite(top_p_filter(logits, 0.9)), np.isfinite(expected))


def test_padded_vocabulary_is_never_chosen():
    logits = np.zeros((64, 8), np.float32)
    logits[:, 6:] = 50.0  # columns 6 and 7 are vocabulary padding (vocab_size=6)
    seen = np.zeros_like(logits, bool)
    keys = row_keys(0, [str(i) for i in range(64)], [0] * 64)
    for config in (SamplingConfig.greedy_config(), SamplingConfig(top_p=1.0, temperature=1.0)):
        assert (np.asarray(next_tokens(logits, seen, keys, 0, config, 6)) < 6).all()


def test_temperature_sampling_frequencies_follow_the_softmax():
    logits = np.log(np.array([[0.6, 0.3, 0.1, 1e-9]], np.float32))
    n = 4000
    keys = row_keys(1, ["x"] * n, range(n))
    config = SamplingConfig(temperature=0.5, top_p=1.0, repetition_penalty=1.0)
    tokens = np.asarray(next_tokens(np.repeat(logits, n, 0), np.zeros((n, 4), bool), keys, 0, config, 4))
    expected = np.array([0.36, 0.09, 0.01]) / 0.46  # p^2 renormalised
    np.testing.assert_allclose(np.bincount(tokens, minlength=4)[:3] / n, expected, atol=0.03)
    # LIMA's defaults drop the tail: p=0.9 keeps only the tokens whose mass above is < 0.9.
    lima = SamplingConfig()
    assert (lima.temperature, lima.top_p, lima.repetition_penalty) == (0.7, 0.9, 1.2)
    out = np.asarray(processed_logits(logits, np.zeros((1, 4), bool), lima, 4))
    assert np.isfinite(out[0, :2]).all() and np.isneginf(out[0, 2:]).all()


def test_row_keys_depend_on_seed_id_and_sample_not_on_the_batch():
    batch = row_keys(3, ["a", "b", "c"], [0, 1, 0])
    np.testing.assert_array_equal(batch[1], row_keys(3, ["b"], [1])[0])
    assert not np.array_equal(batch[0], batch[2])
    assert not np.array_equal(batch[1], row_keys(3, ["b"], [0])[0])
    assert not np.array_equal(batch[1], row_keys(4, ["b"], [1])[0])


@pytest.mark.parametrize("field, value", [("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5),
                                          ("top_k", -2), ("repetition_penalty", 0.0)])
def test_bad_settings_name_the_option(field, value):
    with pytest.raises(SamplingError, match=field.replace("_", "-")):
        SamplingConfig(**{field: value})
