"""Chunked cross-entropy: the masked loss and the held-out sums of a batch computed a few
tokens at a time, so no [B, T, V] logits buffer exists in the step (README "Training",
`train.loss_chunk_size`).

The loss is the one of LIMA's fine-tuning (Zhou et al. 2023, section 3: cross-entropy on
the response tokens only, i.e. the loss mask). With a vocabulary of 128,256 (Llama 3) the
float32 logits of a micro-batch, with their softmax and gradient, outgrow the rest of the
step's activations; here the hidden states [B, T, D] (after the final norm) are cut along
the sequence into chunks of about `chunk_tokens` tokens, and a `lax.scan` computes each
chunk's logits [B, S, V] against the output weight, its log-sum-exp, target logits and
(for evaluation) argmax, adding them up. The chunk is wrapped in `jax.checkpoint`, so the
backward pass recomputes each chunk's logits too instead of keeping them.

A chunk holds S positions of every row (not C consecutive tokens of the flattened batch):
the rows are what the mesh shards, so each device computes its own rows' share of every
chunk and no hidden state moves between devices. The logits are the model's own recipe
(`lima_jax.model.llama.vocab_logits`: compute dtype, then `logits_dtype`, padded
vocabulary columns at the dtype's minimum), so chunked and whole losses differ only in
the order of the sums.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from lima_jax.model.config import LlamaConfig
from lima_jax.model.llama import vocab_logits


def positions_per_chunk(rows: int, chunk_tokens: int) -> int:
    """S, the positions of every row in one chunk: about `chunk_tokens` tokens, at least one."""
    return max(1, -(-chunk_tokens // rows))


def split_into_chunks(x_bt: jax.Array, positions: int) -> jax.Array:
    """[B, T, ...] -> [T_padded / S, B, S, ...]: the sequence cut into chunks of S positions,
    T padded with zeros to a multiple of S (a zero loss mask makes padded tokens count for
    nothing). The rows stay one axis, so the batch's sharding carries over."""
    b, t = x_bt.shape[:2]
    chunks = -(-t // positions)
    padding = [(0, 0), (0, chunks * positions - t)] + [(0, 0)] * (x_bt.ndim - 2)
    x_bt = jnp.pad(x_bt, padding)
    return jnp.moveaxis(x_bt.reshape(b, chunks, positions, *x_bt.shape[2:]), 1, 0)


def chunk_sums(h_bsd: jax.Array, weight_dv: jax.Array, targets_bs: jax.Array,
               mask_bs: jax.Array, token_columns=None, *, config: LlamaConfig, count_correct: bool) -> dict:
    """One chunk's masked cross-entropy sum (and correctly predicted tokens), from its
    final-norm hidden states and the output weight (and LoRA's trained token columns)."""
    logits_bsv = vocab_logits(h_bsd, weight_dv, config, token_columns)
    ce_bs = optax.softmax_cross_entropy_with_integer_labels(logits_bsv, targets_bs)
    sums = {"ce_sum": (ce_bs * mask_bs).sum()}
    if count_correct:
        hits_bs = (jnp.argmax(logits_bsv, axis=-1) == targets_bs).astype(jnp.float32)
        sums["correct"] = (hits_bs * mask_bs).sum()
    return sums


def chunked_ce_sums(h_btd: jax.Array, weight_dv: jax.Array, targets_bt: jax.Array,
                    mask_bt: jax.Array, *, config: LlamaConfig, chunk_tokens: int,
                    count_correct: bool = False, token_columns=None) -> dict:
    """{'ce_sum'} (and 'correct' with `count_correct`) over a batch, chunk by chunk.

    h_btd: the model's final-norm hidden states (`Llama.hidden_states`); weight_dv: its
    output weight in the parameters' dtype (`Llama.output_weight`), cast to the compute
    dtype inside each chunk so that its gradient adds up over the chunks in that (float32)
    dtype rather than in bfloat16. mask_bt: float32 loss mask. Differentiable in h_btd and
    weight_dv (and in token_columns, `Llama.token_columns`); the backward pass recomputes each
    chunk's logits.
    """
    positions = positions_per_chunk(h_btd.shape[0], chunk_tokens)
    mask_bt = mask_bt.astype(jnp.float32)
    chunks = tuple(split_into_chunks(x, positions) for x in (h_btd, targets_bt, mask_bt))
    # Save only the chunk's inputs; the [B, S, V] logits are recomputed in the backward pass.
    sums_of = jax.checkpoint(
        functools.partial(chunk_sums, config=config, count_correct=count_correct),
        prevent_cse=False)  # inside a scan there is nothing for CSE to merge across chunks

    def add_chunk(totals, chunk):
        h_bsd, targets_bs, mask_bs = chunk
        sums = sums_of(h_bsd, weight_dv, targets_bs, mask_bs, token_columns)
        return jax.tree.map(jnp.add, totals, sums), None

    names = ("ce_sum", "correct") if count_correct else ("ce_sum",)
    zeros = {name: jnp.zeros((), jnp.float32) for name in names}
    totals, _ = jax.lax.scan(add_chunk, zeros, chunks)
    return totals
