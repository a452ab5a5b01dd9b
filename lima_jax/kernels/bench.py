"""Attention benchmark: Pallas flash attention against cuDNN and XLA attention.

For LLaMA shapes (T 2048, 4096, 8192; H 128; N 32 with K 32 and 8; bfloat16; B*T = 16k
tokens per call) it times the forward and the forward+backward (the gradients of q, k, v)
of each implementation, jitted, compile clocked apart, median of `--repeats` calls each
blocked on its result. FLOPs are the causal count: 4*B*T*T*N*H / 2 forward, 2.5x that
backward. Implementations, same process, same inputs:

* `pallas`: `lima_jax.kernels.flash_attention` (Triton on GPU, Mosaic on TPU);
* `cudnn`: `jax.nn.dot_product_attention(implementation='cudnn', is_causal=True)`;
* `xla`: `jax.nn.dot_product_attention(implementation='xla', is_causal=True)`.

Packed rows (4 examples per row) need a mask: `pallas` takes segment ids, the others an
explicit [B, 1, T, T] boolean mask, and the best of those is the baseline. Each figure
comes with the compiled call's temporary memory (a [T, T] buffer shows there) and, on a
chip whose peak is known, its MFU.

On CPU there is no kernel to time: `--smoke` runs the same code on tiny shapes with the
TPU kernel interpreted, to check the benchmark itself; its rows are printed, not recorded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lima_jax.chips import peak_flops_per_device
from lima_jax.kernels.blocks import BlockSizes
from lima_jax.kernels.flash_attention import default_backend, flash_attention

TOKENS_PER_CALL = 16384
SEGMENTS_PER_ROW = 4
# Stamped on every row by lima_jax.bench: the timed device leads the hardware.
VERSIONS = ("jax", "jaxlib", "jax-cuda13-plugin", "libtpu")
DEVICE_IN_HARDWARE = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default="2048,4096,8192", help="comma-separated T")
    parser.add_argument("--kv-heads", default="32,8", help="comma-separated K (N is 32)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls (median)")
    parser.add_argument("--block-sizes", default="",
                        help="6 comma-separated sizes (BlockSizes fields; default per backend)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, interpreted kernel: checks the benchmark on CPU")


def random_packing(rng: np.random.Generator, batch: int, t: int) -> np.ndarray:
    """[B, T] segment ids: 1 to 4 examples of random lengths, then random trailing padding (up
    to half the row): the packed rows the kernels are checked on, here and in the tests."""
    out = np.zeros((batch, t), np.int32)
    for row in range(batch):
        used = int(rng.integers(t // 2, t + 1))
        count = int(rng.integers(1, 5))
        cuts = np.sort(rng.choice(np.arange(1, used), size=count - 1, replace=False)) if count > 1 else []
        bounds = [0, *cuts, used]
        for s in range(count):
            out[row, bounds[s]:bounds[s + 1]] = s + 1
    return out


def relative_error(x, reference) -> float:
    """max |x - ref| / max |ref|, in float32."""
    x, reference = np.asarray(x, np.float32), np.asarray(reference, np.float32)
    return float(np.abs(x - reference).max() / np.abs(reference).max())


def causal_flops(b: int, t: int, n: int, h: int, backward: bool) -> float:
    forward = 4.0 * b * t * t * n * h / 2
    return forward * (3.5 if backward else 1.0)


def packed_segment_ids(b: int, t: int) -> jax.Array:
    return jnp.asarray(np.repeat(np.arange(1, SEGMENTS_PER_ROW + 1), t // SEGMENTS_PER_ROW)[None]
                       .repeat(b, 0).astype(np.int32))


def _implementations(platform: str, smoke: bool, blocks: BlockSizes | None):
    """name -> attend(q, k, v, segment_ids or None, mask or None)."""
    if smoke:
        pallas = lambda q, k, v, s, m: flash_attention(
            q, k, v, segment_ids=s, backend="tpu", interpret=True, block_sizes=blocks)
    else:
        pallas = lambda q, k, v, s, m: flash_attention(q, k, v, segment_ids=s,
                                                       block_sizes=blocks)
    impls = {"pallas": pallas}
    names = ("cudnn", "xla") if platform == "gpu" else ("xla",)
    for name in names:
        impls[name] = (lambda impl: lambda q, k, v, s, m: jax.nn.dot_product_attention(
            q, k, v, mask=m, is_causal=True, implementation=impl))(name)
    return impls


def _time(fn: Callable, args, repeats: int) -> tuple[float, float, int]:
    """(compile s, median call s, temp bytes) of jit(fn)(*args)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp = int(getattr(memory, "temp_size_in_bytes", 0) or 0) if memory is not None else 0
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times), temp


def measure(t: int, n: int, k: int, h: int, *, packed: bool, impls: dict, repeats: int,
            dtype=jnp.bfloat16, tokens: int = TOKENS_PER_CALL) -> list[dict[str, Any]]:
    """One measurement per implementation and pass (forward, forward+backward)."""
    b = max(1, tokens // t)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (b, t, n, h), dtype)
    kk = jax.random.normal(keys[1], (b, t, k, h), dtype)
    v = jax.random.normal(keys[2], (b, t, k, h), dtype)
    seg = packed_segment_ids(b, t) if packed else None
    mask = (seg[:, None, :, None] == seg[:, None, None, :]) if packed else None
    out = []
    for name, attend in impls.items():
        forward = lambda q_, k_, v_, a=attend: a(q_, k_, v_, seg, mask)
        both = jax.grad(lambda q_, k_, v_, f=forward: jnp.sum(f(q_, k_, v_).astype(jnp.float32)),
                        argnums=(0, 1, 2))
        for label, fn, backward in (("fwd", forward, False), ("fwd+bwd", both, True)):
            try:
                compile_s, seconds, temp = _time(fn, (q, kk, v), repeats)
            except Exception as err:  # noqa: BLE001 - an implementation missing here is a row, not a crash
                out.append({"impl": name, "pass": label, "error": f"{type(err).__name__}: {err}"[:200]})
                continue
            out.append({"impl": name, "pass": label, "seconds": seconds, "compile_s": compile_s,
                        "temp_bytes": temp,
                        "tflops": causal_flops(b, t, n, h, backward) / seconds / 1e12,
                        "batch": b})
    return out


def _rows(results: list[dict], t: int, n: int, k: int, h: int, packed: bool,
          record: bool, dtype_name: str) -> list[dict[str, Any]]:
    peak = peak_flops_per_device()
    rows = []
    for label in ("fwd", "fwd+bwd"):
        by_impl = {r["impl"]: r for r in results if r["pass"] == label and "error" not in r}
        errors = {r["impl"]: r["error"] for r in results if r["pass"] == label and "error" in r}
        ours = by_impl.get("pallas")
        others = {name: r for name, r in by_impl.items() if name != "pallas"}
        if packed:
            baseline_name = max(others, key=lambda name: others[name]["tflops"], default=None)
        else:
            baseline_name = "cudnn" if "cudnn" in others else next(iter(others), None)
        base = others.get(baseline_name)
        config = (f"{'packed x' + str(SEGMENTS_PER_ROW) if packed else 'unpacked'} causal, "
                  f"T {t}, N {n}, K {k}, H {h}, {dtype_name}, B {ours['batch'] if ours else '?'}")
        row = {"name": f"attention {label} {'packed' if packed else 'unpacked'} T{t} K{k}",
               "benchmark": "attention", "config": config, "record": record,
               "pass": label, "implementations": {name: {key: r[key] for key in
                                                         ("tflops", "seconds", "compile_s", "temp_bytes")}
                                                  for name, r in by_impl.items()},
               "errors": errors}
        if ours:
            row["figure"] = f"{ours['tflops']:.3g} TFLOP/s"
            row["mfu"] = ours["tflops"] * 1e12 / peak if peak else None
        else:
            row["figure"] = f"pallas failed: {errors.get('pallas', 'not run')}"
        if ours and base:
            row["baseline"] = f"{baseline_name}{' (masked)' if packed else ''} {base['tflops']:.3g} TFLOP/s"
            row["ratio"] = round(ours["tflops"] / base["tflops"], 3)
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    platform = default_backend()
    if platform is None and not args.smoke:
        raise SystemExit("bench attention: no GPU or TPU here; the kernels can only be timed on "
                         "one (use --smoke to check the benchmark on CPU with tiny shapes)")
    blocks = BlockSizes(*map(int, args.block_sizes.split(","))) if args.block_sizes else None
    if args.smoke:
        shapes, n, h, repeats, tokens, dtype = [(256, 4)], 8, 64, 1, 256, jnp.float32
    else:
        shapes = [(int(t), int(k)) for t in args.lengths.split(",") for k in args.kv_heads.split(",")]
        n, h, repeats, tokens, dtype = 32, 128, args.repeats, TOKENS_PER_CALL, jnp.bfloat16
    impls = _implementations(platform or "cpu", args.smoke, blocks)
    rows = []
    for t, k in shapes:
        for packed in (False, True):
            results = measure(t, n, k, h, packed=packed, impls=impls, repeats=repeats,
                              dtype=dtype, tokens=tokens)
            rows.extend(_rows(results, t, n, k, h, packed, record=not args.smoke,
                              dtype_name=jnp.dtype(dtype).name))
    return rows
