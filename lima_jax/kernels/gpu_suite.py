"""GPU suite: ``python -m lima_jax.bench gpu``, every GPU figure of README "Benchmarks" in one command.

Meant for one H200 and at most 8 minutes (``--budget``, default 480 s, counted from the start of
the command). In this order:

0. **setup**: before anything imports ``lima_jax.data`` (the train benchmark does), ``import grain``
   and ``import tensorflow_datasets`` are tried; when either fails, ``pip install grain
   tensorflow-datasets`` runs in a subprocess (a bare GPU image has jax but not these). The
   dispatcher (``lima_jax.bench.BEFORE_IMPORT``) calls `install_missing` before it imports any
   benchmark module; the outcome is the ``gpu/setup`` row.
1. **check**: the Pallas GPU kernels (``lima_jax.kernels.flash_attention``, Triton) compiled and
   compared with ``lima_jax.kernels.reference.attention_reference`` (float32 math on the same
   bfloat16 inputs), output and the gradients of q, k, v under a fixed random cotangent, for 4
   shapes: MHA causal, packed GQA causal, a packed length off the block grid with H 64, and
   GQA non-causal. Error = max |x - ref| / max |ref|, limit 2e-2 as in
   ``tests/kernels/test_flash_attention.py``.
2. **attention**: forward+backward timing (``lima_jax.kernels.bench.measure``: jitted, compile
   apart, median of ``--repeats``) of the kernels against cuDNN
   (``jax.nn.dot_product_attention(implementation='cudnn')``) and XLA at T 2,048 / 4,096 / 8,192,
   N 32, K ``--kv-heads`` (8), H 128, causal, bfloat16, 16k tokens per call; and packed rows (4
   examples each) against the best masked alternative. Goals (the issue's): >= 0.9x cuDNN unpacked,
   >= 2x the best masked alternative packed.
3. **decode**: ``lima_jax.decode.Generator`` on a random-weight ``llama3.2-1b`` (bfloat16), greedy,
   no stop ids, at batch 1 and 64 (``lima_jax.decode.bench._time_ours``). A decode step reads every
   parameter and the whole preallocated KV cache; bytes per step / step time against
   ``lima_jax.chips.peak_bandwidth`` is the bandwidth use. Goal: batch 1 >= 80%.
4. **train**: the train step ``lima_jax.train`` runs (``lima_jax.train.bench.Ours`` over
   ``compile_train_step``; float32 weights and AdamW, bfloat16 compute, synthetic full rows of
   2,048 tokens, ``--train-rows`` (8) rows) for preset ``llama3.2-1b`` and a ``llama2-7b``-shaped
   model cut to ``--train-layers-7b`` (8) of its 32 layers, whose MFU counts the FLOPs of the
   layers it has (``lima_jax.train.config.total_flops_per_token``) against
   ``lima_jax.chips.peak_flops_per_device``. Candidates, tried in order while the part's time
   lasts, the fastest kept: remat ``none`` + cuDNN attention (what a run config gives on a GPU:
   the baseline), ``none`` + Pallas, ``dots`` + cuDNN, ``none`` + Pallas with the blocks of
   ``--block-sizes`` (default: Triton's fused-attention tutorial tiles), ``full`` + cuDNN. The
   model does not take block sizes, so a candidate's are handed to the kernels by replacing
   ``lima_jax.kernels.flash_attention.default_block_sizes`` while its step compiles (restored after).
   Goal: MFU >= 45% for the 7B-shaped model.

The budget: each part owns a share of it (check 12%, attention 30%, decode 10%, train 1B 22%,
train 7B 26%: guesses, as no GPU has run this yet; time a part leaves over goes to the next).
Before each shape, batch or candidate its time is estimated from the one before; what would not
end inside the part's share (the first item of a part: inside the whole budget) is skipped and
named in a ``skipped`` row, so the command ends on time instead of overrunning.

Every row has ``part``, ``figure``, ``baseline``, ``ratio`` (figure / baseline, higher is better;
null where there is no baseline), ``goal`` and ``goal_met`` (null where the part has no goal;
false where the goal could not be measured, with ``goal_note``); ``lima_jax.bench`` stamps the
hardware and versions and appends them to bench/RESULTS.md.

Without ``--smoke`` it refuses to run anywhere but on a GPU (one line, exit 2). ``--smoke`` runs
the same code on CPU with tiny shapes: the check on the GPU kernels in Pallas interpret mode, the
timing with the TPU kernel interpreted (as ``python -m lima_jax.bench attention --smoke``), XLA as
the only other attention (no cuDNN on CPU: recorded as unavailable), tiny models (preset
``tiny``/``tiny-mha`` at H 64) for train and decode, XLA attention standing in for cuDNN in the
train candidates. Smoke rows are printed, never recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.chips import peak_bandwidth, peak_flops_per_device
from lima_jax.errors import LimaError
from lima_jax.kernels.blocks import BlockSizes
from lima_jax.kernels.flash_attention import flash_attention
from lima_jax.kernels.reference import attention_reference

# Stamped on every row by lima_jax.bench: the timed device leads the hardware.
VERSIONS = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "nvidia-cudnn-cu13",
            "nvidia-cudnn-cu12", "flax", "optax", "grain", "tensorflow-datasets")
DEVICE_IN_HARDWARE = True

DEFAULT_BUDGET_S = 480.0
# module to import -> package that provides it; installed when the import fails.
REQUIRED = {"grain": "grain", "tensorflow_datasets": "tensorflow-datasets"}
PIP_TIMEOUT_S = 180
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}  # tests/kernels/test_flash_attention.py
# Triton's fused-attention tutorial tiles for H 128: forward 128 x 128, dK/dV 32 queries per
# 128 keys, dQ 128 queries per 32 keys (lima_jax.kernels.blocks.BlockSizes field order).
TUTORIAL_BLOCKS = "128,128,32,128,128,32"

# part -> (where its share of the budget ends, seconds its first item is assumed to take on a GPU)
PARTS = {
    "check": (0.12, 20.0),
    "attention": (0.42, 20.0),
    "decode": (0.52, 30.0),
    "train_1b": (0.74, 60.0),
    "train_7b": (1.00, 60.0),
}
GOALS = {
    "check": ("every error <= 2e-2 (bfloat16 tolerance of tests/kernels/test_flash_attention.py)", None),
    "attention": ("pallas fwd+bwd >= 0.9x cuDNN (unpacked rows)", 0.9),
    "attention_packed": ("pallas fwd+bwd >= 2x the best masked alternative (packed rows)", 2.0),
    "decode": ("batch-1 decode >= 80% of HBM bandwidth", 0.8),
    "train_7b": ("train MFU >= 45% (llama2-7b shape)", 0.45),
}


class GpuSuiteError(LimaError):
    """The suite cannot run here (no GPU without --smoke, a bad option)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU, kernels interpreted: checks the suite itself")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for the whole command; parts that would overrun are skipped")
    parser.add_argument("--parts", default="check,attention,decode,train",
                        help="comma-separated parts to run (check, attention, decode, train)")
    parser.add_argument("--repeats", type=int, default=5, help="timed attention calls (median)")
    parser.add_argument("--lengths", default="2048,4096,8192", help="attention T, comma-separated")
    parser.add_argument("--kv-heads", type=int, default=8, help="attention K (N is 32, H 128)")
    parser.add_argument("--train-rows", type=int, default=8, help="rows of 2,048 tokens per step")
    parser.add_argument("--train-steps", type=int, default=5, help="timed steps per candidate")
    parser.add_argument("--train-layers-7b", type=int, default=8,
                        help="layers of the llama2-7b-shaped model (of 32)")
    parser.add_argument("--block-sizes", default=TUTORIAL_BLOCKS,
                        help="the Pallas block sizes the train step tries besides the default "
                             "(6 comma-separated BlockSizes fields; '' = none)")
    parser.add_argument("--decode-batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--decode-prompt-len", type=int, default=128)
    parser.add_argument("--decode-new-tokens", type=int, default=256)


# ---------------------------------------------------------------------- setup


_SETUP: dict[str, Any] = {}  # what install_missing did, for run()'s setup row


def _platform() -> str:
    """'gpu', 'tpu' or 'cpu': the platform jax runs on."""
    platform = jax.default_backend()
    return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


def install_missing(argv: Sequence[str] = (), *, importer: Callable = importlib.import_module,
                    runner: Callable = subprocess.run, platform: str | None = None) -> dict[str, Any]:
    """Step 0: ``pip install grain tensorflow-datasets`` (those missing) when importing either
    fails, before lima_jax.data is imported. Nothing is installed for a run that will refuse (no
    GPU and no ``--smoke`` in `argv`). Returns (and keeps for `run`) what it did."""
    _SETUP.clear()
    _SETUP["started"] = time.time()
    if "--smoke" not in argv and (platform or _platform()) != "gpu":
        _SETUP.update(missing=[], note="no GPU: nothing installed")
        return dict(_SETUP)
    missing = []
    for module, package in REQUIRED.items():
        try:
            importer(module)
        except Exception:  # noqa: BLE001 - a broken install fails in other ways than ImportError
            missing.append(package)
    _SETUP["missing"] = missing
    if missing:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--retries", "1", "--timeout", "20", *missing]
        print(f"bench gpu: {', '.join(missing)} missing; running {' '.join(command[1:])}", file=sys.stderr)
        start = time.time()
        try:
            done = runner(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            ok, detail = done.returncode == 0, (done.stderr or "").strip()[-300:]
        except (subprocess.TimeoutExpired, OSError) as err:
            ok, detail = False, f"{type(err).__name__}: {err}"[:300]
        importlib.invalidate_caches()
        _SETUP.update(command=" ".join(command[1:]), installed=ok, pip_s=round(time.time() - start, 1),
                      detail=detail)
        if not ok:
            print(f"bench gpu: pip install failed ({detail.splitlines()[-1] if detail else 'no output'}); "
                  "the parts that need them will fail", file=sys.stderr)
    return dict(_SETUP)


def _setup_row(setup: dict[str, Any], record: bool) -> dict[str, Any]:
    missing = setup.get("missing", [])
    if not missing:
        figure = "grain and tensorflow-datasets already importable; nothing installed"
    elif setup.get("installed"):
        figure = f"installed {', '.join(missing)} with pip in {setup['pip_s']:.0f} s"
    else:
        figure = f"pip install {' '.join(missing)} failed: {setup.get('detail', '')[-160:]}"
    return _row("setup", "", "import grain, tensorflow_datasets; pip install what fails", figure, "", None,
                None, None, record, missing=missing, installed=setup.get("installed"))


# ---------------------------------------------------------------------- the budget


class Budget:
    """The command's deadline and each part's share of it."""

    def __init__(self, total_s: float, start: float | None = None):
        self.total_s = total_s
        self.start = time.time() if start is None else start
        self.deadline = self.start + total_s

    def left(self) -> float:
        return self.deadline - time.time()

    def part(self, name: str, smoke: bool) -> PartClock:
        end, first_estimate = PARTS[name]
        return PartClock(self.start + self.total_s * end, self.deadline, 0.0 if smoke else first_estimate)


class PartClock:
    """Times a part's items (shapes, batches, candidates) and says whether the next fits."""

    def __init__(self, deadline: float, hard_deadline: float, first_estimate_s: float):
        self.deadline, self.hard_deadline = deadline, hard_deadline
        self.first_estimate_s = first_estimate_s
        self.durations: list[float] = []
        self.skipped: list[str] = []

    def allows(self, label: str, scale: float = 1.0) -> bool:
        """Whether item `label` ends in time: estimated as the last item's time x `scale`, inside
        the part's share (the first item: inside the whole budget). A refusal is remembered."""
        if self.durations:
            estimate, limit = self.durations[-1] * scale, min(self.deadline, self.hard_deadline)
        else:
            estimate, limit = self.first_estimate_s, self.hard_deadline
        if time.time() + estimate <= limit and time.time() < self.hard_deadline:
            return True
        self.skipped.append(label)
        return False

    @contextlib.contextmanager
    def item(self):
        start = time.time()
        try:
            yield
        finally:
            self.durations.append(time.time() - start)


# ---------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class CheckShape:
    batch: int
    t: int
    n: int
    k: int
    h: int
    causal: bool
    packed: bool

    @property
    def label(self) -> str:
        return (f"B{self.batch} T{self.t} N{self.n} K{self.k} H{self.h} "
                f"{'causal' if self.causal else 'non-causal'} {'packed' if self.packed else 'unpacked'}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    remat: str
    attention: str
    blocks: BlockSizes | None = None

    @property
    def label(self) -> str:
        blocks = "" if self.blocks is None else " blocks " + ",".join(
            str(getattr(self.blocks, f.name)) for f in dataclasses.fields(self.blocks))
        return f"remat {self.remat}, attention {self.attention}{blocks}"


@dataclasses.dataclass(frozen=True)
class TrainModel:
    part: str
    label: str  # the row's name
    preset: str
    overrides: tuple[str, ...]  # config KEY=VALUE on top of the preset
    description: str


@dataclasses.dataclass(frozen=True)
class Plan:
    smoke: bool
    check_shapes: tuple[CheckShape, ...]
    check_backend: str
    lengths: tuple[int, ...]
    n: int
    k: int
    h: int
    tokens: int
    repeats: int
    train_models: tuple[TrainModel, ...]
    candidates: tuple[Candidate, ...]
    train_length: int
    train_rows: int
    train_steps: int
    decode_preset: str
    decode_overrides: dict
    decode_batches: tuple[int, ...]
    decode_prompt_len: int
    decode_new_tokens: int
    decode_repeats: int = 3

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        blocks = _parse_blocks(args.block_sizes)
        try:
            lengths = tuple(int(t) for t in args.lengths.split(","))
            batches = tuple(int(b) for b in args.decode_batches.split(","))
        except ValueError as err:
            raise GpuSuiteError(f"--lengths / --decode-batches: {err}") from None
        if args.smoke:
            # Cuts of the real plan: same parts, items and code, tiny shapes; the kernels interpret.
            rows = jax.device_count()  # the batch is split over every device (FSDP)
            tiny = ("model.dim=128", "model.n_heads=2")  # H 64: a head dim the kernels take
            return cls(
                smoke=True,
                check_shapes=(CheckShape(1, 128, 4, 4, 64, True, False), CheckShape(2, 256, 4, 2, 64, True, True),
                              CheckShape(1, 200, 4, 1, 64, True, True), CheckShape(1, 128, 4, 2, 64, False, False)),
                check_backend="gpu", lengths=(256,), n=8, k=4, h=64, tokens=256, repeats=1,
                train_models=(
                    TrainModel("train_1b", "tiny-for-llama3.2-1b", "tiny",
                               (*tiny, "model.n_kv_heads=1", "model.n_layers=1"),
                               "preset tiny at D 128, N 2, K 1 (H 64), 1 of its 2 layers"),
                    TrainModel("train_7b", "tiny-mha-for-llama2-7b", "tiny-mha",
                               (*tiny, "model.n_kv_heads=2", "model.n_layers=1"),
                               "preset tiny-mha at D 128, N 2, K 2 (H 64), 1 of its 2 layers"),
                ),
                candidates=(Candidate("none", "xla"),
                            Candidate("dots", "pallas", BlockSizes(*(128,) * 6))),
                train_length=128, train_rows=rows, train_steps=1,
                decode_preset="tiny", decode_overrides={"dtype": "float32"}, decode_batches=batches[:2] or (1,),
                decode_prompt_len=8, decode_new_tokens=8, decode_repeats=1)
        candidates = [Candidate("none", "cudnn"), Candidate("none", "pallas"), Candidate("dots", "cudnn")]
        if blocks is not None:
            candidates.append(Candidate("none", "pallas", blocks))
        candidates.append(Candidate("full", "cudnn"))
        layers = args.train_layers_7b
        if not 1 <= layers <= 32:
            raise GpuSuiteError(f"--train-layers-7b={layers}: must be 1 to 32")
        return cls(
            smoke=False,
            check_shapes=(CheckShape(2, 2048, 32, 32, 128, True, False), CheckShape(2, 4096, 32, 8, 128, True, True),
                          CheckShape(4, 1000, 16, 4, 64, True, True), CheckShape(1, 2048, 32, 8, 128, False, False)),
            check_backend="gpu", lengths=lengths, n=32, k=args.kv_heads, h=128, tokens=16384,
            repeats=args.repeats,
            train_models=(
                TrainModel("train_1b", "llama3.2-1b", "llama3.2-1b", (), "preset llama3.2-1b (all 16 layers)"),
                TrainModel("train_7b", f"llama2-7b-{layers}-layers", "llama2-7b", (f"model.n_layers={layers}",),
                           f"llama2-7b shape (D 4096, N 32, K 32, F 11008, V 32000), {layers} of its 32 "
                           f"layers; MFU counts these {layers} layers, the embedding and the output layer"),
            ),
            candidates=tuple(candidates), train_length=2048, train_rows=args.train_rows,
            train_steps=args.train_steps, decode_preset="llama3.2-1b",
            decode_overrides={"dtype": "bfloat16", "param_dtype": "bfloat16"}, decode_batches=batches,
            decode_prompt_len=args.decode_prompt_len, decode_new_tokens=args.decode_new_tokens)


def _parse_blocks(text: str) -> BlockSizes | None:
    if not text:
        return None
    try:
        return BlockSizes(*(int(x) for x in text.split(",")))
    except (TypeError, ValueError) as err:
        raise GpuSuiteError(f"--block-sizes={text!r}: {err}") from None


# ---------------------------------------------------------------------- rows


def _row(part: str, name: str, config: str, figure: str, baseline: str, ratio: float | None,
         goal_key: str | None, goal_value: float | None, record: bool, **extra) -> dict[str, Any]:
    """One row; `goal_value` is compared with the goal's threshold (None: not measured)."""
    goal, threshold = GOALS.get(goal_key, (None, None)) if goal_key else (None, None)
    row = {"name": f"gpu/{part}/{name}" if name else f"gpu/{part}", "benchmark": "gpu", "part": part,
           "config": config, "figure": figure, "baseline": baseline,
           "ratio": None if ratio is None else round(ratio, 3), "goal": goal, "goal_met": None,
           "record": record}
    note = extra.pop("goal_note", None)
    if goal is not None:
        row["goal_met"] = bool(goal_value is not None and (threshold is None or goal_value >= threshold))
        if goal_value is None:
            row["goal_note"] = note or "not measured"
    row.update(extra)
    return row


def _skipped_row(part: str, labels: list[str], budget: Budget, goal_key: str | None, record: bool):
    return _row(part, "skipped", f"{len(labels)} item(s) not run: {'; '.join(labels)}",
                f"skipped (time budget: {max(budget.left(), 0):.0f} s of {budget.total_s:.0f} s left)", "",
                None, goal_key, None, record, skipped=labels, goal_note="skipped for the time budget")


# ---------------------------------------------------------------------- 1. check


def check_shape(shape: CheckShape, backend: str, interpret: bool, seed: int = 0) -> dict[str, float]:
    """Relative errors of the kernel's output and q/k/v gradients against the reference."""
    from lima_jax.kernels.bench import random_packing, relative_error

    rng = np.random.default_rng(seed)
    dtype = jnp.bfloat16
    q = jnp.asarray(rng.normal(size=(shape.batch, shape.t, shape.n, shape.h)), dtype)
    k = jnp.asarray(rng.normal(size=(shape.batch, shape.t, shape.k, shape.h)), dtype)
    v = jnp.asarray(rng.normal(size=(shape.batch, shape.t, shape.k, shape.h)), dtype)
    seg = jnp.asarray(random_packing(rng, shape.batch, shape.t)) if shape.packed else None
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)  # the cotangent: reaches every output

    def kernel(q_, k_, v_):
        return flash_attention(q_, k_, v_, segment_ids=seg, causal=shape.causal, backend=backend,
                               interpret=interpret)

    def reference(q_, k_, v_):
        f32 = lambda x: x.astype(jnp.float32)
        return attention_reference(f32(q_), f32(k_), f32(v_), segment_ids=seg, causal=shape.causal)

    def value_and_grads(attend):
        def loss(q_, k_, v_):
            out = attend(q_, k_, v_)
            return jnp.sum(out.astype(jnp.float32) * w), out
        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
        return out, grads

    out, grads = value_and_grads(kernel)
    ref_out, ref_grads = value_and_grads(reference)
    errors = {"out": relative_error(out, ref_out)}
    errors.update({f"d{name}": relative_error(g, r) for name, g, r in zip("qkv", grads, ref_grads)})
    return errors


def check_part(plan: Plan, clock: PartClock, record: bool) -> list[dict[str, Any]]:
    rows = []
    interpret = plan.smoke
    tolerance = TOLERANCE["bfloat16"]
    for shape in plan.check_shapes:
        if not clock.allows(shape.label):
            continue
        with clock.item():
            start = time.time()
            try:
                errors = check_shape(shape, plan.check_backend, interpret)
            except Exception as err:  # noqa: BLE001 - a kernel that does not compile is a row
                rows.append(_row("check", shape.label.replace(" ", "-"), _check_config(shape, plan),
                                 f"failed: {type(err).__name__}: {err}"[:300], "attention_reference", None,
                                 "check", None, record, error=f"{type(err).__name__}: {err}"[:500]))
                continue
        worst = max(errors.values())
        rows.append(_row(
            "check", shape.label.replace(" ", "-"), _check_config(shape, plan),
            f"max relative error {worst:.2e} (" + ", ".join(f"{k} {e:.1e}" for k, e in errors.items()) + ")",
            f"attention_reference in float32; limit {tolerance:g}", tolerance / max(worst, 1e-12),
            "check", 1.0 if worst <= tolerance else None, record,
            errors={k: float(f"{e:.3e}") for k, e in errors.items()}, tolerance=tolerance,
            seconds=round(time.time() - start, 2),
            goal_note=f"max relative error {worst:.2e} exceeds {tolerance:g}"))
    return rows


def _check_config(shape: CheckShape, plan: Plan) -> str:
    mode = "Pallas interpret mode on CPU" if plan.smoke else "Triton"
    return f"{shape.label}, bfloat16, backend {plan.check_backend} ({mode}), forward and q/k/v gradients"


# ---------------------------------------------------------------------- 2. attention


def attention_part(plan: Plan, clock: PartClock, record: bool) -> list[dict[str, Any]]:
    from lima_jax.kernels import bench as attention_bench

    platform = "cpu" if plan.smoke else "gpu"
    impls = attention_bench._implementations(platform, plan.smoke, None)
    dtype = jnp.bfloat16
    rows, last_t = [], None
    for t in plan.lengths:
        for packed in (False, True):
            label = f"T{t} {'packed' if packed else 'unpacked'}"
            # A call holds 16k tokens whatever T is, so its work grows with T.
            if not clock.allows(label, scale=t / last_t if last_t and not packed else 1.0):
                continue
            with clock.item():
                start = time.time()
                results = attention_bench.measure(t, plan.n, plan.k, plan.h, packed=packed, impls=impls,
                                                  repeats=plan.repeats, dtype=dtype, tokens=plan.tokens)
            rows.append(_attention_row(results, t, plan, packed, platform, record, time.time() - start))
            last_t = t
    return rows


def _attention_row(results: list[dict], t: int, plan: Plan, packed: bool, platform: str, record: bool,
                   seconds: float) -> dict[str, Any]:
    from lima_jax.kernels.bench import SEGMENTS_PER_ROW

    by_pass = {label: {r["impl"]: r for r in results if r["pass"] == label and "error" not in r}
               for label in ("fwd", "fwd+bwd")}
    errors = {f"{r['impl']} {r['pass']}": r["error"] for r in results if "error" in r}
    both = by_pass["fwd+bwd"]
    implementations = {name: {label: {key: r[key] for key in ("tflops", "seconds", "compile_s", "temp_bytes")}
                              for label in ("fwd", "fwd+bwd") if (r := by_pass[label].get(name))}
                       for name in ("pallas", "cudnn", "xla")}
    if platform != "gpu":
        implementations["cudnn"] = {"unavailable": f"no cuDNN on {platform}"}
    ours = both.get("pallas")
    others = {name: r for name, r in both.items() if name != "pallas"}
    goal_note = None
    if packed:
        baseline_name = max(others, key=lambda name: others[name]["tflops"], default=None)
        base = others.get(baseline_name)
        baseline = (f"{baseline_name} with a [B, 1, T, T] mask {base['tflops']:.3g} TFLOP/s (best masked "
                    f"alternative of {sorted(others)})" if base else "no masked alternative ran")
    else:
        base = others.get("cudnn")
        if base:
            baseline = f"cudnn {base['tflops']:.3g} TFLOP/s"
        elif platform != "gpu":
            baseline, goal_note = f"cudnn unavailable (no cuDNN on {platform})", f"no cuDNN on {platform}"
        else:
            baseline = f"cudnn failed: {errors.get('cudnn fwd+bwd', 'not run')}"[:200]
            goal_note = "cuDNN did not run"
    ratio = ours["tflops"] / base["tflops"] if ours and base else None
    batch = max(1, plan.tokens // t)
    config = (f"{'packed x' + str(SEGMENTS_PER_ROW) if packed else 'unpacked'} causal, T {t}, N {plan.n}, "
              f"K {plan.k}, H {plan.h}, bfloat16, B {batch}, fwd+bwd (q, k, v gradients), median of "
              f"{plan.repeats}{', TPU kernel interpreted' if plan.smoke else ''}")
    if ours:
        peak = peak_flops_per_device()
        figure = (f"{ours['tflops']:.3g} TFLOP/s fwd+bwd ({ours['seconds'] * 1e3:.2f} ms)"
                  + (f", MFU {ours['tflops'] * 1e12 / peak:.1%}" if peak else ""))
    else:
        figure = f"pallas failed: {errors.get('pallas fwd+bwd', 'not run')}"[:200]
        goal_note = "the kernel did not run"
    fwd_ours = by_pass["fwd"].get("pallas")
    fwd_others = [r for name, r in by_pass["fwd"].items() if name != "pallas"]
    fwd_base = (max(fwd_others, key=lambda r: r["tflops"], default=None) if packed
                else by_pass["fwd"].get("cudnn"))
    extra = {"pass": "fwd+bwd", "t": t, "packed": packed, "implementations": implementations,
             "errors": errors, "seconds": round(seconds, 2),
             "fwd_ratio": round(fwd_ours["tflops"] / fwd_base["tflops"], 3) if fwd_ours and fwd_base else None}
    if not packed and "xla" in both and ours:
        extra["ratio_vs_xla"] = round(ours["tflops"] / both["xla"]["tflops"], 3)
    if goal_note:
        extra["goal_note"] = goal_note
    return _row("attention", f"{'packed' if packed else 'unpacked'}-T{t}", config, figure, baseline, ratio,
                "attention_packed" if packed else "attention", ratio, record, **extra)


# ---------------------------------------------------------------------- 3. decode


def decode_part(plan: Plan, clock: PartClock, record: bool) -> list[dict[str, Any]]:
    from flax import nnx

    from lima_jax.decode import Generator
    from lima_jax.decode.bench import _time_ours
    from lima_jax.decode.generate import prompt_bucket
    from lima_jax.model import Llama, get_preset

    rows = []
    if not clock.allows("model"):
        clock.skipped.extend(f"batch {batch}" for batch in plan.decode_batches)
        return rows
    with clock.item():  # random weights, made on the device
        config = get_preset(plan.decode_preset).replace(scan_unroll=1, **plan.decode_overrides)
        model = Llama(config, rngs=nnx.Rngs(0))
        generator = Generator(model)
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        param_bytes = int(sum(x.size * x.dtype.itemsize for x in leaves))
        n_params = int(sum(x.size for x in leaves))
    for batch in plan.decode_batches:
        if not clock.allows(f"batch {batch}", scale=2.0):  # the first batch is not the model's time
            continue
        start = time.time()
        with clock.item():
            rng = np.random.default_rng(batch)
            prompts = rng.integers(3, config.vocab_size, (batch, plan.decode_prompt_len)).astype(np.int32)
            prompts[:, 0] = config.bos_token_id or 1
            timing = _time_ours(generator, prompts.tolist(), plan.decode_new_tokens, plan.decode_repeats)
        # A step reads every parameter and the whole preallocated cache (model/kv_cache.decode_step).
        bucket = prompt_bucket(plan.decode_prompt_len)
        cache_len = min(bucket + plan.decode_new_tokens, max(config.max_seq_len, bucket))
        cache_bytes = (2 * config.n_layers * batch * cache_len * config.n_kv_heads * config.head_dim
                       * np.dtype(config.dtype).itemsize)
        row = decode_row(plan, config, batch, timing, param_bytes + cache_bytes, peak_bandwidth(), record,
                         f"{n_params / 1e6:.1f}M params, KV cache {cache_len} slots")
        row["seconds"] = round(time.time() - start, 2)
        rows.append(row)
    del generator, model
    gc.collect()
    return rows


def decode_row(plan: Plan, config, batch: int, timing: dict[str, Any], step_bytes: int, peak: float | None,
               record: bool, details: str) -> dict[str, Any]:
    """The decode row from `_time_ours`' timing: tokens/s and bytes per step over the HBM peak."""
    new_tokens = plan.decode_new_tokens
    step_s = timing["decode_s"] / new_tokens
    tps = batch * new_tokens / timing["decode_s"]
    kind = jax.devices()[0].device_kind
    utilisation = step_bytes / step_s / peak if peak else None
    if peak:
        baseline = (f"HBM roofline {peak / step_bytes * batch:,.0f} tokens/s ({step_bytes / 1e9:.3g} GB per step "
                    f"at {peak / 1e12:.2f} TB/s)")
    else:
        baseline = f"HBM roofline unknown (no memory bandwidth known for {kind})"
    return _row(
        "decode", f"b{batch}",
        (f"{plan.decode_preset} random weights ({details}, {config.param_dtype} weights, {config.dtype} "
         f"compute), batch {batch}, prompt {plan.decode_prompt_len}, {new_tokens} new tokens, greedy, no stop "
         f"ids, median of {plan.decode_repeats}, {jax.device_count()} x {kind}"),
        (f"{tps:,.0f} new tokens/s in the decode loop, {step_s * 1e3:.2f} ms/step"
         + (f", {utilisation:.1%} of HBM bandwidth" if utilisation is not None else "")
         + f", prefill {timing['prefill_s'] * 1e3:.1f} ms, compile {timing['compile_s']:.1f} s"),
        baseline, utilisation, "decode" if batch == 1 else None, utilisation, record,
        batch=batch, tokens_per_s=round(tps, 1), step_s=step_s, bytes_per_step=int(step_bytes),
        bandwidth_utilisation=None if utilisation is None else round(utilisation, 4),
        compile_s=round(timing["compile_s"], 2), prefill_s=round(timing["prefill_s"], 4),
        goal_note=f"no HBM bandwidth known for {kind}")


# ---------------------------------------------------------------------- 4. train


@contextlib.contextmanager
def kernel_block_sizes(blocks: BlockSizes | None):
    """While it lasts, the flash-attention kernels use `blocks` wherever no block sizes are passed
    (the model passes none): `flash_attention.default_block_sizes` is replaced, then restored."""
    if blocks is None:
        yield
        return
    module = importlib.import_module("lima_jax.kernels.flash_attention")
    original = module.default_block_sizes
    module.default_block_sizes = lambda backend, head_dim: blocks
    try:
        yield
    finally:
        module.default_block_sizes = original


def candidate_overrides(model_plan: TrainModel, candidate: Candidate, plan: Plan) -> list[str]:
    """The run-config KEY=VALUE overrides of one candidate (on lima_jax.train's base config)."""
    return [f"model.preset={model_plan.preset}", *model_plan.overrides, "model.dtype=bfloat16",
            "model.param_dtype=float32", "model.residual_dropout=0.0", f"model.remat={candidate.remat}",
            f"model.attention={candidate.attention}", f"data.max_len={plan.train_length}",
            f"data.global_batch_size={plan.train_rows}"]


def measure_candidate(model_plan: TrainModel, candidate: Candidate, plan: Plan) -> dict[str, Any]:
    """One candidate's train step: compile, a warm-up step, `plan.train_steps` timed steps."""
    from lima_jax.train.bench import Ours, load_config, model_config, synthetic_batch
    from lima_jax.train.config import total_flops_per_token

    config = load_config(None, candidate_overrides(model_plan, candidate, plan))
    model = model_config(config)
    batch = synthetic_batch(plan.train_rows, plan.train_length, model.vocab_size)
    ours = None
    try:
        with kernel_block_sizes(candidate.blocks):
            ours = Ours(config, model, batch)
        ours.step()  # warm-up
        times = [ours.step() for _ in range(plan.train_steps)]
        step_s = statistics.median(times)
        tokens = plan.train_rows * plan.train_length
        flops_per_token = total_flops_per_token(ours.fns.matmul_param_count(), model.n_layers,
                                                plan.train_length, model.n_heads * model.head_dim)
        peak = peak_flops_per_device()
        tps = tokens / step_s
        memory = ours.compiled.memory_analysis()
        temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
        return {"candidate": candidate.label, "step_s": round(step_s, 4), "tokens_per_s": round(tps, 1),
                "mfu": round(flops_per_token * tps / jax.device_count() / peak, 4) if peak else None,
                "compile_s": round(ours.compile_s, 2), "params": int(ours.params),
                "flops_per_token": flops_per_token, "temp_gib": None if temp is None else round(temp / 2**30, 2),
                "shape": (f"D {model.dim}, L {model.n_layers}, N {model.n_heads}, K {model.n_kv_heads}, "
                          f"F {model.mlp_dim}, V {model.vocab_size}")}
    finally:
        del ours
        gc.collect()


def train_part(model_plan: TrainModel, plan: Plan, clock: PartClock, record: bool) -> list[dict[str, Any]]:
    tried = []
    for candidate in plan.candidates:
        if not clock.allows(candidate.label):
            continue
        with clock.item():
            try:
                tried.append(measure_candidate(model_plan, candidate, plan))
            except Exception as err:  # noqa: BLE001 - out of memory, a failed compile: the next one
                tried.append({"candidate": candidate.label, "error": f"{type(err).__name__}: {err}"[:300]})
    return [train_row(model_plan, plan, tried, record)] if tried else []


def train_row(model_plan: TrainModel, plan: Plan, tried: list[dict[str, Any]], record: bool) -> dict[str, Any]:
    """The fastest candidate against the first (the baseline), with every candidate's result."""
    ran = [r for r in tried if "error" not in r]
    best = max(ran, key=lambda r: r["tokens_per_s"], default=None)
    base = tried[0] if "error" not in tried[0] else None
    goal_key = "train_7b" if model_plan.part == "train_7b" else None
    kind = jax.devices()[0].device_kind
    config = (f"{model_plan.description}; seq {plan.train_length}, batch {plan.train_rows}, bfloat16 compute, "
              f"float32 weights + AdamW, synthetic full rows, {plan.train_steps} timed step(s) after one warm-up, "
              f"{jax.device_count()} x {kind}; best of {len(tried)} candidate(s)")
    fmt = lambda r: f"{r['tokens_per_s']:,.0f} tokens/s" + (f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else "")
    if best is None:
        return _row(model_plan.part, model_plan.label, config, "every candidate failed", "", None, goal_key, None,
                    record, candidates=tried, goal_note="no candidate ran")
    baseline = (f"{fmt(base)} ({base['candidate']}: what a run config gives here)" if base
                else f"{tried[0]['candidate']} failed: {tried[0]['error'][:120]}")
    note = f"no peak FLOP/s known for {kind}" if best["mfu"] is None else None
    return _row(model_plan.part, model_plan.label, config, f"{fmt(best)} ({best['candidate']})", baseline,
                best["tokens_per_s"] / base["tokens_per_s"] if base else None, goal_key, best["mfu"], record,
                mfu=best["mfu"], tokens_per_s=best["tokens_per_s"], step_s=best["step_s"], best=best["candidate"],
                params=best["params"], shape=best["shape"], candidates=tried, **({"goal_note": note} if note else {}))


# ---------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    platform = _platform()
    if platform != "gpu" and not args.smoke:
        raise GpuSuiteError(f"no GPU here (jax platform {platform!r}); the suite times Triton kernels, "
                            "cuDNN and HBM on one (use --smoke to check it on CPU with tiny shapes)",
                            where="bench gpu")
    setup = dict(_SETUP) if _SETUP else install_missing(["--smoke"] if args.smoke else [])
    _SETUP.clear()  # a later run in this process measures its own setup and budget
    if args.budget < 0:
        raise GpuSuiteError(f"--budget={args.budget}: must be >= 0", where="bench gpu")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"check", "attention", "decode", "train"})
    if unknown:
        raise GpuSuiteError(f"--parts: unknown {unknown} (check, attention, decode, train)", where="bench gpu")
    plan = Plan.from_args(args)
    budget = Budget(args.budget, start=setup.get("started"))
    record = not plan.smoke
    rows = [_setup_row(setup, record)]
    steps: list[tuple[str, str | None, Callable[[PartClock], list]]] = [
        ("check", "check", lambda clock: check_part(plan, clock, record)),
        ("attention", "attention", lambda clock: attention_part(plan, clock, record)),
        ("decode", "decode", lambda clock: decode_part(plan, clock, record)),
    ] + [(m.part, m.part if m.part in GOALS else None,
          lambda clock, m=m: train_part(m, plan, clock, record)) for m in plan.train_models]
    for part, goal_key, body in steps:
        if part.split("_")[0] not in parts:
            continue
        clock = budget.part(part, plan.smoke)
        start = time.time()
        try:
            produced = body(clock)
        except Exception as err:  # noqa: BLE001 - one broken part must not lose the others' rows
            produced = [_row(part, "failed", "", f"failed: {type(err).__name__}: {err}"[:300], "", None,
                             goal_key, None, record, error=f"{type(err).__name__}: {err}"[:1000])]
        for row in produced:
            row.setdefault("seconds", round(time.time() - start, 2))
        rows.extend(produced)
        if clock.skipped:
            rows.append(_skipped_row(part, clock.skipped, budget, goal_key if not produced else None, record))
    rows.append(_summary_row(rows, budget, record))
    return rows


def _summary_row(rows: list[dict[str, Any]], budget: Budget, record: bool) -> dict[str, Any]:
    goals = [r for r in rows if r.get("goal") and r["part"] != "check"]
    met = sum(bool(r["goal_met"]) for r in goals)
    checks = [r for r in rows if r["part"] == "check" and r.get("goal_met") is not None]
    used = time.time() - budget.start
    return {"name": "gpu/summary", "benchmark": "gpu", "part": "summary",
            "config": f"budget {budget.total_s:.0f} s",
            "figure": (f"{met} of {len(goals)} goal rows met; kernel checks {sum(r['goal_met'] for r in checks)} of "
                       f"{len(checks)} within tolerance; {used:.0f} s"),
            "baseline": f"{budget.total_s:.0f} s budget", "ratio": round(budget.total_s / max(used, 1e-9), 3),
            "goal": None, "goal_met": None, "seconds": round(used, 2),
            "goals": {r["name"]: r["goal_met"] for r in goals}, "record": record,
            "within_budget": used <= budget.total_s}

