"""Next-token choice for decoding: greedy or sampled with temperature, top-k, top-p (nucleus)
and the CTRL repetition penalty, applied in that order (penalty, temperature, top-k, top-p)
as `transformers` applies its logits processors. LIMA's defaults: p 0.9, temperature 0.7,
penalty 1.2 on previously generated tokens.

Each row samples with its own key (derived from the seed, the prompt id and the sample
index, then folded with the step), so a row's text does not depend on the batch around it.
Vocabulary padding columns (ids >= the true vocabulary size) are never chosen.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.errors import LimaError


class SamplingError(LimaError, ValueError):
    """A sampling setting out of range; the message names the option."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen; `temperature=0` means greedy (argmax).

    top_k: keep the k highest logits (0 = off); top_p: keep the smallest set of tokens whose
    probability reaches p (1.0 = off); repetition_penalty: CTRL's penalty on tokens already
    generated (1.0 = off), and on the prompt's tokens too when `penalize_prompt`.
    """

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.2
    penalize_prompt: bool = False

    def __post_init__(self):
        if self.temperature < 0:
            raise SamplingError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SamplingError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise SamplingError(f"--repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def greedy_config(cls, repetition_penalty: float = 1.0) -> SamplingConfig:
        return cls(temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=repetition_penalty)


def penalize_repetition(logits_bv: jax.Array, seen_bv: jax.Array, penalty: float) -> jax.Array:
    """CTRL (Keskar et al. 2019): a seen token's logit is divided by `penalty` when positive
    and multiplied by it when negative; unseen tokens are unchanged."""
    penalized = jnp.where(logits_bv > 0, logits_bv / penalty, logits_bv * penalty)
    return jnp.where(seen_bv, penalized, logits_bv)


def top_k_filter(logits_bv: jax.Array, k: int) -> jax.Array:
    """Logits below the k-th largest of their row set to -inf (ties with it are kept)."""
    if k <= 0 or k >= logits_bv.shape[-1]:
        return logits_bv
    kth_b1 = jax.lax.top_k(logits_bv, k)[0][:, -1:]
    return jnp.where(logits_bv < kth_b1, -jnp.inf, logits_bv)


def top_p_filter(logits_bv: jax.Array, p: float) -> jax.Array:
    """Nucleus: keep a token when the probability of the tokens ranked above it is < p,
    i.e. the smallest top set whose mass reaches p (always at least the top token)."""
    if p >= 1.0:
        return logits_bv
    sorted_bv = -jnp.sort(-logits_bv, axis=-1)
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    mass_above_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    keep_bv = mass_above_bv < p
    threshold_b1 = jnp.min(jnp.where(keep_bv, sorted_bv, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_bv < threshold_b1, -jnp.inf, logits_bv)


def processed_logits(logits_bv: jax.Array, seen_bv: jax.Array, config: SamplingConfig,
                     vocab_size: int) -> jax.Array:
    """float32 logits after the penalty, the vocabulary mask, temperature, top-k and top-p."""
    logits_bv = logits_bv.astype(jnp.float32)
    if config.repetition_penalty != 1.0:
        logits_bv = penalize_repetition(logits_bv, seen_bv, config.repetition_penalty)
    is_real_v = jnp.arange(logits_bv.shape[-1]) < vocab_size
    logits_bv = jnp.where(is_real_v, logits_bv, -jnp.inf)
    if config.greedy:
        return logits_bv
    logits_bv = logits_bv / config.temperature
    return top_p_filter(top_k_filter(logits_bv, config.top_k), config.top_p)


def next_tokens(logits_bv: jax.Array, seen_bv: jax.Array, keys_b: jax.Array, step: jax.Array,
                config: SamplingConfig, vocab_size: int) -> jax.Array:
    """int32 [B]: the chosen token of each row. keys_b: [B, 2] uint32 row keys."""
    logits_bv = processed_logits(logits_bv, seen_bv, config, vocab_size)
    if config.greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    step_keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(keys_b)
    return jax.vmap(jax.random.categorical)(step_keys, logits_bv).astype(jnp.int32)


def id_number(prompt_id: str) -> int:
    """A stable 31-bit number for a prompt id (CRC-32), to fold into its key."""
    return zlib.crc32(str(prompt_id).encode("utf-8")) & 0x7FFFFFFF


def row_keys(seed: int, prompt_ids: Sequence[str], samples: Sequence[int]) -> np.ndarray:
    """[B, 2] uint32 keys: fold_in(fold_in(PRNGKey(seed), id), sample) per row."""
    base = jax.random.PRNGKey(seed)
    ids = jnp.asarray([id_number(i) for i in prompt_ids], jnp.uint32)
    nums = jnp.asarray(list(samples), jnp.uint32)
    fold = jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(base, a), b))
    return np.asarray(fold(ids, nums))
