"""The pure training and evaluation steps, the train state, its shardings, and the one
sharded step every caller compiles.

The train state is a plain dict (`step`, `params`, `opt_state`, `rng`) whose `params` is
the model's parameters as a nested dict (`nnx.to_pure_dict`), so optax and orbax see
ordinary pytrees. The model is rebuilt from them inside the jitted step
(`nnx.merge`), the functional style the Flax performance guide recommends.

The loss is the mean cross-entropy over the loss-mask tokens of the whole global batch:
with gradient accumulation each micro-batch's summed loss is divided by the global
token count, so A micro-batches give the gradient of the one large batch. With
`loss_chunk_size` (config `train.loss_chunk_size`) the loss, its gradient through the output
projection and the held-out sums are computed a chunk of tokens at a time
(`lima_jax.train.loss`), so the step holds no [B, T, V] logits. A step whose
loss or gradient norm is not finite applies no update (the state is kept as it was) and
says so in its metrics (`finite`), so the loop can stop with finite weights (README
"Training").

`compile_train_step(config, model_config, mesh, total_steps)` builds the step a run config
gives, sharded: the state shape-first (`jax.eval_shape`), its shardings from the logical
axes, batch rows over the `batch` rule's mesh axes, `jax.jit` with those in/out shardings
and the state donated, traced under the mesh and rules (the Pallas kernels place themselves
from them). The trainer, the pod plan check (abstract inputs for a TPU slice), the
benchmark and the tests all compile this one step, so the plan check measures exactly the
step the trainer runs.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lima_jax import sharding as sharding_lib
from lima_jax.model import lora as lora_lib
from lima_jax.model.config import LlamaConfig
from lima_jax.model.llama import Llama, abstract_model
from lima_jax.train.config import rows_per_device_check
from lima_jax.train.loss import chunked_ce_sums
from lima_jax.train.optim import learning_rate_schedule, make_optimizer
from lima_jax.train.state_sizes import matmul_parameters

Batch = dict  # tokens, targets, segment_ids, positions: int32 [B, T]; loss_mask float32 [B, T]


class StepFunctions:
    """Everything static about a run's step: model structure, optimizer, accumulation."""

    def __init__(self, model_config: LlamaConfig, optimizer: optax.GradientTransformation,
                 schedule: optax.Schedule, grad_accum_steps: int = 1,
                 micro_batch_sharding: NamedSharding | None = None, loss_chunk_size: int = 0):
        self.model_config = model_config
        self.optimizer = optimizer
        self.schedule = schedule
        self.grad_accum_steps = grad_accum_steps
        self.micro_batch_sharding = micro_batch_sharding
        self.loss_chunk_size = loss_chunk_size  # tokens per loss chunk; 0 = whole logits
        self.graphdef, self.abstract_state = nnx.split(abstract_model(model_config))
        # LoRA: only the adapters (and new token rows) have gradients and optimizer state.
        self.lora = model_config.lora is not None

    def trainable(self, params: dict) -> dict:
        """The parameters the optimizer updates: all of them, or under LoRA the adapters and
        token rows (`lima_jax.model.lora.split_trainable`)."""
        return lora_lib.trainable(params) if self.lora else params

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
            "opt_state": self.optimizer.init(self.trainable(params)),
            "rng": dropout_rng,
        }

    def matmul_param_count(self) -> int:
        """Parameters that take part in a matmul per token (for FLOPs and MFU): all but
        the norm scales, and the input embedding unless it doubles as the output layer."""
        return matmul_parameters(self.model_config)  # the base model's, under LoRA too

    # ------------------------------------------------------------------ loss

    def _masked_ce(self, params, batch: Batch, rng, deterministic: bool):
        logits = self.model(params)(
            batch["tokens"], batch["positions"], batch["segment_ids"],
            dropout_rng=rng, deterministic=deterministic,
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        mask = batch["loss_mask"].astype(jnp.float32)
        return ce * mask, logits, mask

    def _loss_sums(self, params, batch: Batch, rng, deterministic: bool,
                   count_correct: bool = False) -> dict:
        """The masked cross-entropy summed over `batch` ('ce_sum'), and with `count_correct`
        the loss tokens predicted right ('correct'): from the whole logits, or chunk by chunk
        (`loss_chunk_size`, lima_jax.train.loss) without ever holding them."""
        if not self.loss_chunk_size:
            ce, logits, mask = self._masked_ce(params, batch, rng, deterministic)
            sums = {"ce_sum": ce.sum()}
            if count_correct:
                hits = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
                sums["correct"] = (hits * mask).sum()
            return sums
        model = self.model(params)
        h_btd = model.hidden_states(
            batch["tokens"], batch["positions"], batch["segment_ids"],
            dropout_rng=rng, deterministic=deterministic,
        )
        return chunked_ce_sums(h_btd, model.output_weight(), batch["targets"], batch["loss_mask"],
                               config=self.model_config, chunk_tokens=self.loss_chunk_size,
                               count_correct=count_correct, token_columns=model.token_columns())

    def train_step(self, state: dict, batch: Batch):
        """One optimizer update on the global batch; returns (state, metrics). Under LoRA the
        gradient is taken for the adapters alone: the frozen base gets none."""
        if self.lora:
            params, frozen = lora_lib.split_trainable(state["params"])
        else:
            params, frozen = state["params"], None
        step_rng = jax.random.fold_in(state["rng"], state["step"])
        loss_tokens = jnp.maximum(batch["loss_mask"].astype(jnp.float32).sum(), 1.0)

        def loss_fn(p, micro_batch, rng):
            full = lora_lib.join(p, frozen) if self.lora else p
            return self._loss_sums(full, micro_batch, rng, deterministic=False)["ce_sum"] / loss_tokens

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

        grad_norm = optax.tree.norm(grads)
        # The NaN/inf guard: a non-finite loss or gradient leaves the state as it was, so the
        # weights in memory (and every checkpoint saved from them) stay finite. A branch on the
        # device rather than a per-element select: the update still runs in place in the donated
        # buffers (a select took half the parameters' size more temporary memory, measured on
        # CPU), and no value goes to the host.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def apply_update(current):
            current_params, opt_state, step = current
            updates, opt_state = self.optimizer.update(grads, opt_state, current_params)
            return optax.apply_updates(current_params, updates), opt_state, step + 1

        def keep(current):
            return current

        new_params, new_opt_state, new_step = jax.lax.cond(
            finite, apply_update, keep, (params, state["opt_state"], state["step"]))
        if self.lora:
            new_params = lora_lib.join(new_params, frozen)
        new_state = {"step": new_step, "params": new_params, "opt_state": new_opt_state,
                     "rng": state["rng"]}
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": self.schedule(state["step"]),
            "loss_tokens": batch["loss_mask"].astype(jnp.float32).sum(),
            "tokens": (batch["segment_ids"] > 0).sum(),
            "finite": finite,  # False: this step's update was not applied
        }
        return new_state, metrics

    def eval_step(self, params, batch: Batch) -> dict:
        """Sums over a batch: cross-entropy, loss tokens, correctly predicted loss tokens."""
        sums = self._loss_sums(params, batch, None, deterministic=True, count_correct=True)
        return {"ce_sum": sums["ce_sum"], "tokens": batch["loss_mask"].astype(jnp.float32).sum(),
                "correct": sums["correct"]}

    # ------------------------------------------------------------------ shardings

    def state_shardings(self, mesh: Mesh, rules, abstract_train_state: dict) -> dict:
        """NamedShardings for every leaf of the train state: parameters and the optimizer's
        moments from the logical axes, everything else replicated."""
        replicated = NamedSharding(mesh, PartitionSpec())
        param_shardings = nnx.to_pure_dict(
            sharding_lib.state_shardings(self.abstract_state, mesh, rules))
        opt_shardings = optax.tree_map_params(
            self.optimizer, lambda _, s: s, abstract_train_state["opt_state"], self.trainable(param_shardings),
            transform_non_params=lambda _: replicated,
        )
        return {"step": replicated, "params": param_shardings, "opt_state": opt_shardings,
                "rng": replicated}


# ---------------------------------------------------------------------- the sharded step

BATCH_FIELDS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class CompiledTrainStep:
    """A train step compiled for one set of input shapes and shardings."""

    lowered: jax.stages.Lowered
    executable: jax.stages.Compiled
    compile_s: float  # lowering and compiling, clocked apart from any step

    def __call__(self, state: dict, batch: Batch):
        """(new state, metrics); `state` is donated, so use only the one returned."""
        return self.executable(state, batch)

    def memory_analysis(self):
        """Per-device bytes of the compiled step (None where the backend does not say)."""
        return self.executable.memory_analysis()


@dataclasses.dataclass(frozen=True)
class ShardedTrainStep:
    """The run's train and eval steps, jitted with their shardings over `mesh`."""

    fns: StepFunctions
    mesh: Mesh
    rules: tuple
    rows: NamedSharding  # batch rows over the `batch` rule's mesh axes
    abstract_state: dict  # ShapeDtypeStructs of the train state, each with its sharding
    state_shardings: dict
    train_step: jax.stages.Wrapped  # (state, batch) -> (state, metrics), the state donated
    eval_step: jax.stages.Wrapped  # (params, batch) -> sums (StepFunctions.eval_step)

    @property
    def param_shardings(self) -> dict:
        """Where each parameter lives (starting weights are loaded straight into these)."""
        return self.state_shardings["params"]

    def init_state(self, rng: jax.Array, params=None) -> dict:
        """A fresh train state made directly in its shardings (no leaf is ever whole on one
        device); `params` (a pure dict placed in `param_shardings`) replaces random init."""
        if params is None:
            return jax.jit(self.fns.init_state, out_shardings=self.state_shardings)(rng)
        return jax.jit(self.fns.init_state, in_shardings=(None, self.param_shardings),
                       out_shardings=self.state_shardings)(rng, params)

    def abstract_batch(self, rows: int, length: int) -> Batch:
        """ShapeDtypeStructs of a [rows, length] batch in the rows' sharding, to compile
        without data (the pod plan check)."""
        return {k: jax.ShapeDtypeStruct((rows, length), "float32" if k == "loss_mask" else "int32",
                                        sharding=self.rows)
                for k in BATCH_FIELDS}

    def lower(self, state: dict, batch: Batch) -> jax.stages.Lowered:
        """The step traced for these (concrete or abstract) inputs, under the mesh and rules."""
        with sharding_lib.activation_context(self.mesh, self.rules):
            return self.train_step.lower(state, batch)

    def compile(self, state: dict, batch: Batch) -> CompiledTrainStep:
        """The step compiled ahead of time for the shapes and shardings of `state` and
        `batch` (arrays or ShapeDtypeStructs), with the time it took."""
        start = time.perf_counter()
        lowered = self.lower(state, batch)
        executable = lowered.compile()
        return CompiledTrainStep(lowered, executable, time.perf_counter() - start)

    def __call__(self, state: dict, batch: Batch):
        """One step, compiled on first use for these shapes; `state` is donated."""
        with sharding_lib.activation_context(self.mesh, self.rules):
            return self.train_step(state, batch)

    def evaluate(self, params, batch: Batch) -> dict:
        """Held-out sums over one batch (`StepFunctions.eval_step`), traced like the step."""
        with sharding_lib.activation_context(self.mesh, self.rules):
            return self.eval_step(params, batch)


def compile_train_step(config: ml_collections.ConfigDict, model_config: LlamaConfig, mesh: Mesh,
                       total_steps: int) -> ShardedTrainStep:
    """The train step of run `config` for `model_config` over `mesh`, jitted with its shardings.

    From the config: the optimizer and its schedule over `total_steps` (only the learning-rate
    values depend on it), the sharding rules, the micro-batches per step and the loss chunk
    size; a micro-batch that does not split over the devices sharing the batch stops here,
    naming the key.
    `.compile(state, batch)` lowers and compiles it under the mesh and rules."""
    rules = tuple(config.sharding_rules)
    rows_per_device_check(config, sharding_lib.batch_devices(mesh, rules))
    rows = sharding_lib.batch_sharding(mesh, rules)
    fns = StepFunctions(model_config, make_optimizer(config.optimizer, total_steps),
                        learning_rate_schedule(config.optimizer, total_steps),
                        config.train.grad_accum_steps, micro_batch_sharding=rows,
                        loss_chunk_size=config.train.loss_chunk_size)
    abstract_state = jax.eval_shape(fns.init_state, jax.random.PRNGKey(0))
    state_shardings = fns.state_shardings(mesh, rules, abstract_state)
    train_step = jax.jit(fns.train_step, in_shardings=(state_shardings, rows),
                         out_shardings=(state_shardings, None), donate_argnums=0)
    eval_step = jax.jit(fns.eval_step, in_shardings=(state_shardings["params"], rows))
    return ShardedTrainStep(
        fns=fns, mesh=mesh, rules=rules, rows=rows,
        abstract_state=sharding_lib.abstract_with_shardings(abstract_state, state_shardings),
        state_shardings=state_shardings, train_step=train_step, eval_step=eval_step)
