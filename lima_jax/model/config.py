"""The LLaMA model configuration: one frozen dataclass for every family (LLaMA 1,
2, 3, 3.1, 3.2) and the tiny test sizes, validated at construction.

Dimension alphabet used across the model package: B batch, T query length,
S key/value length, D model width, N query heads, K key/value heads, G = N/K,
H head dim, F MLP width, V vocabulary (padded), L layers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from lima_jax.errors import LimaError

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "pallas", "cudnn")  # see model/attention.py
# What the backward pass keeps of each layer's activations: "none" keeps all,
# "full" recomputes the whole layer, "dots" keeps matmul outputs,
# "dots_no_batch" keeps only matmul outputs without batch dimensions (weights-like).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
# LoRA (lima_jax.model.lora): the projections an adapter may target, and how the frozen base is
# stored ('' = model.param_dtype; int8, int4 and nf4 are quantized by qwix).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
LORA_BASE_DTYPES = ("", "bfloat16", "int8", "int4", "nf4")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters on a frozen base (`config.lora` of a run; README "LoRA and QLoRA").

    rank R of every adapter, `alpha` (updates scale by alpha / R, as PEFT's), dropout on each
    adapter's input, the projections adapted (`LORA_TARGETS`), the frozen base's storage
    (`LORA_BASE_DTYPES`), and the token ids whose embedding and output rows train beside the
    adapters (a new end of turn)."""

    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    base_dtype: str = ""
    token_ids: tuple[int, ...] = ()
    # 4-bit values two to a byte (TPU, GPU) or one per byte: XLA:CPU compiles steps for packed
    # int4 but hands back arrays unpacked, so on CPU they are kept in 8-bit containers (the
    # same memory there, the same numbers everywhere).
    packed_4bit: bool = True

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))  # from JSON lists
        object.__setattr__(self, "token_ids", tuple(int(i) for i in self.token_ids))
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"lora.targets: {unknown or 'none'} {'is' if len(unknown) == 1 else 'are'} "
                              f"not among {', '.join(LORA_TARGETS)}")
        if self.base_dtype not in LORA_BASE_DTYPES:
            raise ConfigError(f"lora.base_dtype={self.base_dtype!r} is not one of "
                              f"{', '.join(repr(d) for d in LORA_BASE_DTYPES)}")

    @property
    def scaling(self) -> float:
        """What an adapter's output is multiplied by: alpha / rank."""
        return self.alpha / self.rank

    @property
    def quantized(self) -> bool:
        return self.base_dtype in ("int8", "int4", "nf4")


class ConfigError(LimaError, ValueError):
    """A model configuration that cannot be built; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, as Hugging Face's `rope_scaling` describes it.

    `kind='llama3'` is Llama 3.1's wavelength-dependent scaling (factor,
    low/high frequency factors, original context length); `kind='linear'`
    divides every frequency by `factor` (position interpolation).
    """

    kind: str = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.kind not in ("llama3", "linear"):
            raise ConfigError(
                f"rope_scaling.kind={self.kind!r} is not supported; use 'llama3' or 'linear'"
            )
        if self.factor <= 0:
            raise ConfigError(f"rope_scaling.factor must be > 0, got {self.factor}")
        if self.kind == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ConfigError(
                "rope_scaling needs high_freq_factor > low_freq_factor > 0, got "
                f"{self.high_freq_factor} and {self.low_freq_factor}"
            )


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a LLaMA-family decoder.

    `vocab_size` is the true vocabulary (including an appended EOT token, if
    any); the embedding tables have `padded_vocab_size` rows (a multiple of
    `vocab_multiple`, for even sharding) and the padded columns of the logits
    are masked so they never win a softmax.
    """

    vocab_size: int
    dim: int  # D
    n_layers: int  # L
    n_heads: int  # N
    n_kv_heads: int  # K
    mlp_dim: int  # F
    head_dim: int | None = None  # H; None = dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    vocab_multiple: int = 128
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype
    logits_dtype: str = "float32"
    attention: str = "auto"  # auto | xla | pallas | cudnn (model/attention.py)
    remat: str = "none"
    # Layers per iteration of the layer scan: 1 keeps compile time flat in depth (an
    # 80-layer model compiles in about a second); 0 unrolls every layer (faster on CPU).
    scan_unroll: int = 1
    # LIMA's layer-scaled residual dropout: layer i of L drops with
    # residual_dropout * i / (L - 1); 0.0 disables it.
    residual_dropout: float = 0.0
    initializer_range: float = 0.02
    # Token ids carried for export and decoding (None = unknown).
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    eot_token_id: int | None = None
    # Low-rank adapters on a frozen base (None: every parameter trains).
    lora: LoraSpec | None = None

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):  # from JSON
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSpec(**self.lora))
        positive = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "mlp_dim",
                    "max_seq_len", "vocab_multiple")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}"
            )
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ConfigError(
                    f"model.n_heads={self.n_heads} must divide model.dim={self.dim} "
                    "when model.head_dim is not given"
                )
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be a positive even integer, got {self.head_dim}")
        for name in ("param_dtype", "dtype", "logits_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} is not one of {DTYPES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(
                f"model.attention={self.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
            )
        if self.attention == "pallas" and self.head_dim not in (64, 128):
            raise ConfigError(f"model.attention='pallas' supports head dims 64 and 128, not "
                              f"{self.head_dim}; use 'xla' (or 'auto')")
        if not isinstance(self.scan_unroll, int) or self.scan_unroll < 0:
            raise ConfigError(f"model.scan_unroll must be an integer >= 0, got {self.scan_unroll!r}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat={self.remat!r} is not one of {REMAT_POLICIES}")
        if not 0.0 <= self.residual_dropout < 1.0:
            raise ConfigError(
                f"model.residual_dropout must be in [0, 1), got {self.residual_dropout}"
            )
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ConfigError("model.norm_eps and model.rope_theta must be > 0")
        if self.eot_token_id is not None and not 0 <= self.eot_token_id < self.vocab_size:
            raise ConfigError(
                f"model.eot_token_id={self.eot_token_id} lies outside the vocabulary "
                f"(vocab_size={self.vocab_size})"
            )
        if self.lora is not None:
            self._check_lora(self.lora)

    def _check_lora(self, lora: LoraSpec) -> None:
        smallest = {"q": min(self.dim, self.n_heads * self.head_dim),
                    "k": min(self.dim, self.n_kv_heads * self.head_dim),
                    "o": min(self.dim, self.n_heads * self.head_dim),
                    "gate": min(self.dim, self.mlp_dim)}
        smallest.update(v=smallest["k"], up=smallest["gate"], down=smallest["gate"])
        for target in lora.targets:
            if lora.rank > smallest[target]:
                raise ConfigError(f"lora.rank={lora.rank} exceeds the dimensions of target {target!r} "
                                  f"(its smaller side is {smallest[target]})")
        outside = [i for i in lora.token_ids if not 0 <= i < self.vocab_size]
        if outside:
            raise ConfigError(f"lora.token_ids {outside} lie outside the vocabulary ({self.vocab_size})")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding tables: vocab_size rounded up to vocab_multiple."""
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    @property
    def frozen_param_dtype(self) -> str:
        """The dtype of the parameters that do not train under LoRA (norms, embedding tables;
        the projections too unless quantized): bfloat16 when `lora.base_dtype` asks for a
        smaller base, else param_dtype."""
        if self.lora is None or not self.lora.base_dtype:
            return self.param_dtype
        return "bfloat16"

    @property
    def group_size(self) -> int:
        """G: query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    def residual_dropout_rates(self) -> list[float]:
        """Per-layer residual dropout: 0.0 at layer 0 rising linearly to the max at L-1."""
        denominator = max(self.n_layers - 1, 1)
        return [self.residual_dropout * i / denominator for i in range(self.n_layers)]

    def replace(self, **changes: Any) -> "LlamaConfig":
        """A copy with `changes`; a head_dim that was derived from dim / n_heads
        is derived again when either of those changes."""
        reshaped = "dim" in changes or "n_heads" in changes
        if reshaped and "head_dim" not in changes and self.head_dim == self.dim // self.n_heads:
            changes["head_dim"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LlamaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {unknown}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LlamaConfig":
        return cls.from_dict(json.loads(text))
