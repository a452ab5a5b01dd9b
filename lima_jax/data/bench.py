"""Data benchmark: tokens/s from the LIMA train file to packed batches, against a plain baseline.

Ours: ``build_pipeline`` (read, SentencePiece + LIMA template, trim, best-fit plan) and iterating
every batch of one epoch, with 0 and N grain workers; the clock runs from the file to the last
batch, so fixed costs (tokenizer load, worker start-up) are included. Baseline, in the same
process: ``transformers``' LLaMA tokenizer (batched call, Rust backend) and the same template,
trimming and first-fit packing written as a plain Python loop over lists. Figure: real (non-pad)
tokens in the batches per second of wall time, median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import shutil
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from lima_jax.data.config import get_default_data_config
from lima_jax.data.pipeline import build_pipeline
from lima_jax.jsonl import read_records

_SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
GOAL_TOKENS_PER_S = 120_000
GOAL_EFFICIENCY = 0.95
VERSIONS = ("grain", "sentencepiece", "numpy", "transformers", "tokenizers")  # stamped by lima_jax.bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(_SHARED / "lima" / "train.jsonl"))
    parser.add_argument("--tokenizer", default=str(_SHARED / "tokenizer" / "llama" / "tokenizer.model"))
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="N for the N-worker measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs of batches per measurement (fixed costs are paid once)")


def _ours(args: argparse.Namespace, workers: int) -> tuple[float, int, float, float]:
    """(seconds, real tokens, packing efficiency, seconds to the first batch)."""
    config = get_default_data_config()
    config.path, config.tokenizer = args.data, args.tokenizer
    config.max_len, config.global_batch_size = args.max_len, args.batch_size
    config.pack, config.num_epochs, config.worker_count = True, args.epochs, workers
    config.process_index, config.process_count = 0, 1
    start = time.perf_counter()
    pipeline = build_pipeline(config)
    iterator = pipeline.iterator()
    tokens, first = 0, None
    for batch in iterator:
        tokens += int(np.count_nonzero(batch["segment_ids"]))
        first = first or time.perf_counter() - start
    seconds = time.perf_counter() - start
    if hasattr(iterator, "close"):
        iterator.close()
    return seconds, tokens, pipeline.packing_efficiency(), first


def _baseline(args: argparse.Namespace) -> tuple[float, int]:
    """(seconds, real tokens): transformers tokenizer + a plain Python first-fit packing loop.

    Tokenizes once, then packs ``args.epochs`` epochs (reshuffled), like the pipeline does.
    """
    from transformers import LlamaTokenizer  # noqa: PLC0415 (test-only dependency)

    with tempfile.TemporaryDirectory() as model_dir:
        # from_pretrained wants a directory holding a file named tokenizer.model.
        shutil.copy(args.tokenizer, pathlib.Path(model_dir) / "tokenizer.model")
        start = time.perf_counter()
        tok = LlamaTokenizer.from_pretrained(model_dir)
    eot, t = len(tok), args.max_len
    records = read_records(args.data)
    encoded = iter(tok([u for r in records for u in r["conversations"]],
                       add_special_tokens=False)["input_ids"])
    examples = []
    for r in records:
        ids, mask = [tok.bos_token_id], [0]
        turns = r["conversations"][: len(r["conversations"]) // 2 * 2]  # drop a trailing prompt
        for j in range(len(r["conversations"])):
            piece = next(encoded)
            if j < len(turns):
                ids += piece + [eot]
                mask += [j % 2] * (len(piece) + 1)
        examples.append((ids[: t + 1], mask[: t + 1]))
    rows: list[list[Any]] = []  # [free, [examples]]
    for epoch in range(args.epochs):
        random.Random(epoch).shuffle(examples)
        rows += _first_fit(examples, t)
    tokens = 0
    for first in range(0, len(rows), args.batch_size):
        batch = {k: [] for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions")}
        for _, row in rows[first:first + args.batch_size]:
            tk, tg, lm, sg, ps = [], [], [], [], []
            for s, (ids, mask) in enumerate(row, start=1):
                tk += ids[:-1]
                tg += ids[1:]
                lm += mask[1:]
                sg += [s] * (len(ids) - 1)
                ps += list(range(len(ids) - 1))
            pad = t - len(tk)
            tokens += len(tk)
            for key, v in zip(batch, (tk, tg, lm, sg, ps), strict=True):
                batch[key].append(v + [0] * pad)
        _ = {k: np.array(v, np.float32 if k == "loss_mask" else np.int32) for k, v in batch.items()}
    return time.perf_counter() - start, tokens


def _first_fit(examples: list, t: int) -> list[list[Any]]:
    rows: list[list[Any]] = []  # [free, [examples]]
    for ex in examples:
        need = len(ex[0]) - 1
        for row in rows:
            if row[0] >= need:
                row[0] -= need
                row[1].append(ex)
                break
        else:
            rows.append([t - need, [ex]])
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    for path in (args.data, args.tokenizer):
        if not pathlib.Path(path).is_file():
            raise SystemExit(f"error: {path} not found (pass --data and --tokenizer)")
    baseline = [_baseline(args) for _ in range(args.repeats)]
    base_s = statistics.median(s for s, _ in baseline)
    base_tps = baseline[0][1] / base_s
    common = {
        "benchmark": "data",
        "baseline_name": "transformers LlamaTokenizer + plain Python first-fit packing",
        "baseline_tokens_per_s": round(base_tps),
        "baseline": f"{base_tps:,.0f} tokens/s (transformers LlamaTokenizer + Python packing loop)",
    }
    rows = []
    for workers in (0, args.workers):
        runs = [_ours(args, workers) for _ in range(args.repeats)]
        seconds = statistics.median(r[0] for r in runs)
        _, tokens, eff, _ = runs[0]
        tps = tokens / seconds
        rows.append({
            **common,
            "name": f"data/lima_train_to_packed_batches/{workers}_workers",
            "config": (f"LIMA train, llama tokenizer, template lima, max_len {args.max_len}, "
                       f"batch {args.batch_size}, best_fit, {args.epochs} epoch(s), {workers} workers"),
            "workers": workers,
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "first_batch_s": round(statistics.median(r[3] for r in runs), 3),
            "tokens_per_s": round(tps),
            "packing_efficiency": round(eff, 4),
            "figure": f"{tps:,.0f} tokens/s, packing efficiency {eff:.1%}",
            "ratio": round(tps / base_tps, 2),
            "goal_met": tps >= GOAL_TOKENS_PER_S and eff >= GOAL_EFFICIENCY,
        })
    return rows
