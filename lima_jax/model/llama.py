"""The LLaMA decoder in Flax NNX: `Llama(config, rngs=...)(tokens, positions, segment_ids)`.

The L decoder blocks are one module whose parameters carry a leading `layers`
axis (created with `nnx.vmap`) and run under `jax.lax.scan`, so an 80-layer
model traces one block and compiles in seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lima_jax.model.attention import make_attend
from lima_jax.model.config import LlamaConfig
from lima_jax.model.layers import (
    MLP,
    Attention,
    RMSNorm,
    logical_param,
    project,
    rope_cos_sin,
    rope_inverse_frequencies,
)
from lima_jax.model.lora_layers import adapter_keys, with_token_rows

# LoRA: the trained rows (and, untied, output columns) of new tokens such as a new end of turn.
TOKEN_ROWS, TOKEN_HEAD = "token_rows", "token_head"
REMAT_POLICY = {
    "full": None,  # save nothing but the layer's input
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def residual_dropout(x: jax.Array, rate: jax.Array, key: jax.Array) -> jax.Array:
    """Inverted dropout with a traced per-layer `rate` (a scan input, so no Python branch).

    At rate 0 every element is kept and scaled by 1, an exact identity.
    """
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(key, keep_prob, x.shape)
    return jnp.where(keep, x / keep_prob.astype(x.dtype), jnp.zeros_like(x))


class DecoderBlock(nnx.Module):
    """Pre-norm attention and MLP sub-layers, each joined to the residual stream."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        norm_kwargs = dict(eps=config.norm_eps, param_dtype=config.frozen_param_dtype, rngs=rngs)
        self.attention_norm = RMSNorm(config.dim, **norm_kwargs)
        self.attention = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config.dim, **norm_kwargs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x_btd, cos_bth, sin_bth, attend, dropout_rate=None, dropout_key=None):
        """One layer; `attend(q, k, v)` is the attention implementation. With
        `dropout_key`, each sub-layer's output is dropped at `dropout_rate` before it
        joins the residual stream (LIMA's residual dropout), and LoRA adapters drop their
        inputs at `lora.dropout`."""
        keys = None
        if dropout_key is not None:
            attn_key, mlp_key = jax.random.split(dropout_key)
            # Adapter dropout draws from a key of its own, so the residual dropout's masks (and a
            # full fine-tuning run's numbers) are those of a model without adapters.
            keys = adapter_keys(jax.random.fold_in(dropout_key, 2), self.config)
        attn_out = self.attention(self.attention_norm(x_btd), cos_bth, sin_bth, attend, keys)
        if dropout_key is not None:
            attn_out = residual_dropout(attn_out, dropout_rate, attn_key)
        h_btd = x_btd + attn_out
        mlp_out = self.mlp(self.mlp_norm(h_btd), keys)
        if dropout_key is not None:
            mlp_out = residual_dropout(mlp_out, dropout_rate, mlp_key)
        return h_btd + mlp_out

    def with_attend(self, x_btd, cos_bth, sin_bth, attend):
        """One layer (no dropout) whose attention is `attend(q, k, v) -> (out_btnh, aux)`;
        the KV-cache decoder (lima_jax.model.kv_cache) passes one that reads and writes
        its cache. Returns (x_btd, aux)."""
        q, k_btkh, v_btkh = self.attention.qkv(self.attention_norm(x_btd), cos_bth, sin_bth)
        out_btnh, aux = attend(q, k_btkh, v_btkh)
        h_btd = x_btd + self.attention.output(out_btnh)
        return h_btd + self.mlp(self.mlp_norm(h_btd)), aux


def _stacked_blocks(config: LlamaConfig, rngs: nnx.Rngs) -> DecoderBlock:
    """L blocks as one module whose parameters have a leading `layers` axis."""

    @nnx.split_rngs(splits=config.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=config.n_layers)
    def create(layer_rngs):
        return DecoderBlock(config, rngs=layer_rngs)

    blocks = create(rngs)
    for _, variable in nnx.iter_graph(blocks):
        if isinstance(variable, nnx.Variable):
            axes = variable.get_metadata()["logical_axes"]
            variable.set_metadata(logical_axes=("layers",) + tuple(axes))
    return blocks


class Llama(nnx.Module):
    """A LLaMA-family causal language model (LLaMA 1, Llama 2, Llama 3.x)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        v, d = config.padded_vocab_size, config.dim
        init = nnx.initializers.normal(config.initializer_range)
        frozen = config.frozen_param_dtype
        self.embedding = logical_param(rngs, init, (v, d), frozen, ("vocab", "embed"))
        self.layers = _stacked_blocks(config, rngs)
        self.final_norm = RMSNorm(d, eps=config.norm_eps, param_dtype=frozen, rngs=rngs)
        if not config.tie_embeddings:
            self.lm_head = logical_param(rngs, init, (d, v), frozen, ("embed", "vocab"))
        # LoRA: the rows of new tokens (a new end of turn) train beside the adapters.
        token_ids = config.lora.token_ids if config.lora else ()
        if token_ids:
            r = len(token_ids)
            self.token_rows = logical_param(rngs, init, (r, d), config.param_dtype, (None, "embed"))
            if not config.tie_embeddings:
                self.token_head = logical_param(rngs, init, (d, r), config.param_dtype, ("embed", None))

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        dropout_rng: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Logits [B, T, V_padded] for tokens [B, T].

        positions: int [B, T], each token's position inside its own example
          (default 0..T-1). segment_ids: int [B, T], 1..k for the examples packed
          in a row and 0 for padding (default: one example per row). An example
          never attends to another one. Residual dropout runs only when
          `deterministic=False`, and then needs `dropout_rng`. Logit columns
          at or beyond `config.vocab_size` (vocabulary padding) are set to the
          dtype's minimum so they never win a softmax.
        """
        return self.logits(self.residual_stream(
            tokens, positions, segment_ids, dropout_rng=dropout_rng, deterministic=deterministic))

    def hidden_states(self, *args, **kwargs) -> jax.Array:
        """The output projection's input [B, T, D] (after the final norm) for tokens [B, T];
        arguments as `__call__`. With `output_weight()` this gives the logits piecewise, so a
        loss can be computed a few tokens at a time (lima_jax.train.loss)."""
        return self.final_norm(self.residual_stream(*args, **kwargs))

    def residual_stream(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        *,
        dropout_rng: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """The residual stream [B, T, D] after the last decoder block (before the final
        norm); arguments as `__call__`."""
        config = self.config
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        adapter_dropout = config.lora.dropout if config.lora else 0.0
        train = not deterministic and (config.residual_dropout > 0.0 or adapter_dropout > 0.0)
        if train and dropout_rng is None:
            raise ValueError("Llama: deterministic=False with residual or adapter dropout needs dropout_rng")

        x_btd = self.embed(tokens)
        inv_freq = rope_inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
        cos_bth, sin_bth = rope_cos_sin(positions, inv_freq)
        attend = make_attend(config.attention, segment_ids, positions, config.head_dim)

        graphdef, stacked_state = nnx.split(self.layers)
        rates_l = jnp.asarray(config.residual_dropout_rates(), jnp.float32)
        keys_l = jax.random.split(dropout_rng, config.n_layers) if train else None

        def layer(x, per_layer):
            layer_state, rate, key = per_layer
            block = nnx.merge(graphdef, layer_state)
            return block(x, cos_bth, sin_bth, attend, rate, key), None

        if config.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICY[config.remat], prevent_cse=False)
        # Unrolling trades compile time for speed: XLA:CPU runs a fully unrolled small
        # model ~25% faster (the scan's stacking buffers and slices go away).
        unroll = config.n_layers if config.scan_unroll == 0 else config.scan_unroll
        x_btd, _ = jax.lax.scan(layer, x_btd, (stacked_state, rates_l, keys_l), unroll=unroll)
        return x_btd

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings [..., D] in the compute dtype for ids [...]."""
        dtype = jnp.dtype(self.config.dtype)
        if self.config.lora and self.config.lora.token_ids:
            return with_token_rows(self.embedding[...], tokens, self.token_rows[...],
                                   self.config.lora.token_ids).astype(dtype)
        return jnp.take(self.embedding[...], tokens, axis=0).astype(dtype)

    def logits(self, x_btd: jax.Array) -> jax.Array:
        """Final norm and output head: [B, T, D] -> logits [B, T, V_padded], the padded
        vocabulary columns set to the dtype's minimum."""
        return vocab_logits(self.final_norm(x_btd), self.output_weight(), self.config, self.token_columns())

    def output_weight(self) -> jax.Array:
        """The output projection [D, V_padded] in the parameters' dtype: `lm_head`, or the
        embedding's transpose when the embeddings are tied (under LoRA the frozen one: the
        trained columns of new tokens are `token_columns`)."""
        if self.config.tie_embeddings:
            return self.embedding[...].T
        return self.lm_head[...]

    def token_columns(self) -> tuple[tuple[int, ...], jax.Array] | None:
        """LoRA's trained output columns of new tokens: (their ids, columns [D, R]), or None.
        They replace those logits after the frozen head's matmul, so the backward pass never
        forms the gradient of the whole [D, V] head."""
        token_ids = self.config.lora.token_ids if self.config.lora else ()
        if not token_ids:
            return None
        cols = self.token_rows[...].T if self.config.tie_embeddings else self.token_head[...]
        return token_ids, cols


def vocab_logits(h_btd: jax.Array, weight_dv: jax.Array, config: LlamaConfig, token_columns=None) -> jax.Array:
    """The output head on final-norm outputs: h [B, T, D] times `weight_dv` [D, V_padded]
    (`Llama.output_weight`) in the compute dtype, with the columns of `token_columns`
    (`Llama.token_columns`) computed apart and set in, cast to `config.logits_dtype`, with the
    columns at or beyond `config.vocab_size` (vocabulary padding) set to the dtype's minimum so
    they never win a softmax or an argmax. The one recipe for the model's logits and the
    chunked loss's (lima_jax.train.loss), so both round alike."""
    dtype = jnp.dtype(config.dtype)
    logits = project(h_btd, weight_dv.astype(dtype))
    if token_columns is not None:
        ids, cols_dr = token_columns
        logits = logits.at[..., jnp.asarray(ids)].set(project(h_btd, cols_dr.astype(dtype)))
    logits = logits.astype(jnp.dtype(config.logits_dtype))
    if config.padded_vocab_size > config.vocab_size:
        is_real = jnp.arange(config.padded_vocab_size) < config.vocab_size
        logits = jnp.where(is_real, logits, jnp.finfo(logits.dtype).min)
    return logits


def abstract_model(config: LlamaConfig) -> Llama:
    """The model with `jax.ShapeDtypeStruct`s for parameters: shapes, no memory."""
    return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))


def count_parameters(config: LlamaConfig, *, include_vocab_padding: bool = False) -> int:
    """Parameter count computed from shapes alone (nothing is allocated).

    By default the padded rows of the embedding tables are left out, so the
    figure compares with published counts.
    """
    state = nnx.state(abstract_model(config), nnx.Param)
    total = sum(leaf.size for leaf in jax.tree.leaves(state))
    if not include_vocab_padding:
        tables = 1 if config.tie_embeddings else 2
        total -= (config.padded_vocab_size - config.vocab_size) * config.dim * tables
    return int(total)
