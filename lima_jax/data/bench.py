"""Data benchmark: tokens/s from the LIMA train file to packed batches, against a plain baseline.

Ours: ``build_pipeline`` (read, SentencePiece + LIMA template, trim, best-fit plan) and iterating
every batch of one epoch, with 0 and N grain workers; the clock runs from the file to the last
batch, so fixed costs (tokenizer load, worker start-up) are included. Baseline, in the same
process: ``transformers``' LLaMA tokenizer (batched call, Rust backend) and the same template,
trimming and first-fit packing written as a plain Python loop over lists. Figure: real (non-pad)
tokens in the batches per second of wall time, median of ``--repeats`` runs.

Per tokenizer backend (``--backends``): every utterance of the data file through
``Tokenizer.encode_batch`` (``--threads`` threads, and 1 thread where the backend takes a count),
tokens per second of encoding (load time reported apart), against the reference each backend is
tested against, ids compared: ``sentencepiece`` (``--tokenizer``, LLaMA's) vs the sentencepiece
library one text at a time (Meta's LLaMA code); ``tokenizers`` (``--tokenizer-json``, by default
``--llama3-tokenizer`` converted to tokenizer.json by transformers) vs transformers' AutoTokenizer,
batched; ``tiktoken`` (``--llama3-tokenizer``, Meta's file) vs tiktoken one text at a time as Meta's
Llama 3 code calls it. A row that cannot run here (no transformers, no file) says why and is not
recorded.

``python -m lima_jax.bench data`` or ``python -m lima_jax.data.bench`` (the same arguments).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from lima_jax.data.config import get_default_data_config
from lima_jax.data.pipeline import build_pipeline
from lima_jax.data.readers import read_conversations
from lima_jax.data.tokenizer import Tokenizer
from lima_jax.errors import LimaError
from lima_jax.jsonl import read_records

_SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
GOAL_TOKENS_PER_S = 120_000
GOAL_EFFICIENCY = 0.95
BACKENDS = ("sentencepiece", "tokenizers", "tiktoken")
VERSIONS = ("grain", "sentencepiece", "numpy", "transformers", "tokenizers", "tiktoken")  # stamped by lima_jax.bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(_SHARED / "lima" / "train.jsonl"))
    parser.add_argument("--tokenizer", default=str(_SHARED / "tokenizer" / "llama" / "tokenizer.model"))
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="N for the N-worker measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs of batches per measurement (fixed costs are paid once)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"tokenizer backends to time on the data's utterances: comma-separated of "
                             f"{', '.join(BACKENDS)}, or none")
    parser.add_argument("--llama3-tokenizer", default=str(_SHARED / "tokenizer" / "llama3" / "tokenizer.model"),
                        help="Meta's Llama 3 tokenizer.model (tiktoken) for the tiktoken row")
    parser.add_argument("--tokenizer-json", default="",
                        help="tokenizer.json (or its directory) for the tokenizers row; default: "
                             "--llama3-tokenizer converted by transformers")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for encode_batch in the backend rows")


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


class _Skip(LimaError):
    """A backend row that cannot run here; the message says why."""


def _llama3_tokenizer_json(model: str, out: pathlib.Path) -> pathlib.Path:
    """Meta's Llama 3 tiktoken file as a tokenizer.json directory, by transformers' own converter."""
    if not pathlib.Path(model).is_file():
        raise _Skip(f"{model} not found (pass --llama3-tokenizer or --tokenizer-json)")
    try:
        from tokenizers import AddedToken
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError as e:
        raise _Skip(f"transformers is needed to convert {model} to tokenizer.json ({e})") from None
    from lima_jax.data.tokenizer_backends import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS

    converted = TikTokenConverter(model, pattern=LLAMA3_PATTERN).converted()
    converted.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS])
    PreTrainedTokenizerFast(tokenizer_object=converted, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(out)
    return out


def _median_times(calls: dict[str, Any], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds of each call over ``repeats`` rounds, after one untimed warm-up round; the calls
    take turns within a round, starting one further on each round, so that none gains from its place.
    Also each call's result."""
    results = {name: call() for name, call in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(max(1, repeats)):
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            start = time.perf_counter()
            results[name] = calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def _reference(backend: str, source: str, texts: list[str]) -> tuple[str, Any]:
    """(name, a call encoding ``texts`` as the reference the tests hold the backend to)."""
    if backend == "sentencepiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=source)
        return "sentencepiece, one text at a time", lambda: [sp.encode(t) for t in texts]
    if backend == "tiktoken":
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        from lima_jax.data.tokenizer_backends import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS

        ranks = load_tiktoken_bpe(source)
        enc = tiktoken.Encoding(name="llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                special_tokens={t: len(ranks) + i for i, t in enumerate(LLAMA3_SPECIAL_TOKENS)})
        return ("tiktoken Encoding.encode, one text at a time (Meta's Llama 3 code)",
                lambda: [enc.encode(t, allowed_special=set(), disallowed_special=()) for t in texts])
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return "", None
    tok = AutoTokenizer.from_pretrained(source)
    return ("transformers AutoTokenizer, batched",
            lambda: tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _backend_row(args: argparse.Namespace, backend: str, texts: list[str], tmp: pathlib.Path) -> dict[str, Any]:
    """One backend's tokens/s on ``texts`` (or a row saying why it was skipped)."""
    name = f"data/tokenize_utterances/{backend}"
    try:
        if backend == "sentencepiece":
            source, what = args.tokenizer, f"{pathlib.Path(args.tokenizer).name} (SentencePiece)"
        elif backend == "tiktoken":
            source, what = args.llama3_tokenizer, "Llama 3 tokenizer.model (tiktoken)"
            if not pathlib.Path(source).is_file():
                raise _Skip(f"{source} not found (pass --llama3-tokenizer)")
        elif args.tokenizer_json:
            source, what = args.tokenizer_json, f"{args.tokenizer_json} (tokenizer.json)"
        else:
            source = str(_llama3_tokenizer_json(args.llama3_tokenizer, tmp / "llama3_json"))
            what = "Llama 3 converted to tokenizer.json"
        start = time.perf_counter()
        tok = Tokenizer.load(source)
        load_s = time.perf_counter() - start
        if tok.kind != backend:
            raise _Skip(f"{source} is a {tok.kind} tokenizer, not {backend}")
        if backend == "tokenizers" and pathlib.Path(source).is_file():
            source = str(pathlib.Path(source).parent)  # AutoTokenizer wants the directory
    except _Skip as e:
        return {"benchmark": "data", "name": name, "config": f"{backend} backend", "figure": f"skipped: {e}",
                "skipped": str(e), "record": False}
    calls = {"ours": lambda: tok.encode_batch(texts, num_threads=args.threads)}
    if backend != "tokenizers":  # `tokenizers` runs its own pool (RAYON_NUM_THREADS), whatever we ask
        calls["one_thread"] = lambda: tok.encode_batch(texts, num_threads=1)
    ref_name, ref_call = _reference(backend, source, texts)
    if ref_call is not None:
        calls["reference"] = ref_call
    times, results = _median_times(calls, args.repeats)
    seconds, ids = times["ours"], results["ours"]
    tokens = sum(map(len, ids))
    tps = tokens / seconds
    one_thread = tokens / times["one_thread"] if "one_thread" in times else None
    row = {
        "benchmark": "data", "name": name,
        "config": (f"{len(texts):,} utterances of {pathlib.Path(args.data).name}, {what}, "
                   f"encode_batch, {args.threads} threads"),
        "backend": backend, "utterances": len(texts), "tokens": tokens, "seconds": round(seconds, 3),
        "load_s": round(load_s, 3), "tokens_per_s": round(tps),
        "tokens_per_s_1_thread": None if one_thread is None else round(one_thread),
        "figure": (f"{tps:,.0f} tokens/s" + ("" if one_thread is None else f" ({one_thread:,.0f} on 1 thread)")
                   + f", load {load_s:.2f} s"),
        "goal_met": min(tps, one_thread or tps) >= GOAL_TOKENS_PER_S,
    }
    if ref_call is not None:
        ref_tps, ref_ids = tokens / times["reference"], results["reference"]
        row.update({"baseline_name": ref_name, "baseline_tokens_per_s": round(ref_tps),
                    "baseline": f"{ref_tps:,.0f} tokens/s ({ref_name})", "ratio": round(tps / ref_tps, 2),
                    "same_ids_as_baseline": [list(r) for r in ref_ids] == ids})
    return row


def _backend_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    chosen = [b.strip() for b in args.backends.split(",") if b.strip() and b.strip() != "none"]
    unknown = sorted(set(chosen) - set(BACKENDS))
    if unknown:
        raise SystemExit(f"error: unknown backend(s) {', '.join(unknown)} (known: {', '.join(BACKENDS)})")
    if not chosen:
        return []
    texts = [turn.text for c in read_conversations(args.data).conversations for turn in c.turns]
    with tempfile.TemporaryDirectory() as tmp:
        return [_backend_row(args, backend, texts, pathlib.Path(tmp)) for backend in chosen]


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
    return rows + _backend_rows(args)


if __name__ == "__main__":  # python -m lima_jax.data.bench [args]: as python -m lima_jax.bench data
    from lima_jax.bench import main

    sys.exit(main(["data", *sys.argv[1:]]))
