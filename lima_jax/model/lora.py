"""LoRA and QLoRA: low-rank adapters on the frozen projections of the LLaMA decoder.

A targeted projection W (`wq`, ..., `w_down`, stored [in..., out...]) gains two parameters beside
it, `<name>_lora_a` [in..., R] and `<name>_lora_b` [R, out...], and computes
``x @ W + (dropout(x) @ A) @ B * alpha / R``, as PEFT's LoRA does (A starts Kaiming-uniform, B at
zero, so training starts from the base model). The adapters carry the logical axes of the weight
they adapt (the rank axis is never sharded), so every mesh places them beside their weight.

With `lora.base_dtype` int8, int4 or nf4 the seven projections of every layer are stored
quantized by qwix (`qwix.quantize` / `qwix.dequantize`): `<name>` holds the quantized values and
`<name>_scale` the scales, and each layer dequantizes its weights inside the layer scan, so the
whole base is never held in a float dtype. int8 has one scale per output channel; the 4-bit types
one per block of 64 inputs (QLoRA's block size).

New token rows (a new end of turn) train beside the adapters: `token_rows` [R_tok, D] replaces
those rows of the embedding and `token_head` [D, R_tok] those columns of the output layer (the
same values when the embeddings are tied), as PEFT's trainable tokens do.

`split_trainable` / `join` part a parameter dict into what trains and the frozen base; `attach`
turns plain (full-precision, adapter-free) parameters into a LoRA model's; `merge` folds the
adapters back into plain weights (decoding, export).
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
TOKEN_ROWS, TOKEN_HEAD = "token_rows", "token_head"
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
    return jnp.where(match.any(-1, keepdims=True), replaced.astype(x.dtype), x)


# ----------------------------------------------------------------------------- parameter trees


def is_trainable_name(name: str) -> bool:
    return name.endswith((LORA_A, LORA_B)) or name in (TOKEN_ROWS, TOKEN_HEAD)


def split_trainable(params: dict) -> tuple[dict, dict]:
    """(trainable, frozen): the adapters and token rows, and everything else, as nested dicts."""
    trainable, frozen = {}, {}
    for key, value in params.items():
        if isinstance(value, dict):
            t, f = split_trainable(value)
            if t:
                trainable[key] = t
            if f:
                frozen[key] = f
        elif is_trainable_name(key):
            trainable[key] = value
        else:
            frozen[key] = value
    return trainable, frozen


def trainable(params: dict) -> dict:
    return split_trainable(params)[0]


def join(a: dict, b: dict) -> dict:
    """The union of two nested dicts with no leaf in common (`split_trainable`'s inverse)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = join(out[key], value) if key in out and isinstance(value, dict) else value
    return out


def _projections(params: dict):
    """(target, layer dict, weight name, number of input axes) of every projection."""
    for target, (module, name, n_in) in TARGET_WEIGHTS.items():
        yield target, params["layers"][module], name, n_in


def frozen_base(plain: dict, config: LlamaConfig) -> dict:
    """The frozen part of a LoRA model from plain parameters (`config` without lora): the seven
    projections quantized (or cast), everything else in `config.frozen_param_dtype`."""
    lora = config.lora
    frozen = jax.tree.map(lambda x: x.astype(config.frozen_param_dtype), plain)
    if lora.quantized:
        for target, layer, name, n_in in _projections(frozen):
            q = quantize_weight(_plain_leaf(plain, target).astype(jnp.float32), lora.base_dtype, n_in,
                                stacked=True, packed=lora.packed_4bit)
            layer[name], layer[name + SCALE] = q.qvalue, q.scale
    return frozen


def _plain_leaf(params: dict, target: str) -> jax.Array:
    module, name, _ = TARGET_WEIGHTS[target]
    return params["layers"][module][name]


def attach(plain: dict, config: LlamaConfig, rng: jax.Array) -> dict:
    """A LoRA model's parameters from plain ones: the frozen base (`frozen_base`), fresh adapters
    (A random, B zero) and the token rows copied from the tables. Jit it with the LoRA model's
    shardings as out_shardings: the random base it draws for the adapters' shapes is never used,
    so XLA drops it."""
    from lima_jax.model.llama import Llama  # the model module imports this one

    fresh = nnx.to_pure_dict(nnx.state(Llama(config, rngs=nnx.Rngs(params=rng)), nnx.Param))
    adapters = trainable(fresh)
    ids = jnp.asarray(config.lora.token_ids, jnp.int32)
    if config.lora.token_ids:
        dtype = jnp.dtype(config.param_dtype)
        adapters[TOKEN_ROWS] = plain["embedding"][ids].astype(dtype)
        if TOKEN_HEAD in adapters:
            adapters[TOKEN_HEAD] = plain["lm_head"][:, ids].astype(dtype)
    return join(adapters, frozen_base(plain, config))


def merge(params: dict, config: LlamaConfig) -> tuple[dict, LlamaConfig]:
    """(plain parameters, plain config): the adapters folded into their weights (W + A @ B *
    alpha / R, on the dequantized base) and the token rows written into the tables, all in
    `config.param_dtype`; a model without lora comes back as it is."""
    lora = config.lora
    if lora is None:
        return params, config
    dtype = jnp.dtype(config.param_dtype)
    adapters, frozen = split_trainable(params)
    plain = jax.tree.map(lambda x: x, frozen)
    for target, layer, name, _ in _projections(plain):
        w = layer[name]
        if lora.quantized:
            w = dequantized(w, layer.pop(name + SCALE), lora.base_dtype)
        w = w.astype(jnp.float32)
        if target in lora.targets:
            module = TARGET_WEIGHTS[target][0]
            a = adapters["layers"][module][name + LORA_A].astype(jnp.float32)
            b = adapters["layers"][module][name + LORA_B].astype(jnp.float32)
            layers = w.shape[0]
            delta = a.reshape(layers, -1, lora.rank) @ b.reshape(layers, lora.rank, -1)
            w = w + (delta * lora.scaling).reshape(w.shape)
        layer[name] = w
    if lora.token_ids:
        ids = jnp.asarray(lora.token_ids, jnp.int32)
        rows = adapters[TOKEN_ROWS]
        plain["embedding"] = plain["embedding"].at[ids].set(rows.astype(plain["embedding"].dtype))
        if "lm_head" in plain:
            plain["lm_head"] = plain["lm_head"].at[:, ids].set(adapters[TOKEN_HEAD].astype(plain["lm_head"].dtype))
    plain = jax.tree.map(lambda x: x.astype(dtype), plain)
    return plain, config.replace(lora=None)


def trainable_parameter_count(config: LlamaConfig) -> int:
    """Parameters that train under `config.lora` (adapters and token rows), from shapes alone."""
    from lima_jax.model.llama import abstract_model

    pure = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    return int(sum(x.size for x in jax.tree.leaves(trainable(pure))))
