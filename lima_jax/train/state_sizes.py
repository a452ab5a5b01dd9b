"""What a train state holds and what a step costs, from shapes alone: parameter counts (the base
model's, the trainable ones under LoRA), bytes in all and per device, and the model FLOPs per
token (6 per matmul parameter; under LoRA 4 per frozen one, which computes no weight gradient).
The plan check reports them (`lima_jax.train.aot`), the trainer's MFU uses the FLOPs.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from lima_jax.model import lora as lora_lib
from lima_jax.train.config import total_flops_per_token


def itemsize(dtype) -> float:
    """Bytes an element of `dtype` takes (half a byte for the 4-bit types, packed)."""
    return jax.dtypes.itemsize_bits(np.dtype(dtype)) / 8


def tree_bytes(tree) -> int:
    return int(sum(math.prod(x.shape) * itemsize(x.dtype) for x in jax.tree.leaves(tree)))


def device_bytes(tree) -> int:
    """The bytes of `tree` (ShapeDtypeStructs with shardings) that one device holds: each leaf's
    shard (its whole shape where it has no sharding)."""
    total = 0.0
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
        total += math.prod(shape) * itemsize(x.dtype)
    return int(total)


def leaf_count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _plain_params(model_config) -> dict:
    """ShapeDtypeStructs of the model's parameters without LoRA (the base model, unquantized)."""
    from flax import nnx

    from lima_jax.model.llama import abstract_model

    return nnx.to_pure_dict(nnx.state(abstract_model(model_config.replace(lora=None)), nnx.Param))


def plain_parameters(model_config) -> int:
    """All parameters of the model without its LoRA adapters (what an export holds)."""
    return leaf_count(_plain_params(model_config))


def matmul_parameters(model_config) -> int:
    """Parameters of the base model (LoRA adapters not counted) that take part in a matmul per
    token: all but the norm scales, and the input embedding unless it is the output layer too
    (what MFU counts: `StepFunctions.matmul_param_count`)."""
    pure = _plain_params(model_config)
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(pure) if len(x.shape) >= 2)
    if not model_config.tie_embeddings:
        total -= math.prod(pure["embedding"].shape)
    return int(total)


def trainable_matmul_parameters(model_config) -> int:
    """Under LoRA, the trainable parameters that take part in a matmul per token: the adapters,
    and the new tokens' output columns (`token_head`, or `token_rows` when the embeddings are
    tied); 0 without LoRA."""
    if model_config.lora is None:
        return 0
    from flax import nnx

    from lima_jax.model.llama import abstract_model

    pure = nnx.to_pure_dict(nnx.state(abstract_model(model_config), nnx.Param))
    head = lora_lib.TOKEN_ROWS if model_config.tie_embeddings else lora_lib.TOKEN_HEAD
    flat = jax.tree_util.tree_flatten_with_path(lora_lib.trainable(pure))[0]
    return int(sum(math.prod(x.shape) for path, x in flat
                   if str(path[-1].key).endswith((lora_lib.LORA_A, lora_lib.LORA_B)) or path[-1].key == head))


def model_flops_per_token(model_config, seq_len: int) -> float:
    """Training FLOPs per token of the model (`total_flops_per_token`: 6 per matmul parameter
    and causal attention). Under LoRA the frozen base computes no weight gradient: 4 FLOPs per
    frozen matmul parameter (forward and input gradient) and 6 per trainable one."""
    attention = total_flops_per_token(0, model_config.n_layers, seq_len, model_config.n_heads * model_config.head_dim)
    base = matmul_parameters(model_config)
    if model_config.lora is None:
        return 6.0 * base + attention
    return 4.0 * base + 6.0 * trainable_matmul_parameters(model_config) + attention


def _lora_text(spec) -> str:
    return (f"LoRA rank {spec.rank}, alpha {spec.alpha:g}, dropout {spec.dropout:g}, targets "
            f"{','.join(spec.targets)}, base {spec.base_dtype or 'param_dtype'}"
            + (" (packed 4-bit)" if spec.base_dtype in ("int4", "nf4") and spec.packed_4bit else ""))


def train_state_sizes(sharded, model_config) -> dict:
    """What the train state holds, in all and per device (each leaf's shard): the parameters
    (under LoRA the frozen base with its adapters), the trainable ones, and the optimizer state,
    which covers the trainable parameters only (AdamW: two moments of each, plus counters)."""
    state = sharded.abstract_state
    params, fns = state["params"], sharded.fns
    trainable = fns.trainable(params)
    return {
        "lora": _lora_text(model_config.lora) if model_config.lora else None,
        "parameters": plain_parameters(model_config) if fns.lora else leaf_count(params),
        "trainable_parameters": leaf_count(trainable),
        "param_bytes": tree_bytes(params),
        "param_bytes_per_device": device_bytes(params),
        "trainable_bytes": tree_bytes(trainable),
        "trainable_bytes_per_device": device_bytes(trainable),
        "optimizer_state_bytes": tree_bytes(state["opt_state"]),
        "optimizer_state_bytes_per_device": device_bytes(state["opt_state"]),
    }
