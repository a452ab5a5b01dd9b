"""Batched generation: one jitted prefill over right-padded prompts, then the whole decode loop
in one jitted `lax.while_loop` over a preallocated KV cache, each row stopping at a stop id
(EOT, EOS) or at `max_new_tokens`.

Shapes are bucketed (prompt length T to a power of two, at least 16) so a run compiles a
handful of times, not once per batch. Rows never interact: a batch gives what each prompt
gives alone. With a mesh, parameters and cache are sharded from the model's logical axes
(tensor parallel over heads, KV heads and MLP under the default rules) and batch rows go
over the data axes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from lima_jax import sharding as sharding_lib
from lima_jax.decode.sampling import SamplingConfig, next_tokens, row_keys
from lima_jax.errors import InputError
from lima_jax.model.kv_cache import CACHE_AXES, KVCache, decode_step, prefill
from lima_jax.model.llama import Llama

# Per-row state of the loop: still running, or why it stopped (codes >= STOP_ID mean
# stop_ids[code - STOP_ID] was produced).
RUNNING, LENGTH, CONTEXT, STOP_ID = 0, 1, 2, 3
MIN_PROMPT_BUCKET = 16


def prompt_bucket(length: int) -> int:
    """The padded prompt length T for a longest prompt of `length`: a power of two >= 16."""
    return max(MIN_PROMPT_BUCKET, 1 << max(length - 1, 0).bit_length())


@dataclasses.dataclass
class Generation:
    """One row's result. tokens: the new ids, without the stop id; stop_reason: 'eot', 'eos',
    'stop:<id>' (another stop id), 'length' (max_new_tokens) or 'context' (max_seq_len)."""

    tokens: list[int]
    stop_reason: str
    stop_id: int | None = None


@dataclasses.dataclass
class Timing:
    """Seconds spent in the last `generate` call: compiles (first call per shape), prefill,
    the decode loop, and the number of decode-loop iterations it ran."""

    compile_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    steps: int = 0


class Generator:
    """Generates from a `Llama` with a KV cache; `generate(prompts, ...)` -> [Generation].

    mesh: optional `jax.sharding.Mesh` (`lima_jax.sharding.make_mesh`); the parameters
    are placed by `rules` (already-placed parameters are not moved). compiler_options: XLA
    options for both compiles (tests pass {'xla_backend_optimization_level': 0} to halve
    compile time on CPU).
    """

    def __init__(self, model: Llama, *, mesh: Mesh | None = None, rules=sharding_lib.DEFAULT_RULES,
                 compiler_options: dict | None = None):
        self.config = model.config
        self.compiler_options = compiler_options
        self.mesh, self.rules = mesh, rules
        self.graphdef, state = nnx.split(model)
        if mesh is not None:
            state = jax.device_put(state, sharding_lib.state_shardings(state, mesh, rules))
        self.state = state
        self.timing = Timing()
        self._compiled: dict = {}

    # ------------------------------------------------------------------ shardings
    def _cache_sharding(self, shape) -> NamedSharding | None:
        if self.mesh is None:
            return None
        spec = sharding_lib.logical_to_spec(CACHE_AXES, shape, self.mesh, self.rules)
        return NamedSharding(self.mesh, spec)

    def _rows(self, array: np.ndarray) -> jax.Array:
        """Puts a host array with a leading batch axis on device (rows over the data axes)."""
        if self.mesh is None:
            return jnp.asarray(array)
        spec = sharding_lib.logical_to_spec(("batch",) + (None,) * (array.ndim - 1), array.shape,
                                            self.mesh, self.rules)
        return jax.device_put(array, NamedSharding(self.mesh, spec))

    def _constrain(self, cache: KVCache) -> KVCache:
        sharding = self._cache_sharding(cache.k.shape)
        if sharding is None:
            return cache
        return KVCache(*(jax.lax.with_sharding_constraint(c, sharding) for c in cache))

    # ------------------------------------------------------------------ jitted pieces
    def _prefill(self, state, tokens_bt, lengths_b, cache_length):
        model = nnx.merge(self.graphdef, state)
        logits_bv, cache = prefill(model, tokens_bt, cache_length, last_b=lengths_b - 1)
        return logits_bv, self._constrain(cache)

    def _decode_loop(self, state, logits_bv, cache, lengths_b, keys_b, seen_bv, stop_ids,
                     sampling: SamplingConfig, max_new_tokens: int, max_positions: int):
        """The decode loop: (tokens [B, max_new_tokens] (-1 after a row stops), num [B],
        reason [B], steps run)."""
        model = nnx.merge(self.graphdef, state)
        b = logits_bv.shape[0]
        rows_b = jnp.arange(b)

        def cond(carry):
            step, reason_b = carry[0], carry[-1]
            return (step < max_new_tokens) & jnp.any(reason_b == RUNNING)

        def body(carry):
            step, logits_bv, cache, seen_bv, out_bn, num_b, reason_b = carry
            token_b = next_tokens(logits_bv, seen_bv, keys_b, step, sampling, self.config.vocab_size)
            running_b = reason_b == RUNNING
            hits_bs = token_b[:, None] == stop_ids[None, :]
            hit_b = jnp.any(hits_bs, axis=-1)
            keep_b = running_b & ~hit_b
            out_bn = out_bn.at[:, step].set(jnp.where(keep_b, token_b, -1))
            num_b = num_b + keep_b
            seen_bv = seen_bv.at[rows_b, token_b].set(seen_bv[rows_b, token_b] | keep_b)
            position_b = lengths_b + step  # where token_b sits
            reason_b = jnp.where(running_b & hit_b, STOP_ID + jnp.argmax(hits_bs, axis=-1), reason_b)
            reason_b = jnp.where((reason_b == RUNNING) & (num_b >= max_new_tokens), LENGTH, reason_b)
            reason_b = jnp.where((reason_b == RUNNING) & (position_b + 1 >= max_positions),
                                 CONTEXT, reason_b)
            logits_bv, cache = decode_step(model, token_b, position_b, cache)
            return step + 1, logits_bv, self._constrain(cache), seen_bv, out_bn, num_b, reason_b

        carry = (jnp.int32(0), logits_bv, cache, seen_bv,
                 jnp.full((b, max_new_tokens), -1, jnp.int32), jnp.zeros((b,), jnp.int32),
                 jnp.zeros((b,), jnp.int32))
        step, _, _, _, out_bn, num_b, reason_b = jax.lax.while_loop(cond, body, carry)
        return out_bn, num_b, reason_b, step

    def _compile(self, kind: str, fn, *args, static=()):
        """Ahead-of-time compiles `fn` for these argument shapes once, timing the compile."""
        key = (kind, static, tuple((a.shape, a.dtype) for a in jax.tree.leaves(args)))
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = jax.jit(fn).lower(*args).compile(self.compiler_options)
            self.timing.compile_s += time.perf_counter() - start
        return self._compiled[key]

    # ------------------------------------------------------------------ public
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        sampling: SamplingConfig | None = None,
        max_new_tokens: int = 2048,
        stop_ids: Sequence[int] = (),
        seed: int = 0,
        prompt_ids: Sequence[str] | None = None,
        samples: Sequence[int] | None = None,
        stop_names: dict[int, str] | None = None,
    ) -> list[Generation]:
        """Generates up to `max_new_tokens` for each prompt (token ids, BOS included).

        Row b samples with the key of (seed, prompt_ids[b], samples[b]) (default: its
        index and 0); `sampling` defaults to LIMA's. `stop_names` names stop ids in `stop_reason` (default 'stop:<id>').
        """
        config = self.config
        sampling = SamplingConfig() if sampling is None else sampling
        if not prompts:
            return []
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        lengths = np.asarray([len(p) for p in prompts], np.int32)
        for i, n in enumerate(lengths):
            if n == 0:
                raise InputError(f"prompt {i} is empty; a prompt needs at least one token (BOS)")
            if n >= config.max_seq_len:
                raise InputError(
                    f"prompt {prompt_ids[i] if prompt_ids else i} has {n} tokens, which leaves no "
                    f"room to generate within the model's max_seq_len={config.max_seq_len}")
        b, t = len(prompts), prompt_bucket(int(lengths.max()))
        tokens = np.zeros((b, t), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
        cache_length = min(t + max_new_tokens, max(config.max_seq_len, t))
        prompt_ids = [str(i) for i in range(b)] if prompt_ids is None else list(prompt_ids)
        samples = [0] * b if samples is None else list(samples)
        keys = row_keys(seed, prompt_ids, samples)
        seen = np.zeros((b, config.padded_vocab_size), bool)
        if sampling.penalize_prompt:
            for i, p in enumerate(prompts):
                seen[i, np.asarray(p)] = True
        stops = np.asarray(list(stop_ids) or [-1], np.int32)

        self.timing = Timing()
        tokens_d, lengths_d = self._rows(tokens), self._rows(lengths)
        prefill_fn = self._compile("prefill", functools.partial(self._prefill, cache_length=cache_length),
                                   self.state, tokens_d, lengths_d, static=(cache_length,))
        start = time.perf_counter()
        logits, cache = prefill_fn(self.state, tokens_d, lengths_d)
        jax.block_until_ready(logits)
        self.timing.prefill_s = time.perf_counter() - start

        static = (sampling, max_new_tokens, config.max_seq_len)
        loop = functools.partial(self._decode_loop, sampling=sampling, max_new_tokens=max_new_tokens,
                                 max_positions=config.max_seq_len)
        args = (self.state, logits, cache, lengths_d, self._rows(keys), self._rows(seen),
                jnp.asarray(stops))
        decode_fn = self._compile("decode", loop, *args, static=static)
        start = time.perf_counter()
        out, num, reason, steps = jax.device_get(decode_fn(*args))
        self.timing.decode_s = time.perf_counter() - start
        self.timing.steps = int(steps)
        return [self._result(out[i], int(num[i]), int(reason[i]), stops, stop_names or {})
                for i in range(b)]

    @staticmethod
    def _result(out_n, num, reason, stops, stop_names) -> Generation:
        tokens = [int(x) for x in out_n[:num]]
        if reason == LENGTH:
            return Generation(tokens, "length")
        if reason == CONTEXT:
            return Generation(tokens, "context")
        if reason >= STOP_ID:
            stop_id = int(stops[reason - STOP_ID])
            return Generation(tokens, stop_names.get(stop_id, f"stop:{stop_id}"), stop_id)
        raise AssertionError(f"row still running after the loop (reason code {reason})")
