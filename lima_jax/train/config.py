"""The run configuration shared by every config file in `configs/`, and its validation.

`get_base_config()` holds LIMA's recipe (the paper's section 3; the README's Training) as
defaults; a config file starts from it, changes what its run needs, and `validate_config`
stops a wrong key or value before anything compiles, naming the key
(`config.optimizer.learning_rate`, ...); `make_run_mesh` does the same for a mesh the devices
do not fit. What `workdir`, `resume` and `overwrite` allow is `lima_jax.train.workdir`'s.
"""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import Mesh

from lima_jax.data.config import get_default_data_config, validate_data_config
from lima_jax.data.errors import DataError
from lima_jax.data.tokenizer import tokenizer_file_in
from lima_jax.errors import LimaError
from lima_jax.model.config import ATTENTION_IMPLEMENTATIONS, DTYPES, LORA_BASE_DTYPES, LORA_TARGETS, REMAT_POLICIES
from lima_jax.model.presets import PRESETS
from lima_jax.sharding import DEFAULT_RULES, MESH_AXES, ShardingError, batch_axes, make_mesh
from lima_jax.train.run_estimate import POLICIES as CHECKPOINT_POLICIES

WEIGHT_DECAY_MASKS = ("all", "matrices", "matrices_no_embeddings")
CHECKPOINT_SELECTION = CHECKPOINT_POLICIES  # lima_jax.train.run_estimate models both
SNAPSHOT_DTYPES = ("bfloat16", "float32")
# Shape fields a config may change on top of its preset (0 = the preset's value).
MODEL_SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "mlp_dim", "max_seq_len")


class RunConfigError(LimaError, ValueError):
    """A config key with a value that cannot work; the message names the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message, where=f"config.{key}")


def get_base_config() -> ml_collections.ConfigDict:
    """LIMA's recipe (65B values) as a ConfigDict; config files override what they need."""
    c = ml_collections.ConfigDict()
    c.workdir = ""  # where checkpoints, metrics and the resolved config go (required); one run each
    c.resume = False  # continue the workdir's run from its newest checkpoint that restores
    # Replace the run already in workdir (its checkpoints, metrics and summary are deleted);
    # with resume, start a new run only when the workdir holds no checkpoint to continue.
    c.overwrite = False
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "llama1-65b"
    # A Hugging Face directory or a lima_jax checkpoint (python -m lima_jax.convert hf-to-lima);
    # '' trains from random initialisation (the demo). The EOT row is added when missing.
    c.model.init_from = ""
    c.model.param_dtype = "float32"  # master weights and optimizer state
    c.model.dtype = "bfloat16"  # compute
    c.model.residual_dropout = 0.3  # LIMA: 0.3 at the top layer of 65B, 0.2 for smaller models
    c.model.remat = "none"  # none | full | dots | dots_no_batch
    c.model.attention = "auto"  # auto | xla | pallas | cudnn: lima_jax/model/attention.py
    c.model.scan_unroll = 1  # layers per scan iteration; 0 = unroll all (small models on CPU)
    for field in MODEL_SHAPE_FIELDS:
        setattr(c.model, field, 0)

    c.data = get_default_data_config()

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-5
    c.optimizer.end_learning_rate = 1e-6  # reached exactly at the run's last step
    c.optimizer.warmup_steps = 0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1
    # all: every parameter; matrices: not the RMSNorm scales (the usual practice, and the
    # default); matrices_no_embeddings: neither norms nor the embedding/output tables.
    c.optimizer.weight_decay_mask = "matrices"
    c.optimizer.clip_norm = 0.0  # global gradient-norm clipping; 0 = off (LIMA does not clip)

    # LoRA / QLoRA (README "LoRA and QLoRA"): low-rank adapters on a frozen base; only they (and
    # a new end of turn's rows) train and have optimizer state.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # 0 = full fine-tuning (the paper's)
    c.lora.alpha = 16.0  # adapter updates scale by alpha / rank
    c.lora.dropout = 0.05  # on each adapter's input
    c.lora.targets = ",".join(LORA_TARGETS)  # any of q,k,v,o,gate,up,down
    # How the frozen base is stored: '' = model.param_dtype, bfloat16, or quantized by qwix:
    # int8, int4, nf4 (QLoRA).
    c.lora.base_dtype = ""

    c.train = ml_collections.ConfigDict()
    c.train.grad_accum_steps = 1  # micro-batches per step; the loss is over the global batch
    # Tokens per chunk of the loss: > 0 computes the logits, loss and gradient through the output
    # layer that many tokens at a time, never the micro-batch's whole [B, T, V] logits (memory
    # for large vocabularies; lima_jax/train/loss.py); 0 = all at once.
    c.train.loss_chunk_size = 0
    c.train.max_steps = 0  # > 0 cuts the run short (the schedule still spans the full run)
    c.train.log_every = 1
    c.train.eval_data = ""  # held-out file (any data format) for held-out loss, '' = none
    c.train.eval_every_epochs = 1
    c.train.eval_at_start = True
    # Also answer the held-out requests greedily (KV-cache decoder) and score exact matches
    # against their reference answers, before and after training (single-host runs).
    c.train.eval_exact_match = False

    c.checkpoint = ml_collections.ConfigDict()
    # What the epochs kept for selection (keep_epochs_from..keep_epochs_to) store:
    # 'snapshot': their parameters only, in snapshot_dtype (WORKDIR/snapshots/<step>); the full train
    #   state (parameters, optimizer state, data iterator) is saved at every_steps, on SIGTERM and
    #   at the run's end, and only the latest is kept;
    # 'full_state': the full train state at every epoch end (the kept epochs and the latest stay).
    c.checkpoint.selection = "snapshot"
    c.checkpoint.snapshot_dtype = "bfloat16"  # bfloat16 | float32
    c.checkpoint.every_steps = 0  # also save the full train state every N steps; 0 = off
    c.checkpoint.keep_epochs_from = 5  # LIMA picks between epochs 5 and 10
    c.checkpoint.keep_epochs_to = 10
    c.checkpoint.async_save = True

    c.mesh = ml_collections.ConfigDict({axis: 1 for axis in MESH_AXES})
    c.mesh.fsdp = -1  # FSDP over every device by default
    c.sharding_rules = DEFAULT_RULES

    c.compile_only = False  # compile the step (for `topology`, if set), report memory, exit
    c.topology = ""  # a TPU slice such as v5p-128 for an ahead-of-time compile on this machine
    # The plan check's run-time model (lima_jax/train/run_estimate.py): the step time at this model
    # FLOPs utilisation, and the aggregate storage bandwidth in GB/s that checkpoints, the starting
    # weights and the export are written or read at.
    c.plan = ml_collections.ConfigDict()
    c.plan.mfu = 0.5
    c.plan.storage_gbps = 10.0

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = "auto"  # auto | yes | no (auto: when the environment says so)
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    return c


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise RunConfigError(key, message)


def validate_config(c: ml_collections.ConfigDict) -> None:
    """Raises RunConfigError (or the data package's DataError) naming the first bad key."""
    _check(bool(c.workdir) or c.compile_only, "workdir", "is required (--config.workdir=DIR)")
    m = c.model
    _check(m.preset in PRESETS, "model.preset", f"unknown preset {m.preset!r}; known: {', '.join(PRESETS)}")
    for key in ("param_dtype", "dtype"):
        _check(m[key] in DTYPES, f"model.{key}", f"{m[key]!r} is not one of {DTYPES}")
    _check(m.remat in REMAT_POLICIES, "model.remat", f"{m.remat!r} is not one of {REMAT_POLICIES}")
    _check(m.attention in ATTENTION_IMPLEMENTATIONS, "model.attention",
           f"{m.attention!r} is not one of {ATTENTION_IMPLEMENTATIONS}")
    _check(not (m.attention == "cudnn" and c.data.pack), "model.attention",
           "'cudnn' cannot keep packed examples apart: use 'pallas' or 'xla', or data.pack=False")
    _check(0.0 <= m.residual_dropout < 1.0, "model.residual_dropout", "must be in [0, 1)")
    _check(isinstance(m.scan_unroll, int) and m.scan_unroll >= 0, "model.scan_unroll",
           "must be an integer >= 0 (0 = unroll every layer)")
    for field in MODEL_SHAPE_FIELDS:
        _check(isinstance(m[field], int) and m[field] >= 0, f"model.{field}", "must be an integer >= 0")

    o = c.optimizer
    _check(o.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
    _check(0 <= o.end_learning_rate <= o.learning_rate, "optimizer.end_learning_rate",
           "must be in [0, optimizer.learning_rate]")
    _check(o.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
    for key in ("b1", "b2"):
        _check(0.0 <= o[key] < 1.0, f"optimizer.{key}", "must be in [0, 1)")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    _check(o.weight_decay_mask in WEIGHT_DECAY_MASKS, "optimizer.weight_decay_mask",
           f"{o.weight_decay_mask!r} is not one of {WEIGHT_DECAY_MASKS}")
    _check(o.clip_norm >= 0, "optimizer.clip_norm", "must be >= 0 (0 = off)")

    _validate_lora(c)

    t = c.train
    _check(t.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1")
    _check(c.data.global_batch_size % t.grad_accum_steps == 0, "train.grad_accum_steps",
           f"must divide data.global_batch_size={c.data.global_batch_size}")
    _check(isinstance(t.loss_chunk_size, int) and t.loss_chunk_size >= 0, "train.loss_chunk_size",
           "must be an integer >= 0 (tokens per loss chunk; 0 = off)")
    _check(t.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = the whole run)")
    _check(t.log_every >= 1, "train.log_every", "must be >= 1")
    _check(c.checkpoint.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
    _check(c.checkpoint.selection in CHECKPOINT_SELECTION, "checkpoint.selection",
           f"{c.checkpoint.selection!r} is not one of {CHECKPOINT_SELECTION}")
    _check(c.checkpoint.snapshot_dtype in SNAPSHOT_DTYPES, "checkpoint.snapshot_dtype",
           f"{c.checkpoint.snapshot_dtype!r} is not one of {SNAPSHOT_DTYPES}")
    _check(c.checkpoint.keep_epochs_from <= c.checkpoint.keep_epochs_to, "checkpoint.keep_epochs_from",
           "must be <= checkpoint.keep_epochs_to")
    for axis in MESH_AXES:
        _check(c.mesh[axis] == -1 or c.mesh[axis] >= 1, f"mesh.{axis}", "must be >= 1 or -1 (= the rest)")
    _check(sum(c.mesh[axis] == -1 for axis in MESH_AXES) <= 1, "mesh", "only one axis may be -1")
    _check(c.distributed.initialize in ("auto", "yes", "no"), "distributed.initialize",
           "must be auto, yes or no")
    for key in ("mfu", "storage_gbps"):
        _check(isinstance(c.plan[key], (int, float)) and not isinstance(c.plan[key], bool),
               f"plan.{key}", f"must be a number, got {c.plan[key]!r}")
    _check(0 < c.plan.mfu <= 1, "plan.mfu", f"must be in (0, 1], got {c.plan.mfu}")
    _check(c.plan.storage_gbps > 0, "plan.storage_gbps", f"must be > 0 (GB/s), got {c.plan.storage_gbps}")
    if c.compile_only:
        return  # an ahead-of-time compile needs shapes, not data nor a tokenizer
    use_model_tokenizer(c)
    try:
        validate_data_config(c.data)
    except DataError as err:
        raise RunConfigError(err.location.removeprefix("config."), f"{err.what} ({err.hint})") from None


def lora_targets(targets) -> tuple[str, ...]:
    """`config.lora.targets` ('q,k,v' or a sequence) as a tuple of target names."""
    if isinstance(targets, str):
        return tuple(t.strip() for t in targets.split(",") if t.strip())
    return tuple(targets)


def _validate_lora(c: ml_collections.ConfigDict) -> None:
    lora = c.lora
    _check(isinstance(lora.rank, int) and not isinstance(lora.rank, bool) and lora.rank >= 0, "lora.rank",
           f"must be an integer >= 0 (0 = full fine-tuning), got {lora.rank!r}")
    if not lora.rank:
        return
    _check(isinstance(lora.alpha, (int, float)) and lora.alpha > 0, "lora.alpha", f"must be > 0, got {lora.alpha!r}")
    _check(isinstance(lora.dropout, (int, float)) and 0 <= lora.dropout < 1, "lora.dropout",
           f"must be in [0, 1), got {lora.dropout!r}")
    targets = lora_targets(lora.targets)
    unknown = [t for t in targets if t not in LORA_TARGETS]
    _check(bool(targets) and not unknown, "lora.targets",
           f"{', '.join(unknown) or 'none given'}: the targets are {','.join(LORA_TARGETS)}")
    _check(lora.base_dtype in LORA_BASE_DTYPES, "lora.base_dtype",
           f"{lora.base_dtype!r} is not one of {', '.join(repr(d) for d in LORA_BASE_DTYPES)} "
           "(int8, int4 and nf4 quantize the frozen base with qwix)")
    _check(bool(c.model.init_from) or c.compile_only, "lora.rank",
           "LoRA adapts a pretrained model: set model.init_from (a Hugging Face directory or a "
           "lima_jax checkpoint)")


def use_model_tokenizer(c: ml_collections.ConfigDict) -> None:
    """``data.tokenizer = ''`` with ``model.init_from``: the checkpoint's own tokenizer (its
    tokenizer.json, else tokenizer.model, else original/tokenizer.model); one it lacks stops the
    run here, before any weight is read."""
    if c.data.tokenizer or c.data.train_tokenizer.vocab_size > 0 or not c.model.init_from:
        return
    if tokenizer_file_in(c.model.init_from) is None:
        raise RunConfigError("data.tokenizer", f"model.init_from {c.model.init_from} has no tokenizer.json, "
                             "tokenizer.model or original/tokenizer.model: give the tokenizer with "
                             "--config.data.tokenizer=PATH")
    c.data.tokenizer = str(c.model.init_from)


def make_run_mesh(c: ml_collections.ConfigDict) -> Mesh:
    """The run's mesh over every device; sizes the devices do not fit stop the run here, before
    any data or model is built, naming `config.mesh`."""
    try:
        return make_mesh(dict(c.mesh))
    except ShardingError as err:
        sizes = ", ".join(f"{axis}={c.mesh[axis]}" for axis in MESH_AXES)
        raise RunConfigError("mesh", f"{sizes} does not fit the {jax.device_count()} devices: "
                             f"{str(err).removeprefix('mesh: ')} (the sizes must multiply to the "
                             "device count; one of them may be -1 = the rest)") from None


def rows_per_device_check(c: ml_collections.ConfigDict, batch_devices: int) -> None:
    """Each micro-batch's rows must split evenly over the `batch_devices` devices that share
    the batch (`lima_jax.sharding.batch_devices`: the mesh axes of the config's `batch` rule)."""
    axes = batch_axes(tuple(c.sharding_rules))
    rows = c.data.global_batch_size // c.train.grad_accum_steps
    _check(rows % batch_devices == 0, "train.grad_accum_steps",
           f"a micro-batch of {rows} rows (data.global_batch_size / train.grad_accum_steps) "
           f"does not split over the {batch_devices} devices of the {' and '.join(axes)} mesh "
           f"{'axis' if len(axes) == 1 else 'axes'}")


def model_config_overrides(c: ml_collections.ConfigDict) -> dict:
    """LlamaConfig fields the run config sets on top of the preset or checkpoint."""
    m = c.model
    attention = m.attention
    if attention == "auto" and not c.data.pack and not c.get("topology") and \
            jax.default_backend() == "gpu":
        attention = "cudnn"  # rows of one example: cuDNN's fused kernel (model/attention.py)
    overrides = dict(param_dtype=m.param_dtype, dtype=m.dtype, residual_dropout=m.residual_dropout,
                     remat=m.remat, attention=attention, scan_unroll=m.scan_unroll)
    for field in MODEL_SHAPE_FIELDS:
        if m[field]:
            overrides[field] = m[field]
    return overrides


def total_flops_per_token(n_matmul_params: int, n_layers: int, seq_len: int, attn_width: int) -> float:
    """Training FLOPs per token: 6 per matmul parameter, plus causal attention
    (QK^T and PV: 4 * T * N*H per layer forward, halved by the mask, x3 with backward)."""
    return 6.0 * n_matmul_params + 6.0 * n_layers * seq_len * attn_width
