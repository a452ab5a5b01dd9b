"""The LoRA pieces inside the model (`lima_jax.model.lora` describes the scheme): projections
created as a frozen, possibly qwix-quantized, base with their adapters; the weight read back
(dequantized inside the layer scan); the adapted matmul; the trained rows of new tokens.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

from lima_jax.model.config import LlamaConfig, LoraSpec

# target -> (module, weight name, number of input axes of the weight)
TARGET_WEIGHTS = {
    "q": ("attention", "wq", 1),
    "k": ("attention", "wk", 1),
    "v": ("attention", "wv", 1),
    "o": ("attention", "wo", 2),
    "gate": ("mlp", "w_gate", 1),
    "up": ("mlp", "w_up", 1),
    "down": ("mlp", "w_down", 1),
}
LORA_A, LORA_B, SCALE = "_lora_a", "_lora_b", "_scale"
QUANT_BLOCK = 64  # inputs per scale for the 4-bit base types (QLoRA's block size)


# ----------------------------------------------------------------------------- quantization


def quantize_weight(w: jax.Array, qtype: str, n_in: int, stacked: bool = False, packed: bool = True) -> qwix.QArray:
    """`w` [(L,) in..., out...] quantized by qwix: int8 with one scale per output channel (the
    input axes reduced), 4-bit types with one scale per block of `QUANT_BLOCK` along the last
    input axis (the whole axis when it is shorter or does not divide). `packed=False` keeps
    4-bit values in 8-bit containers (`LoraSpec.packed_4bit`)."""
    q = _quantized(w, qtype, n_in, 1 if stacked else 0)
    if not packed and q.qvalue.dtype in (jnp.int4, jnp.uint4):
        container = jnp.int8 if q.qvalue.dtype == jnp.int4 else jnp.uint8
        q = qwix.QArray(q.qvalue.astype(container), q.scale, qtype=qtype)
    return q


def _quantized(w: jax.Array, qtype: str, n_in: int, first: int) -> qwix.QArray:
    last_in = first + n_in - 1
    if qtype == "int8":
        channelwise = tuple(i for i in range(w.ndim) if i < first or i > last_in)
        return qwix.quantize(w, qtype, channelwise_axes=channelwise, scale_dtype=jnp.float32)
    size = w.shape[last_in]
    tile = QUANT_BLOCK if size % QUANT_BLOCK == 0 else size
    channelwise = tuple(i for i in range(w.ndim) if i != last_in)
    return qwix.quantize(w, qtype, channelwise_axes=channelwise, tiled_axes={last_in: tile},
                         scale_dtype=jnp.float32)


def dequantized(qvalue: jax.Array, scale: jax.Array, qtype: str) -> jax.Array:
    """The float weight (in the scale's dtype) of qwix values and scales."""
    return qwix.dequantize(qwix.QArray(qvalue, scale, qtype=qtype))


# ----------------------------------------------------------------------------- model pieces


def make_projection(module: nnx.Module, name: str, rngs: nnx.Rngs, init, shape: tuple[int, ...],
                    axes: tuple[str | None, ...], config: LlamaConfig, target: str) -> None:
    """Creates `module.<name>` (the weight, `shape` [in..., out...] with logical `axes`) and, under
    LoRA, its storage as the frozen base and its adapter when `target` is adapted."""
    lora = config.lora
    n_in = TARGET_WEIGHTS[target][2]
    w = init(rngs.params(), shape, jnp.float32 if lora and lora.quantized else jnp.dtype(config.param_dtype))
    if lora is None:
        setattr(module, name, nnx.Param(w, logical_axes=axes))
        return
    if lora.quantized:
        q = quantize_weight(w, lora.base_dtype, n_in, packed=lora.packed_4bit)
        setattr(module, name, nnx.Param(q.qvalue, logical_axes=axes))
        setattr(module, name + SCALE, nnx.Param(q.scale, logical_axes=axes))
    else:
        setattr(module, name, nnx.Param(w.astype(config.frozen_param_dtype), logical_axes=axes))
    if target in lora.targets:
        in_shape, out_shape = shape[:n_in], shape[n_in:]
        bound = 1.0 / math.sqrt(math.prod(in_shape))  # PEFT's kaiming_uniform_(a=sqrt(5)) on A
        a = jax.random.uniform(rngs.params(), (*in_shape, lora.rank), jnp.dtype(config.param_dtype),
                               -bound, bound)
        setattr(module, name + LORA_A, nnx.Param(a, logical_axes=(*axes[:n_in], None)))
        b = jnp.zeros((lora.rank, *out_shape), jnp.dtype(config.param_dtype))
        setattr(module, name + LORA_B, nnx.Param(b, logical_axes=(None, *axes[n_in:])))


def weight(module: nnx.Module, name: str, dtype) -> jax.Array:
    """`module.<name>` as a float weight in `dtype`, dequantized when the base is quantized."""
    w = getattr(module, name)[...]
    scale = getattr(module, name + SCALE, None)
    if scale is not None:
        w = dequantized(w, scale[...], module.config.lora.base_dtype)
    return w.astype(dtype)


def adapter_output(module: nnx.Module, name: str, x_bti: jax.Array, key: jax.Array | None) -> jax.Array | None:
    """The adapter's term for input x [B, T, IN] (inputs flattened): [B, T, OUT], or None when
    `name` has no adapter. `key` drops adapter inputs at `lora.dropout` (training)."""
    a = getattr(module, name + LORA_A, None)
    if a is None:
        return None
    lora: LoraSpec = module.config.lora
    b_, t, i = x_bti.shape
    if key is not None and lora.dropout > 0:
        keep = jax.random.bernoulli(key, 1.0 - lora.dropout, x_bti.shape)
        x_bti = jnp.where(keep, x_bti / (1.0 - lora.dropout), 0).astype(x_bti.dtype)
    a_ir = a[...].reshape(i, lora.rank).astype(x_bti.dtype)
    b_ro = getattr(module, name + LORA_B)[...].reshape(lora.rank, -1).astype(x_bti.dtype)
    h_btr = (x_bti.reshape(b_, t, i).reshape(b_ * t, i) @ a_ir)
    return ((h_btr @ b_ro) * lora.scaling).reshape(b_, t, -1)


def linear(module: nnx.Module, name: str, x_bti: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """x [B, T, IN] through projection `name` (weight reshaped to [IN, OUT]) plus its adapter."""
    b, t, i = x_bti.shape
    w_io = weight(module, name, x_bti.dtype).reshape(i, -1)
    out = (x_bti.reshape(b * t, i) @ w_io).reshape(b, t, w_io.shape[1])
    delta = adapter_output(module, name, x_bti, key)
    return out if delta is None else out + delta


def adapter_keys(key: jax.Array | None, config: LlamaConfig) -> dict[str, jax.Array | None]:
    """One dropout key per target (None each when not training or without adapter dropout)."""
    if key is None or config.lora is None or config.lora.dropout == 0:
        return {t: None for t in TARGET_WEIGHTS}
    return dict(zip(TARGET_WEIGHTS, jax.random.split(key, len(TARGET_WEIGHTS))))


def with_token_rows(table_vd: jax.Array, tokens: jax.Array, rows_rd: jax.Array, token_ids) -> jax.Array:
    """Embeddings `table_vd[tokens]` [..., D] with the trained rows of `token_ids` in place."""
    x = jnp.take(table_vd, tokens, axis=0)
    match = tokens[..., None] == jnp.asarray(token_ids, tokens.dtype)  # [..., R]
    replaced = jnp.einsum("...r,rd->...d", match.astype(rows_rd.dtype), rows_rd)
    # In the rows' dtype: a bfloat16 frozen table must not round the trained float32 rows.
    return jnp.where(match.any(-1, keepdims=True), replaced, x.astype(replaced.dtype))
