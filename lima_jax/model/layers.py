"""The LLaMA building blocks in Flax NNX: RMSNorm, rotary embeddings (with
Llama 3.1 scaling), grouped-query attention and the SwiGLU MLP.

Every parameter is an `nnx.Param` carrying `logical_axes` metadata (the names of the sharding rules,
README "Sharding"); `lima_jax.sharding` maps those names to mesh axes, so no
mesh axis name appears here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lima_jax.model.config import LlamaConfig, RopeScaling
from lima_jax.model.lora_layers import linear, make_projection


def logical_param(rngs: nnx.Rngs, init, shape, dtype, axes: tuple[str | None, ...]) -> nnx.Param:
    """A parameter initialised by `init` with its logical axis names attached."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match parameter shape {shape}")
    return nnx.Param(init(rngs.params(), shape, jnp.dtype(dtype)), logical_axes=tuple(axes))


def project(x_btd: jax.Array, w_d_out: jax.Array) -> jax.Array:
    """x [B, T, D] times a weight [D, *out] -> [B, T, prod(out)], as one 2-D matmul.

    Folding B and T into one row axis gives XLA a plain [B*T, D] x [D, O] dot whose
    weight gradient is again a plain dot; the 3-D einsum form made XLA:CPU transpose
    the gradient through a slow copy first (bench/NOTES.md).
    """
    b, t, d = x_btd.shape
    w_do = w_d_out.reshape(d, -1)
    return (x_btd.reshape(b * t, d) @ w_do).reshape(b, t, w_do.shape[1])


class RMSNorm(nnx.Module):
    """Root-mean-square norm, computed in float32 as transformers' LlamaRMSNorm does."""

    def __init__(self, dim: int, *, eps: float, param_dtype: str, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = logical_param(rngs, nnx.initializers.ones, (dim,), param_dtype, ("embed",))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        x32 = x_btd.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(variance + self.eps)).astype(x_btd.dtype)
        return normed * self.scale[...].astype(x_btd.dtype)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """[H/2] float32 inverse frequencies, with Llama 3.1 or linear scaling applied."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq.astype(np.float32)
    if scaling.kind == "linear":
        return (inv_freq / scaling.factor).astype(np.float32)
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, and the
    # band between them interpolated smoothly.
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions_bt: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables [B, T, H/2] in float32 for integer positions [B, T]."""
    angles = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    """Rotates the two halves of each head (the Hugging Face "rotate_half" layout)."""
    half = x_btnh.shape[-1] // 2
    x1 = x_btnh[..., :half].astype(jnp.float32)
    x2 = x_btnh[..., half:].astype(jnp.float32)
    cos = cos_bth[:, :, None, :]
    sin = sin_bth[:, :, None, :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_btnh.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary embeddings (and LoRA adapters under
    `config.lora`, lima_jax.model.lora)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, n, k, h = config.dim, config.n_heads, config.n_kv_heads, config.head_dim
        init = nnx.initializers.normal(config.initializer_range)
        self.config = config
        make_projection(self, "wq", rngs, init, (d, n, h), ("embed", "heads", "head_dim"), config, "q")
        make_projection(self, "wk", rngs, init, (d, k, h), ("embed", "kv_heads", "head_dim"), config, "k")
        make_projection(self, "wv", rngs, init, (d, k, h), ("embed", "kv_heads", "head_dim"), config, "v")
        make_projection(self, "wo", rngs, init, (n, h, d), ("heads", "head_dim", "embed"), config, "o")

    def qkv(self, x_btd, cos_bth, sin_bth, keys=None):
        """Rotated queries [B, T, N, H] and keys [B, T, K, H], and values [B, T, K, H].
        keys: adapter dropout keys per target (`lora.adapter_keys`), None when not training."""
        keys = keys or {}
        b, t, _ = x_btd.shape
        n, k, h = self.config.n_heads, self.config.n_kv_heads, self.config.head_dim
        q = linear(self, "wq", x_btd, keys.get("q")).reshape(b, t, n, h)
        k_btkh = linear(self, "wk", x_btd, keys.get("k")).reshape(b, t, k, h)
        v_btkh = linear(self, "wv", x_btd, keys.get("v")).reshape(b, t, k, h)
        return apply_rope(q, cos_bth, sin_bth), apply_rope(k_btkh, cos_bth, sin_bth), v_btkh

    def output(self, out_btnh, keys=None):
        """The attention output [B, T, N, H] projected back to [B, T, D]."""
        b, t, n, h = out_btnh.shape
        return linear(self, "wo", out_btnh.reshape(b, t, n * h), (keys or {}).get("o"))

    def __call__(self, x_btd, cos_bth, sin_bth, attend, keys=None):
        """`attend(q, k, v) -> out [B, T, N, H]` is the implementation (model/attention.py)."""
        q, k_bskh, v_bskh = self.qkv(x_btd, cos_bth, sin_bth, keys)
        return self.output(attend(q, k_bskh, v_bskh), keys)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, f = config.dim, config.mlp_dim
        init = nnx.initializers.normal(config.initializer_range)
        self.config = config
        make_projection(self, "w_gate", rngs, init, (d, f), ("embed", "mlp"), config, "gate")
        make_projection(self, "w_up", rngs, init, (d, f), ("embed", "mlp"), config, "up")
        make_projection(self, "w_down", rngs, init, (f, d), ("mlp", "embed"), config, "down")

    def __call__(self, x_btd, keys=None):
        keys = keys or {}
        gate_btf = linear(self, "w_gate", x_btd, keys.get("gate"))
        up_btf = linear(self, "w_up", x_btd, keys.get("up"))
        hidden_btf = jax.nn.silu(gate_btf) * up_btf
        return linear(self, "w_down", hidden_btf, keys.get("down"))
