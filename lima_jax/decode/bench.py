"""Decoding benchmark: new tokens/s of our KV-cache generator against transformers' `generate`.

Ours: `lima_jax.decode.Generator` (jitted prefill, then the whole decode loop in one jitted
`lax.while_loop`), greedy, no stop ids so every row writes exactly N new tokens. The first call
compiles (clocked apart, `compile_s`); then `--repeats` timed calls, median kept, each split into
prefill and decode-loop time. Baseline, same process, same weights, same prompts:
`transformers.LlamaForCausalLM.generate(do_sample=False, min_new_tokens=N, max_new_tokens=N)`
with its KV cache (sdpa attention, float32, torch at all cores and at 1 thread, the faster kept:
on a loaded 2-core machine OpenMP barriers can make 2 threads slower than 1). The ratio is
end-to-end (prefill + decode on both sides, as `generate` cannot time them apart); our
decode-loop-only rate is reported beside it. Models: the stories260K checkpoint (when
`../shared/data` has it) and a ~134M-parameter random model (preset `100m`), at batch 1 and 16.

On accelerators the record adds the bytes a decode step must read (parameters + the KV cache)
and, where the chip's memory bandwidth is known (`lima_jax.chips`), the bandwidth utilisation;
both are null on CPU, where no figure is claimed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from lima_jax.chips import peak_bandwidth
from lima_jax.decode import Generator, SamplingConfig
from lima_jax.model import Llama, get_preset

GOAL_RATIO = 3.0
STORIES = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "checkpoints" / "stories260K-hf"
VERSIONS = ("jax", "jaxlib", "flax", "torch", "transformers")  # stamped by lima_jax.bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated (GPU: 1,64)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=0,
                        help="new tokens per row (default: 128 stories260K, 32 for 100m)")
    parser.add_argument("--models", default="stories260K,100m", help="stories260K and/or 100m")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side (median)")
    parser.add_argument("--torch-threads", default="", help="thread counts to try (default: all cores, 1)")


def _models(names: list[str]):
    """(label, lima_jax model, transformers model, default new tokens) per requested model."""
    import tempfile

    from transformers import LlamaForCausalLM

    from lima_jax.decode.load import load_for_decoding
    from lima_jax.model import to_hf

    for name in names:
        if name == "stories260K":
            if not STORIES.is_dir():
                print(f"decode bench: {STORIES} absent; skipping stories260K")
                continue
            model, _ = load_for_decoding(hf=str(STORIES))
            hf = LlamaForCausalLM.from_pretrained(STORIES)
            yield "stories260K", model, hf, 128
        elif name == "100m":
            config = get_preset("100m").replace(dtype="float32", scan_unroll=0)
            model = Llama(config, rngs=nnx.Rngs(0))
            with tempfile.TemporaryDirectory() as tmp:  # the same weights on both sides
                to_hf(model, tmp)
                hf = LlamaForCausalLM.from_pretrained(tmp)
            yield "100m", model, hf, 32
        else:
            raise SystemExit(f"error: --models: unknown model {name!r} (stories260K, 100m)")


def _time_ours(generator: Generator, prompts, new_tokens: int, repeats: int) -> dict[str, Any]:
    sampling = SamplingConfig.greedy_config()
    first = generator.generate(prompts, sampling=sampling, max_new_tokens=new_tokens)
    compile_s = generator.timing.compile_s
    prefill, decode = [], []
    for _ in range(repeats):
        time.sleep(0.2)  # let worker threads of the other side go idle
        out = generator.generate(prompts, sampling=sampling, max_new_tokens=new_tokens)
        prefill.append(generator.timing.prefill_s)
        decode.append(generator.timing.decode_s)
    assert all(len(g.tokens) == new_tokens for g in out + first)
    return {"compile_s": compile_s, "prefill_s": statistics.median(prefill),
            "decode_s": statistics.median(decode), "tokens": out[0].tokens}


def _time_hf(hf, prompts, new_tokens: int, repeats: int, threads) -> tuple[float, int, list[int]]:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    best, best_threads, tokens = None, None, None
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
              "num_beams": 1, "use_cache": True, "attention_mask": torch.ones_like(ids),
              "pad_token_id": 0}
    hf.config._attn_implementation = "sdpa"
    for n in threads:
        torch.set_num_threads(n)
        with torch.no_grad():
            out = hf.generate(ids, **kwargs)  # warm-up
            times = []
            for _ in range(repeats):
                time.sleep(0.2)
                start = time.perf_counter()
                out = hf.generate(ids, **kwargs)
                times.append(time.perf_counter() - start)
        median = statistics.median(times)
        if best is None or median < best:
            best, best_threads, tokens = median, n, out[0, ids.shape[1]:].tolist()
    return best, best_threads, tokens


def measure(label, model, hf, batch: int, prompt_len: int, new_tokens: int, repeats: int,
            threads, generator: Generator) -> dict[str, Any]:
    config = model.config
    rng = np.random.default_rng(batch)
    prompts = rng.integers(3, config.vocab_size, (batch, prompt_len)).astype(np.int32)
    prompts[:, 0] = config.bos_token_id or 1
    ours = _time_ours(generator, prompts.tolist(), new_tokens, repeats)
    hf_s, hf_threads, hf_tokens = _time_hf(hf, prompts.tolist(), new_tokens, repeats, threads)
    new = batch * new_tokens
    decode_tps = new / ours["decode_s"]
    e2e_tps = new / (ours["prefill_s"] + ours["decode_s"])
    hf_tps = new / hf_s
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    params = sum(x.size * x.dtype.itemsize for x in leaves)
    cache_len = min(prompt_len + new_tokens, max(config.max_seq_len, prompt_len))
    cache_bytes = (2 * config.n_layers * batch * cache_len * config.n_kv_heads * config.head_dim
                   * np.dtype(config.dtype).itemsize)
    step_s = ours["decode_s"] / new_tokens
    peak = peak_bandwidth()
    utilisation = (params + cache_bytes) / step_s / jax.device_count() / peak if peak else None
    kind = jax.devices()[0].device_kind
    return {
        "benchmark": "decode",
        "name": f"decode/{label}/b{batch}",
        "config": (f"{label}: D={config.dim} L={config.n_layers} N={config.n_heads} "
                   f"K={config.n_kv_heads} V={config.vocab_size}, {sum(x.size for x in leaves) / 1e6:.1f}M params, "
                   f"{config.dtype}, batch {batch}, prompt {prompt_len}, {new_tokens} new tokens, "
                   f"greedy, {jax.device_count()} x {kind}, median of {repeats}"),
        "baseline_name": f"transformers generate (KV cache, sdpa, float32, {hf_threads} threads)",
        "batch": batch,
        "new_tokens": new,
        "compile_s": round(ours["compile_s"], 2),
        "prefill_s": round(ours["prefill_s"], 4),
        "decode_s": round(ours["decode_s"], 4),
        "decode_tokens_per_s": round(decode_tps, 1),
        "tokens_per_s": round(e2e_tps, 1),
        "baseline_s": round(hf_s, 4),
        "baseline_tokens_per_s": round(hf_tps, 1),
        "greedy_tokens_equal_row0": ours["tokens"] == hf_tokens,
        "bytes_per_step": int(params + cache_bytes),
        "bandwidth_utilisation": None if utilisation is None else round(utilisation, 4),
        "figure": (f"{e2e_tps:,.0f} new tokens/s end-to-end ({decode_tps:,.0f} decode loop only), "
                   f"prefill {ours['prefill_s'] * 1e3:.1f} ms, compile {ours['compile_s']:.1f}s"),
        "baseline": f"{hf_tps:,.0f} new tokens/s (transformers generate, KV cache, {hf_threads} threads)",
        "ratio": round(e2e_tps / hf_tps, 2),
        "goal_met": e2e_tps / hf_tps >= GOAL_RATIO,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    threads = tuple(int(t) for t in args.torch_threads.split(",")) if args.torch_threads else tuple(
        dict.fromkeys((os.cpu_count() or 1, 1)))
    rows = []
    for label, model, hf, default_new in _models(args.models.split(",")):
        generator = Generator(model)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            rows.append(measure(label, model, hf, batch, args.prompt_len,
                                args.new_tokens or default_new, args.repeats, threads, generator))
    return rows
