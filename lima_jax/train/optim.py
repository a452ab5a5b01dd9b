"""LIMA's optimizer: optax AdamW (beta1 0.9, beta2 0.95, weight decay 0.1) with a learning
rate decaying linearly from 1e-5 to exactly 1e-6 at the run's last step, no warmup.

Weight-decay masks (`config.optimizer.weight_decay_mask`):
  all                     every parameter decays;
  matrices                everything but the RMSNorm scales (1-D), the default;
  matrices_no_embeddings  neither the norm scales nor the embedding and output tables.
"""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(o: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup (if any) to `learning_rate`, then linear decay that reaches
    `end_learning_rate` exactly at step `total_steps - 1`, the run's last update."""
    last = max(total_steps - 1, 1)
    warmup = min(o.warmup_steps, last)
    decay = optax.linear_schedule(o.learning_rate, o.end_learning_rate, max(last - warmup, 1))
    if not warmup:
        return decay
    ramp = optax.linear_schedule(0.0, o.learning_rate, warmup)
    return optax.join_schedules([ramp, decay], [warmup])


def weight_decay_mask(params, mask_name: str):
    """A pytree of bools like `params`: True where weight decay applies."""

    def decays(path, leaf) -> bool:
        names = {getattr(p, "key", getattr(p, "name", None)) for p in path}
        if mask_name == "all":
            return True
        if leaf.ndim <= 1 or "scale" in names and leaf.ndim <= 2:
            return False  # RMSNorm scales: [D], or [L, D] when stacked over layers
        if mask_name == "matrices_no_embeddings" and names & {"embedding", "lm_head"}:
            return False
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(o: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """AdamW with the schedule, the decay mask and optional global-norm clipping."""
    schedule = learning_rate_schedule(o, total_steps)
    adamw = optax.adamw(
        learning_rate=schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
        mask=lambda params: weight_decay_mask(params, o.weight_decay_mask),
    )
    if o.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw)
    return adamw
