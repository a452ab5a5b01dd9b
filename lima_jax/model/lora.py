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

import jax
import jax.numpy as jnp
from flax import nnx

from lima_jax.model.config import LlamaConfig
from lima_jax.model.llama import TOKEN_HEAD, TOKEN_ROWS, Llama, abstract_model
from lima_jax.model.lora_layers import (  # noqa: F401 - the scheme's names, for its users
    LORA_A,
    LORA_B,
    QUANT_BLOCK,
    SCALE,
    TARGET_WEIGHTS,
    dequantized,
    quantize_weight,
)

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
    plain = jax.tree.map(lambda x: x.astype(dtype), plain)
    if lora.token_ids:  # written after the cast: the trained rows keep param_dtype's precision
        ids = jnp.asarray(lora.token_ids, jnp.int32)
        plain["embedding"] = plain["embedding"].at[ids].set(adapters[TOKEN_ROWS].astype(dtype))
        if "lm_head" in plain:
            plain["lm_head"] = plain["lm_head"].at[:, ids].set(adapters[TOKEN_HEAD].astype(dtype))
    return plain, config.replace(lora=None)


def trainable_parameter_count(config: LlamaConfig) -> int:
    """Parameters that train under `config.lora` (adapters and token rows), from shapes alone."""
    pure = nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))
    return int(sum(x.size for x in jax.tree.leaves(trainable(pure))))
