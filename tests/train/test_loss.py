"""Chunked cross-entropy (`train.loss_chunk_size`, lima_jax/train/loss.py): the same loss,
gradients and held-out sums as the whole logits, and less temporary memory in the step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lima_jax.model import get_preset
from lima_jax.model.llama import vocab_logits
from lima_jax.sharding import make_mesh
from lima_jax.train.config import RunConfigError, get_base_config, validate_config
from lima_jax.train.loss import split_into_chunks
from lima_jax.train.step import StepFunctions, compile_train_step

ROWS, LENGTH = 4, 24  # 96 tokens


def _model_config(tied: bool, vocab_size: int = 250, **changes):
    """float32, vocabulary padded (250 -> 256 columns), residual dropout on."""
    return get_preset("tiny", **{"vocab_size": vocab_size, "tie_embeddings": tied,
                                 "residual_dropout": 0.1, **changes})


def _packed_batch(rows: int, length: int, vocab_size: int, seed: int = 0) -> dict:
    """Rows packed with two or three examples each and padding at the end: positions restart
    per example, the loss mask covers some tokens of each example and none of the padding."""
    rng = np.random.RandomState(seed)
    segment_ids = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    for row in range(rows):
        cuts = sorted(rng.choice(np.arange(3, length - 3), size=2, replace=False))
        ends = [cuts[0], cuts[1], length - row]  # row r ends in r padding tokens
        start = 0
        for segment, end in enumerate(ends, start=1):
            segment_ids[row, start:end] = segment
            positions[row, start:end] = np.arange(end - start)
            start = end
    loss_mask = ((rng.rand(rows, length) > 0.4) & (segment_ids > 0)).astype(np.float32)
    return {
        "tokens": rng.randint(0, vocab_size, (rows, length)).astype(np.int32),
        "targets": rng.randint(0, vocab_size, (rows, length)).astype(np.int32),
        "loss_mask": loss_mask,
        "segment_ids": segment_ids,
        "positions": positions,
    }


def _step_functions(model_config, chunk: int) -> StepFunctions:
    return StepFunctions(model_config, optax.sgd(0.1), optax.constant_schedule(0.1),
                         loss_chunk_size=chunk)


def _params_whose_padding_would_win(fns: StepFunctions):
    """Random parameters whose padded vocabulary columns would have the largest logits,
    were they not masked."""
    params = fns.init_params(jax.random.PRNGKey(1))
    vocab = fns.model_config.vocab_size
    if fns.model_config.tie_embeddings:
        params["embedding"] = params["embedding"].at[vocab:].set(5.0)
    else:
        params["lm_head"] = params["lm_head"].at[:, vocab:].set(5.0)
    return params


def _loss_and_grads(fns: StepFunctions, params, batch):
    tokens = batch["loss_mask"].sum()

    def loss_fn(p):
        return fns._loss_sums(p, batch, jax.random.PRNGKey(2), deterministic=False)["ce_sum"] / tokens

    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
# 4 rows: S = 2 positions per chunk (12 chunks, no padding); S = 5 and 7, which pad the 24
# positions to 25 and 28 with masked tokens; S = 125, one chunk longer than the rows.
@pytest.mark.parametrize("chunk", [8, 20, 28, 500])
def test_loss_and_every_gradient_equal_the_whole_logits(tied, chunk):
    model_config = _model_config(tied)
    batch = _packed_batch(ROWS, LENGTH, model_config.vocab_size)
    whole_fns, chunked_fns = _step_functions(model_config, 0), _step_functions(model_config, chunk)
    params = _params_whose_padding_would_win(whole_fns)
    whole_loss, whole_grads = _loss_and_grads(whole_fns, params, batch)
    chunked_loss, chunked_grads = _loss_and_grads(chunked_fns, params, batch)
    assert np.isfinite(float(whole_loss))
    np.testing.assert_allclose(float(chunked_loss), float(whole_loss), rtol=1e-6)
    flat_whole = jax.tree_util.tree_leaves_with_path(whole_grads)
    flat_chunked = jax.tree.leaves(chunked_grads)
    assert len(flat_whole) == len(flat_chunked) == len(jax.tree.leaves(params))
    for (path, whole), chunked in zip(flat_whole, flat_chunked):
        np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_eval_sums_equal_the_whole_logits(tied):
    model_config = _model_config(tied)
    batch = _packed_batch(ROWS, LENGTH, model_config.vocab_size, seed=3)
    whole_fns, chunked_fns = _step_functions(model_config, 0), _step_functions(model_config, 10)
    params = _params_whose_padding_would_win(whole_fns)
    # Targets the model predicts, so that `correct` is far from 0 and a mistake shows.
    logits = whole_fns.model(params)(batch["tokens"], batch["positions"], batch["segment_ids"])
    predicted = np.asarray(jnp.argmax(logits, axis=-1))
    assert predicted.max() < model_config.vocab_size  # the padded columns never win
    batch["targets"] = np.where(np.arange(LENGTH) % 2 == 0, predicted, batch["targets"]).astype(np.int32)
    whole = jax.jit(whole_fns.eval_step)(params, batch)
    chunked = jax.jit(chunked_fns.eval_step)(params, batch)
    np.testing.assert_allclose(float(chunked["ce_sum"]), float(whole["ce_sum"]), rtol=1e-6)
    assert float(chunked["tokens"]) == float(whole["tokens"]) == batch["loss_mask"].sum()
    assert float(chunked["correct"]) == float(whole["correct"]) > 0


def test_hidden_states_and_output_weight_give_the_logits_exactly():
    for tied in (False, True):
        model_config = _model_config(tied)
        fns = _step_functions(model_config, 0)
        model = fns.model(_params_whose_padding_would_win(fns))
        batch = _packed_batch(ROWS, LENGTH, model_config.vocab_size)
        args = batch["tokens"], batch["positions"], batch["segment_ids"]
        piecewise = vocab_logits(model.hidden_states(*args), model.output_weight(), model_config)
        np.testing.assert_array_equal(piecewise, model(*args))


def test_chunks_keep_the_rows_and_pad_the_sequence_with_zeros():
    x = jnp.arange(2 * 5).reshape(2, 5) + 1
    chunks = split_into_chunks(x, 2)
    assert chunks.shape == (3, 2, 2)
    np.testing.assert_array_equal(chunks[0], [[1, 2], [6, 7]])
    np.testing.assert_array_equal(chunks[2], [[5, 0], [10, 0]])


def _sharded_losses(chunk: int, steps: int = 2):
    config = get_base_config()
    config.optimizer.learning_rate = 1e-2
    config.data.global_batch_size = 16
    config.train.grad_accum_steps = 2
    config.train.loss_chunk_size = chunk
    model_config = _model_config(False)
    step = compile_train_step(config, model_config, make_mesh({"data": 2, "fsdp": 2, "tensor": 2}),
                              total_steps=10)
    state = step.init_state(jax.random.PRNGKey(0))
    batch = _packed_batch(16, LENGTH, model_config.vocab_size, seed=4)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, step.evaluate(state["params"], batch)


def test_the_sharded_accumulated_step_gives_the_same_losses_chunked():
    whole_losses, whole_eval = _sharded_losses(0)
    chunked_losses, chunked_eval = _sharded_losses(20)
    np.testing.assert_allclose(chunked_losses, whole_losses, rtol=1e-5)
    np.testing.assert_allclose(float(chunked_eval["ce_sum"]), float(whole_eval["ce_sum"]), rtol=1e-5)
    assert float(chunked_eval["correct"]) == float(whole_eval["correct"])


def _train_step_temp_bytes(model_config, chunk: int, rows: int, length: int) -> int:
    fns = _step_functions(model_config, chunk)
    state = jax.eval_shape(fns.init_state, jax.random.PRNGKey(0))
    batch = jax.eval_shape(lambda: _packed_batch(rows, length, model_config.vocab_size))
    compiled = jax.jit(fns.train_step, donate_argnums=0).lower(state, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_the_chunked_step_needs_less_temporary_memory():
    # A vocabulary-heavy model: the float32 logits of 8 x 128 tokens x 8,192 columns are 32 MiB,
    # against 2 MiB of weights (two 8,192 x 32 tables and one small layer).
    model_config = get_preset("tiny", vocab_size=8192, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                              mlp_dim=64, residual_dropout=0.0)
    whole = _train_step_temp_bytes(model_config, 0, 8, 128)
    chunked = _train_step_temp_bytes(model_config, 16, 8, 128)  # [16, 8192] logits: 0.5 MiB
    logits_bytes = 8 * 128 * 8192 * 4
    print(f"temp: whole logits {whole / 2**20:.1f} MiB, chunks of 16 tokens {chunked / 2**20:.1f} MiB")
    assert whole > 2 * logits_bytes  # the logits, their softmax and gradient are in the step ...
    # ... and not in the chunked one, which keeps gradients, updates and activations (~8 MiB).
    assert chunked < logits_bytes / 3


def test_a_negative_chunk_size_is_refused_naming_the_key():
    c = get_base_config()
    c.compile_only = True
    c.data.path = ""
    c.train.loss_chunk_size = -1
    with pytest.raises(RunConfigError, match="config.train.loss_chunk_size"):
        validate_config(c)
