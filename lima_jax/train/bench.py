"""Training benchmark: tokens/s of our jitted train step against transformers + torch AdamW.

Ours: the step ``lima_jax.train`` runs, from ``compile_train_step`` (state and batch shardings
from the config's mesh over all local devices, the state donated), compiled ahead of time under
the mesh and rules with the compile clocked apart, one untimed warm-up step, then timed steps,
each blocked on its outputs. Baseline, same process, same shapes:
``transformers.LlamaForCausalLM`` built from the same LlamaConfig (``_hf_config_dict``;
attention "sdpa", torch's fastest on CPU), eager float32, ``torch.optim.AdamW`` (fused when
available) with the config's betas, eps, weight decay (not on norm scales, like the
``matrices`` mask) and gradient clipping; two untimed warm-up steps. The baseline is timed with
all cores and with 1 thread and keeps the faster: on a loaded 2-core machine torch's OpenMP
barriers can make 2 threads 100x slower than 1 on small models. Ours and the baseline run in
alternating blocks so that load from other work on a shared machine falls on both. Both see the
same synthetic batch: random tokens, full rows (one segment, every token in the loss). Residual
dropout is 0 in both (transformers' LLaMA has no residual dropout), so like is compared with
like. Figure: tokens (B*T) per second of the median step; MFU against ``lima_jax.chips``' peak
where the chip's is known (accelerators), null on CPU. Without ``--config`` it measures the CPU
demo and a ~110M-parameter config (preset 100m, seq 256, batch 2, float32 compute: bf16 matmuls
are slower on most CPUs), and that config again with LoRA (``config.lora``: rank 8 on all seven
projections, alpha 16, dropout 0.05, float32 base). With LoRA the baseline is the same
transformers model wrapped by ``peft.get_peft_model`` (a ``LoraConfig`` of the same rank, alpha,
dropout and target modules), with torch AdamW over the LoRA parameters only (those that require
a gradient), as our step updates the adapters only.
``--override KEY=VALUE`` changes a config key as ``--config.KEY=VALUE`` does for a run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from lima_jax import cli
from lima_jax import sharding as sharding_lib
from lima_jax.chips import peak_flops_per_device
from lima_jax.errors import LimaError
from lima_jax.model import LlamaConfig, get_preset
from lima_jax.train.aot import model_flops_per_token
from lima_jax.train.config import (
    get_base_config,
    model_config_overrides,
    validate_config,
)
from lima_jax.train.step import compile_train_step

_REPO = pathlib.Path(__file__).resolve().parents[2]
GOAL_RATIO = 1.5
VERSIONS = ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft")  # stamped by lima_jax.bench
_100M = ("model.preset=100m", "model.dtype=float32", "model.scan_unroll=0", "data.max_len=256",
         "data.global_batch_size=2")
# (label, config file or None for get_base_config(), overrides, default timed steps per side).
DEFAULT_MEASUREMENTS = (
    ("demo", str(_REPO / "configs" / "demo.py"), (), 20),
    ("100m", None, _100M, 6),
    ("100m-lora", None, (*_100M, "lora.rank=8", "lora.alpha=16.0", "lora.dropout=0.05",
                         "lora.targets=q,k,v,o,gate,up,down"), 6),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a config file (configs/*.py); default: demo and 100m")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key, e.g. model.preset=100m (repeatable)")
    parser.add_argument("--only", default="",
                        help="comma-separated labels of the default measurements to run "
                             f"({', '.join(m[0] for m in DEFAULT_MEASUREMENTS)}); default: all")
    parser.add_argument("--steps", type=int,
                        help="timed steps per side (default: 20 demo, 6 100m and 100m-lora, 10 --config)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating blocks the timed steps are split into")
    parser.add_argument("--torch-threads", default="",
                        help="comma-separated torch thread counts to time, the fastest is the "
                             "baseline (default: all cores and 1)")


def load_config(path: str | None, overrides=()) -> ml_collections.ConfigDict:
    """The config file's get_config() (or the base config), with KEY=VALUE overrides parsed as
    ``--config.KEY=VALUE`` is (`lima_jax.cli.load_config`); a bad key or value is a LimaError."""
    config = cli.load_config(path or get_base_config(), overrides)
    # A copy that reads no data: compile_only skips the workdir and data checks.
    checked = ml_collections.ConfigDict(config.to_dict())
    checked.compile_only, checked.data.path = True, ""
    validate_config(checked)
    return config


def model_config(config: ml_collections.ConfigDict) -> LlamaConfig:
    """The run's LlamaConfig without a tokenizer: the preset's vocabulary, or, for generated
    data (the demo), the SentencePiece size it trains plus LIMA's EOT; no residual dropout; the
    run's LoRA adapters (`config.lora`, no new token rows: the batch has the preset's ids)."""
    from lima_jax.train.state import with_lora

    overrides = dict(model_config_overrides(config), residual_dropout=0.0)
    if config.data.path.startswith("generated:"):
        overrides["vocab_size"] = config.data.train_tokenizer.vocab_size + 1
    return with_lora(config, get_preset(config.model.preset).replace(**overrides))


def synthetic_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random full rows: one segment each, every token in the loss."""
    ids = np.random.default_rng(seed).integers(0, vocab, (rows, length + 1), dtype=np.int32)
    ones = np.ones((rows, length), np.int32)
    return {"tokens": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": ones,
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy(),
            "loss_mask": ones.astype(np.float32)}


class Ours:
    """Our sharded, donated, ahead-of-time compiled train step."""

    def __init__(self, config: ml_collections.ConfigDict, model: LlamaConfig, batch: dict):
        # The schedule's length (1000 steps) changes only learning-rate values.
        sharded = compile_train_step(config, model, sharding_lib.make_mesh(dict(config.mesh)), 1000)
        self.fns = sharded.fns
        self.state = sharded.init_state(jax.random.PRNGKey(0))
        self.batch = {k: jax.device_put(v, sharded.rows) for k, v in batch.items()}  # on device once
        self.compiled = sharded.compile(self.state, self.batch)
        self.compile_s = self.compiled.compile_s
        self.params = sum(x.size for x in jax.tree.leaves(self.state["params"]))
        self.trainable_params = sum(x.size for x in jax.tree.leaves(self.fns.trainable(self.state["params"])))
        self.mesh_shape = dict(sharded.mesh.shape)

    def step(self) -> float:
        """One update on the resident batch; seconds until its outputs are ready."""
        start = time.perf_counter()
        self.state, metrics = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))  # dispatch is async: wait for the step
        return time.perf_counter() - start


# lima_jax's LoRA targets -> the module names peft finds in transformers' LlamaForCausalLM.
PEFT_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
                "up": "up_proj", "down": "down_proj"}


class Torch:
    """transformers' LlamaForCausalLM + torch AdamW, eager float32; under LoRA (`model.lora`)
    wrapped by peft.get_peft_model, AdamW over the LoRA parameters only."""

    def __init__(self, config: ml_collections.ConfigDict, model: LlamaConfig, batch: dict):
        import torch  # imported here: only the baseline needs it
        from transformers import LlamaConfig as HFLlamaConfig
        from transformers import LlamaForCausalLM

        from lima_jax.model.hf import _hf_config_dict

        self.torch = torch
        torch.manual_seed(0)
        fields = {k: v for k, v in _hf_config_dict(model).items()
                  if k not in ("architectures", "model_type", "torch_dtype")}
        hf_config = HFLlamaConfig(**fields)
        hf_config._attn_implementation = "sdpa"
        self.model = LlamaForCausalLM(hf_config).float()
        if model.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = model.lora
            self.model = get_peft_model(self.model, LoraConfig(
                r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                target_modules=[PEFT_TARGETS[t] for t in lora.targets]))
        self.model.train()
        self.all_params = sum(p.numel() for p in self.model.parameters())
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = config.optimizer
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        if o.weight_decay_mask == "all":
            groups = [{"params": params, "weight_decay": o.weight_decay}]
        kwargs = {"lr": o.learning_rate, "betas": (o.b1, o.b2), "eps": o.eps}
        try:
            self.optimizer = torch.optim.AdamW(groups, fused=True, **kwargs)  # fastest on CPU
        except (RuntimeError, TypeError):
            self.optimizer = torch.optim.AdamW(groups, **kwargs)
        self.clip_norm = o.clip_norm
        self.tokens = torch.as_tensor(batch["tokens"], dtype=torch.long)
        self.targets = torch.as_tensor(batch["targets"], dtype=torch.long).reshape(-1)
        self.trainable = params
        self.params = self.all_params
        self.trainable_params = sum(p.numel() for p in params)

    def step(self, threads: int) -> float:
        """One update (forward, backward, clip, AdamW, zero grads) with `threads`; seconds."""
        torch = self.torch
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        logits = self.model(input_ids=self.tokens).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets)
        loss.backward()
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()  # CPU torch is synchronous; this only makes the end explicit
        return time.perf_counter() - start


def _block(step, n: int) -> list[float]:
    """n timed steps after a short pause: both XLA's and OpenMP's worker threads spin for a
    while after their work, which would slow whichever side runs next on a 2-core machine."""
    time.sleep(0.2)
    return [step() for _ in range(n)]


def measure(label: str, config: ml_collections.ConfigDict, steps: int, rounds: int,
            torch_threads: tuple[int, ...] = (os.cpu_count() or 1, 1)) -> dict[str, Any]:
    """One record: ours and the baseline on the same model and batch, timed alternately;
    the baseline at each of `torch_threads`, keeping its fastest."""
    torch_threads = tuple(dict.fromkeys(torch_threads))  # all cores and 1: once each on 1 core
    model = model_config(config)
    rows, length = config.data.global_batch_size, config.data.max_len
    batch = synthetic_batch(rows, length, model.vocab_size, seed=config.seed)
    ours, base = Ours(config, model, batch), Torch(config, model, batch)
    ours.step()
    for threads in torch_threads:  # first steps allocate the optimizer state, warm the allocator
        base.step(threads), base.step(threads)
    ours_s, base_by_threads = [], {threads: [] for threads in torch_threads}
    rounds = max(1, min(rounds, steps))
    for r in range(rounds):
        block = steps // rounds + (r < steps % rounds)
        ours_s += _block(ours.step, block)
        for threads, times in base_by_threads.items():
            times += _block(lambda t=threads: base.step(t), block)
    # Torch gets its best: the thread count with the lowest median step time.
    base_threads = min(base_by_threads, key=lambda t: statistics.median(base_by_threads[t]))
    base_s = base_by_threads[base_threads]
    step_s, base_step_s = statistics.median(ours_s), statistics.median(base_s)
    tokens = rows * length
    peft_text, over = (" + peft.get_peft_model LoRA", " over the LoRA parameters") if model.lora else ("", "")
    tps, base_tps = tokens / step_s, tokens / base_step_s
    # LoRA: no weight gradient of the frozen base (lima_jax.train.aot.model_flops_per_token).
    flops_per_token = model_flops_per_token(model, length)
    peak = peak_flops_per_device()
    mfu = flops_per_token * tps / jax.device_count() / peak if peak else None
    kind = jax.devices()[0].device_kind
    shape = (f"D={model.dim} L={model.n_layers} N={model.n_heads} K={model.n_kv_heads} "
             f"F={model.mlp_dim} V={model.vocab_size}{' tied' if model.tie_embeddings else ''}")
    lora = model.lora
    if lora is not None:
        shape += (f", LoRA rank {lora.rank} alpha {lora.alpha:g} dropout {lora.dropout:g} on "
                  f"{','.join(lora.targets)}, {ours.trainable_params / 1e6:.2f}M trainable")
    description = (f"{label}: preset {config.model.preset} ({shape}), {ours.params / 1e6:.1f}M params, "
                   f"seq {length}, batch {rows}, compute {model.dtype}, params {model.param_dtype}, "
                   f"residual dropout 0, synthetic full rows, {jax.device_count()} x {kind} "
                   f"mesh {ours.mesh_shape}, {steps} timed steps")
    return {
        "benchmark": "train",
        "name": f"train/{label}",
        "config": description,
        "baseline_name": (f"transformers LlamaForCausalLM (sdpa){peft_text} + torch.optim.AdamW{over}, "
                          f"eager float32, {base_threads} threads (fastest of {list(torch_threads)})"),
        "baseline_threads": base_threads,
        "tokens_per_step": tokens,
        "params": int(ours.params),
        "baseline_params": int(base.params),
        "trainable_params": int(ours.trainable_params),
        "baseline_trainable_params": int(base.trainable_params),
        "lora": None if lora is None else {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout,
                                           "targets": list(lora.targets)},
        "compile_s": round(ours.compile_s, 2),
        "step_s": round(step_s, 4),
        "step_times_s": [round(s, 4) for s in ours_s],
        "baseline_step_s": round(base_step_s, 4),
        "baseline_step_times_s": [round(s, 4) for s in base_s],
        "baseline_step_s_by_threads": {str(t): round(statistics.median(v), 4)
                                       for t, v in base_by_threads.items()},
        "tokens_per_s": round(tps, 1),
        "baseline_tokens_per_s": round(base_tps, 1),
        "flops_per_token": flops_per_token,
        "model_flops_per_s": round(flops_per_token * tps),
        "mfu": None if mfu is None else round(mfu, 4),
        "figure": (f"{tps:,.0f} tokens/s, compile {ours.compile_s:.1f}s"
                   + (f", MFU {mfu:.1%}" if mfu is not None else "")),
        "baseline": (f"{base_tps:,.0f} tokens/s (transformers{' + peft LoRA' if lora else ''} + torch "
                     f"AdamW{over}, sdpa, eager float32, {base_threads} threads)"),
        "ratio": round(tps / base_tps, 2),
        "goal_met": tps / base_tps >= GOAL_RATIO,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.config:
        plan = [(pathlib.Path(args.config).stem, args.config, (), 10)]
    else:
        plan = list(DEFAULT_MEASUREMENTS)
        only = [label.strip() for label in args.only.split(",") if label.strip()]
        unknown = sorted(set(only) - {m[0] for m in plan})
        if unknown:
            raise LimaError(f"--only {','.join(unknown)}: the measurements are "
                            f"{', '.join(m[0] for m in plan)}")
        plan = [m for m in plan if not only or m[0] in only]
    rows = []
    for label, path, overrides, default_steps in plan:
        config = load_config(path, [*overrides, *args.override])
        threads = tuple(int(t) for t in args.torch_threads.split(",")) if args.torch_threads else (
            os.cpu_count() or 1, 1)
        rows.append(measure(label, config, args.steps or default_steps, args.rounds, threads))
    return rows
