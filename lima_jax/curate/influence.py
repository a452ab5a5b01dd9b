"""Influence-based selection after LESS (Xia et al., 2024): pick the training examples whose
loss gradients point where a small target set's do.

1. Warm up: a few optimizer steps of the model on a random part of the pool (LESS warms up on
   5% of it), with the project's own train step, so gradients reflect the task format rather
   than random weights.
2. Features: each example's gradient of its mean token loss (on its trained tokens), computed
   for a whole batch at once with ``jax.vmap(jax.grad(...))``, then randomly projected to
   ``dim`` numbers (a fixed Gaussian matrix per parameter leaf, scaled by 1/sqrt(dim), so inner
   products are preserved in expectation: Johnson-Lindenstrauss) and normalised to unit length.
3. Score: cosine similarity between each training example's feature and the target set's mean
   gradient feature (LESS's per-task score with one task); the N highest are selected.

LESS projects LoRA gradients of a 7B model; here every parameter leaf matching
``param_filter`` (a regex on the leaf path, e.g. ``lm_head|layers``) is used, which is what a tiny
or small model can afford. The projection matrix holds (matched parameters x dim) floats: restrict
the filter on larger models.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lima_jax.curate.records import Record
from lima_jax.data import templates
from lima_jax.data.readers import ASSISTANT, USER, Turn
from lima_jax.data.tokenizer import Tokenizer
from lima_jax.model.config import LlamaConfig
from lima_jax.train.step import StepFunctions


def record_turns(record: Record) -> list[Turn]:
    """A record as alternating user / assistant turns (its history, prompt and response)."""
    texts = [*record.history, record.prompt] + ([record.response] if record.response else [])
    return [Turn((USER, ASSISTANT)[i % 2], t) for i, t in enumerate(texts)]


def encode_batch_arrays(records: Sequence[Record], tokenizer: Tokenizer, max_len: int,
                        template: str = "lima") -> dict[str, np.ndarray]:
    """One padded row per record, in the batch format of lima_jax.data.pipeline:
    tokens, targets, segment_ids, positions int32 [N, max_len]; loss_mask float32 [N, max_len].
    Longer examples are trimmed to max_len positions."""
    encoded = templates.encode_conversations([record_turns(r) for r in records], tokenizer, template)
    n = len(records)
    out = {k: np.zeros((n, max_len), np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
    out["tokens"][:] = out["targets"][:] = tokenizer.pad_id
    out["loss_mask"] = np.zeros((n, max_len), np.float32)
    for i, e in enumerate(encoded):
        ids, trained = e.ids[: max_len + 1], e.trained[: max_len + 1]
        t = len(ids) - 1
        out["tokens"][i, :t], out["targets"][i, :t] = ids[:-1], ids[1:]
        out["loss_mask"][i, :t] = trained[1:]
        out["segment_ids"][i, :t] = 1
        out["positions"][i, :t] = np.arange(t)
    return out


@functools.lru_cache(maxsize=8)
def _warmup_step(model_config: LlamaConfig, learning_rate: float):
    """(StepFunctions, jitted train step) for AdamW at a constant rate; cached so that repeated
    selections with one model compile once."""
    schedule = optax.constant_schedule(learning_rate)
    fns = StepFunctions(model_config, optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.1), schedule)
    return fns, jax.jit(fns.train_step)  # no donation: the caller keeps its starting params


def warm_up(model_config: LlamaConfig, params, arrays: dict[str, np.ndarray], steps: int,
            batch_size: int = 16, learning_rate: float = 1e-3, seed: int = 0):
    """``steps`` AdamW updates on random batches of ``arrays`` with the project's train step;
    returns the new parameters (a pure dict)."""
    fns, step = _warmup_step(model_config, learning_rate)
    state = fns.init_state(jax.random.key(seed), params)
    rng = np.random.default_rng(seed)
    n = len(arrays["tokens"])
    for _ in range(steps):
        rows = rng.choice(n, size=min(batch_size, n), replace=False)
        state, _ = step(state, {k: v[rows] for k, v in arrays.items()})
    return state["params"]


def _leaf_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


@dataclasses.dataclass
class GradientFeaturizer:
    """Per-example projected gradient features for one model (see the module docstring)."""

    model_config: LlamaConfig
    dim: int = 128
    seed: int = 0
    param_filter: str = ""  # regex on leaf paths ('' = every parameter)

    def _selected(self, params) -> list[bool]:
        pattern = re.compile(self.param_filter) if self.param_filter else None
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        chosen = [pattern is None or bool(pattern.search(_leaf_name(p))) for p, _ in leaves]
        if not any(chosen):
            names = ", ".join(_leaf_name(p) for p, _ in leaves)
            raise ValueError(f"param_filter {self.param_filter!r} matches no parameter (leaves: {names})")
        return chosen

    def projections(self, params) -> list[jax.Array | None]:
        """One Gaussian matrix [leaf size, dim] / sqrt(dim) per selected leaf (None otherwise)."""
        leaves = jax.tree.leaves(params)
        key = jax.random.key(self.seed)
        return [jax.random.normal(jax.random.fold_in(key, i), (leaf.size, self.dim), jnp.float32)
                / np.sqrt(self.dim) if use else None
                for i, (leaf, use) in enumerate(zip(leaves, self._selected(params), strict=True))]

    def __call__(self, params, arrays: dict[str, np.ndarray], batch_size: int = 16,
                 normalize: bool = True) -> np.ndarray:
        """float32 [N, dim]: the projected gradient of each row of ``arrays`` (unit length when
        ``normalize``; a row with no trained token gets a zero feature)."""
        compiled = _features_fn(self.model_config, self.dim)
        projections = self.projections(params)
        n = len(arrays["tokens"])
        out = []
        for start in range(0, n, batch_size):
            rows = {k: v[start:start + batch_size] for k, v in arrays.items()}
            short = batch_size - len(rows["tokens"])
            if short:  # pad the last batch to one compiled shape; padded rows are dropped below
                rows = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in rows.items()}
            out.append(np.asarray(compiled(params, projections, rows))[: batch_size - short])
        features = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        if normalize:
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            features = np.where(norms > 0, features / np.maximum(norms, 1e-30), 0.0)
        return features.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _features_fn(model_config: LlamaConfig, dim: int):
    """The jitted (params, projections, batch) -> [B, dim] function; cached per model and dim so
    that every featurizer of one model shares one compilation."""
    fns = StepFunctions(model_config, optax.identity(), optax.constant_schedule(0.0))

    def example_loss(params, row):
        batch = jax.tree.map(lambda x: x[None], row)  # [T] -> [1, T]
        logits = fns.model(params)(batch["tokens"], batch["positions"], batch["segment_ids"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        mask = batch["loss_mask"]
        return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)

    def features(params, projections, batch):
        grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0))(params, batch)  # leaves [B, ...]
        b = batch["tokens"].shape[0]
        out = jnp.zeros((b, dim), jnp.float32)
        for g, r in zip(jax.tree.leaves(grads), projections, strict=True):
            if r is not None:
                out = out + g.reshape(b, -1).astype(jnp.float32) @ r
        return out

    return jax.jit(features)


def influence_scores(train_features: np.ndarray, target_features: np.ndarray) -> np.ndarray:
    """float [N]: cosine similarity of each (unit) training feature to the target set's mean."""
    target = target_features.mean(axis=0)
    norm = np.linalg.norm(target)
    if norm == 0:
        raise ValueError("the target set's gradient features are all zero (no trained tokens?)")
    return train_features @ (target / norm)


@dataclasses.dataclass
class InfluenceResult:
    selected: list[int]  # indices into the pool, highest score first
    scores: np.ndarray  # float [N] for the whole pool


def select_by_influence(pool: Sequence[Record], target: Sequence[Record], n: int, *,
                        tokenizer: Tokenizer, model_config: LlamaConfig, params,
                        max_len: int = 256, warmup_steps: int = 10, warmup_fraction: float = 0.05,
                        batch_size: int = 16, learning_rate: float = 1e-3, dim: int = 128,
                        param_filter: str = "", seed: int = 0) -> InfluenceResult:
    """The ``n`` pool records most similar in gradient to ``target`` (see the module docstring).

    ``params`` are the starting parameters (a pure dict, e.g. ``StepFunctions.init_params``);
    they are warmed up for ``warmup_steps`` steps on a random ``warmup_fraction`` of the pool
    (at least one batch) before the features are taken.
    """
    if not 0 < n <= len(pool):
        raise ValueError(f"n={n} must be between 1 and the pool size {len(pool)}")
    if not target:
        raise ValueError("the target set is empty")
    pool_arrays = encode_batch_arrays(pool, tokenizer, max_len)
    target_arrays = encode_batch_arrays(target, tokenizer, max_len)
    if warmup_steps > 0:
        rng = np.random.default_rng(seed)
        size = max(batch_size, round(warmup_fraction * len(pool)))
        rows = rng.choice(len(pool), size=min(size, len(pool)), replace=False)
        params = warm_up(model_config, params, {k: v[rows] for k, v in pool_arrays.items()},
                         warmup_steps, batch_size, learning_rate, seed)
    featurize = GradientFeaturizer(model_config, dim, seed, param_filter)
    scores = influence_scores(featurize(params, pool_arrays, batch_size),
                              featurize(params, target_arrays, batch_size))
    order = np.argsort(-scores, kind="stable")
    return InfluenceResult([int(i) for i in order[:n]], scores)
