"""The pure training and evaluation steps, the train state, and its shardings.

The train state is a plain dict (`step`, `params`, `opt_state`, `rng`) whose `params` is
the model's parameters as a nested dict (`nnx.to_pure_dict`), so optax and orbax see
ordinary pytrees. The model is rebuilt from them inside the jitted step
(`nnx.merge`), the functional style the Flax performance guide recommends.

The loss is the mean cross-entropy over the loss-mask tokens of the whole global batch:
with gradient accumulation each micro-batch's summed loss is divided by the global
token count, so A micro-batches give the gradient of the one large batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lima_jax import sharding as sharding_lib
from lima_jax.model.config import LlamaConfig
from lima_jax.model.llama import Llama, abstract_model

Batch = dict  # tokens, targets, segment_ids, positions: int32 [B, T]; loss_mask float32 [B, T]


class StepFunctions:
    """Everything static about a run's step: model structure, optimizer, accumulation."""

    def __init__(self, model_config: LlamaConfig, optimizer: optax.GradientTransformation,
                 schedule: optax.Schedule, grad_accum_steps: int = 1,
                 micro_batch_sharding: NamedSharding | None = None):
        self.model_config = model_config
        self.optimizer = optimizer
        self.schedule = schedule
        self.grad_accum_steps = grad_accum_steps
        self.micro_batch_sharding = micro_batch_sharding
        self.graphdef, self.abstract_state = nnx.split(abstract_model(model_config))

    # ------------------------------------------------------------------ model

    def model(self, params) -> Llama:
        """The model with `params` (a pure dict) as its parameters; usable under jit."""
        state = jax.tree.map(lambda x: x, self.abstract_state)  # fresh Variables
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def init_params(self, rng: jax.Array):
        model = Llama(self.model_config, rngs=nnx.Rngs(params=rng))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def init_state(self, rng: jax.Array, params=None) -> dict:
        """A fresh train state; `params` (pure dict) replaces random initialisation."""
        init_rng, dropout_rng = jax.random.split(rng)
        if params is None:
            params = self.init_params(init_rng)
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": self.optimizer.init(params),
            "rng": dropout_rng,
        }

    def matmul_param_count(self) -> int:
        """Parameters that take part in a matmul per token (for FLOPs and MFU): all but
        the norm scales, and the input embedding unless it doubles as the output layer."""
        pure = nnx.to_pure_dict(self.abstract_state)
        total = sum(x.size for x in jax.tree.leaves(pure) if x.ndim >= 2)
        if not self.model_config.tie_embeddings:
            total -= pure["embedding"].size
        return int(total)

    # ------------------------------------------------------------------ loss

    def _masked_ce(self, params, batch: Batch, rng, deterministic: bool):
        logits = self.model(params)(
            batch["tokens"], batch["positions"], batch["segment_ids"],
            dropout_rng=rng, deterministic=deterministic,
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        mask = batch["loss_mask"].astype(jnp.float32)
        return ce * mask, logits, mask

    def train_step(self, state: dict, batch: Batch):
        """One optimizer update on the global batch; returns (state, metrics)."""
        params = state["params"]
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        loss_tokens = jnp.maximum(batch["loss_mask"].astype(jnp.float32).sum(), 1.0)

        def loss_fn(p, micro_batch, rng):
            ce, _, _ = self._masked_ce(p, micro_batch, rng, deterministic=False)
            return ce.sum() / loss_tokens

        grad_fn = jax.value_and_grad(loss_fn)
        a = self.grad_accum_steps
        if a == 1:
            loss, grads = grad_fn(params, batch, step_rng)
        else:
            # Micro-batch i takes rows i, i+A, i+2A, ...: each device's block of rows
            # holds a share of every micro-batch, so no rows move between devices.
            micro = jax.tree.map(
                lambda x: x.reshape(x.shape[0] // a, a, *x.shape[1:]).swapaxes(0, 1), batch)

            def accumulate(carry, xs):
                loss_sum, grad_sum = carry
                micro_batch, index = xs
                if self.micro_batch_sharding is not None:
                    micro_batch = jax.lax.with_sharding_constraint(
                        micro_batch, self.micro_batch_sharding)
                loss_i, grads_i = grad_fn(params, micro_batch, jax.random.fold_in(step_rng, index))
                return (loss_sum + loss_i, jax.tree.map(jnp.add, grad_sum, grads_i)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (loss, grads), _ = jax.lax.scan(
                accumulate, (jnp.zeros((), jnp.float32), zeros), (micro, jnp.arange(a)))

        updates, opt_state = self.optimizer.update(grads, state["opt_state"], params)
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "rng": state["rng"],
        }
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": self.schedule(state["step"]),
            "loss_tokens": batch["loss_mask"].astype(jnp.float32).sum(),
            "tokens": (batch["segment_ids"] > 0).sum(),
        }
        return new_state, metrics

    def eval_step(self, params, batch: Batch) -> dict:
        """Sums over a batch: cross-entropy, loss tokens, correctly predicted loss tokens."""
        ce, logits, mask = self._masked_ce(params, batch, None, deterministic=True)
        correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32) * mask
        return {"ce_sum": ce.sum(), "tokens": mask.sum(), "correct": correct.sum()}

    # ------------------------------------------------------------------ shardings

    def state_shardings(self, mesh: Mesh, rules, abstract_train_state: dict) -> dict:
        """NamedShardings for every leaf of the train state: parameters and the optimizer's
        moments from the logical axes, everything else replicated."""
        replicated = NamedSharding(mesh, PartitionSpec())
        param_shardings = nnx.to_pure_dict(
            sharding_lib.state_shardings(self.abstract_state, mesh, rules))
        opt_shardings = optax.tree_map_params(
            self.optimizer, lambda _, s: s, abstract_train_state["opt_state"], param_shardings,
            transform_non_params=lambda _: replicated,
        )
        return {"step": replicated, "params": param_shardings, "opt_state": opt_shardings,
                "rng": replicated}
