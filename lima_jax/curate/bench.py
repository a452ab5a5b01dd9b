"""Dedup benchmark: examples/s of near-duplicate detection (MinHash + LSH) against exhaustive pairs.

Data: ``../shared/data/instruct/random_9k.json`` (Alpaca, prompt + response per example) plus
planted near-duplicates: copies of a random ``--planted`` fraction of the examples with their case,
punctuation and spacing changed and, in texts of 25 words or more, about 3% of the words
replaced, deleted or swapped. Ours: ``dedup.find_duplicate_pairs`` (normalise, shingle, MinHash
signatures, LSH candidates, exact Jaccard to confirm). Baseline, same run, same shingles: the
exact Jaccard similarity of every pair of examples (Python sets, n(n-1)/2 intersections). Both
clocks include shingling. Figure: examples per second of wall time; recall: the planted pairs
each method puts in one cluster (the exhaustive method's recall is the ceiling at this
threshold, since some edits push a short text below it).
"""

from __future__ import annotations

import argparse
import pathlib
import random
import time
from typing import Any

import numpy as np

from lima_jax.curate import dedup
from lima_jax.curate.records import read_records

_SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
VERSIONS = ("datasketch", "numpy", "scipy")  # stamped on the row by lima_jax.bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(_SHARED / "instruct" / "random_9k.json"))
    parser.add_argument("--size", type=int, default=0, help="use the first N examples (0 = all)")
    parser.add_argument("--planted", type=float, default=0.05, help="fraction of examples copied with edits")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle-words", type=int, default=3)
    parser.add_argument("--false-negative-weight", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)


def perturb(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """A near copy: case, punctuation and spacing changed; ~3% of the words edited when the text
    has 25 words or more (fewer words cannot take an edit and stay above a 0.7 Jaccard)."""
    words = text.split()
    if len(words) >= 25:
        for _ in range(max(1, round(0.03 * len(words)))):
            k = rng.randrange(len(words))
            kind = rng.choice(("replace", "delete", "swap"))
            if kind == "replace":
                words[k] = rng.choice(vocabulary)
            elif kind == "delete" and len(words) > 1:
                del words[k]
            elif k + 1 < len(words):
                words[k], words[k + 1] = words[k + 1], words[k]
    out = "  ".join(words) if rng.random() < 0.5 else " ".join(words)
    out = out.upper() if rng.random() < 0.2 else out
    return out.rstrip(".!?") + rng.choice(("!", "...", " ."))


def planted_set(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """texts + near copies of a random ``fraction`` of them, and the (original, copy) pairs."""
    rng = random.Random(seed)
    vocabulary = sorted({w for t in texts[:2000] for w in t.split()})
    chosen = sorted(rng.sample(range(len(texts)), round(fraction * len(texts))))
    copies = [perturb(texts[i], rng, vocabulary) for i in chosen]
    n = len(texts)
    return texts + copies, [(i, n + k) for k, i in enumerate(chosen)]


def exhaustive_pairs(texts: list[str], threshold: float, shingle_words: int) -> list[tuple[int, int]]:
    """Every pair (i < j) whose exact shingle Jaccard is at least ``threshold``: n(n-1)/2 set
    intersections."""
    sets = [frozenset(dedup.shingles(t, shingle_words)) for t in texts]
    sizes = np.array([len(s) for s in sets], np.float64)
    pairs = []
    for i, a in enumerate(sets):
        inter = np.array([len(a & b) for b in sets[i + 1:]], np.float64)
        if not len(inter):
            continue
        union = sizes[i] + sizes[i + 1:] - inter
        similarity = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        pairs += [(i, i + 1 + int(j)) for j in np.flatnonzero(similarity >= threshold)]
    return pairs


def recall(pairs: list[tuple[int, int]], planted: list[tuple[int, int]], n: int) -> float:
    """Fraction of planted pairs whose two texts end up in one cluster."""
    groups = dedup.UnionFind(n)
    for i, j in pairs:
        groups.union(i, j)
    found = sum(groups.find(i) == groups.find(j) for i, j in planted)
    return found / max(len(planted), 1)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if not pathlib.Path(args.data).is_file():
        raise SystemExit(f"error: {args.data} not found (pass --data)")
    records = read_records(args.data)
    if args.size:
        records = records[: args.size]
    texts, planted = planted_set([r.text for r in records], args.planted, args.seed)
    n = len(texts)

    start = time.perf_counter()
    ours = dedup.find_duplicate_pairs(texts, args.threshold, args.num_perm, args.shingle_words,
                                      args.seed + 1, args.false_negative_weight)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    exact = exhaustive_pairs(texts, args.threshold, args.shingle_words)
    base_s = time.perf_counter() - start

    ours_pairs = [(p.i, p.j) for p in ours]
    ours_recall, base_recall = recall(ours_pairs, planted, n), recall(exact, planted, n)
    # Of the pairs the exhaustive search finds, how many LSH finds (directly or through a cluster).
    agreement = recall(ours_pairs, exact, n)
    ours_eps, base_eps = n / ours_s, n / base_s
    name = pathlib.Path(args.data).stem
    return [{
        "name": f"dedup/minhash_lsh/{name}",
        "benchmark": "dedup",
        "config": (f"{name}: {len(records):,} examples + {len(planted):,} planted near-duplicates, prompt + "
                   f"response, word {args.shingle_words}-grams, Jaccard >= {args.threshold}, "
                   f"{args.num_perm} permutations, LSH false-negative weight {args.false_negative_weight}"),
        "examples": n,
        "planted": len(planted),
        "seconds": round(ours_s, 3),
        "examples_per_s": round(ours_eps, 1),
        "recall_planted": round(ours_recall, 4),
        "baseline_seconds": round(base_s, 3),
        "baseline_examples_per_s": round(base_eps, 1),
        "baseline_recall_planted": round(base_recall, 4),
        "recall_of_exhaustive_pairs": round(agreement, 4),
        "pairs_found": len(ours),
        "baseline_pairs_found": len(exact),
        "figure": (f"{ours_eps:,.0f} examples/s, recall of planted duplicates {ours_recall:.1%} "
                   f"({agreement:.1%} of the exhaustive search's pairs)"),
        "baseline": (f"{base_eps:,.0f} examples/s, recall {base_recall:.1%} (exhaustive pairwise exact "
                     "Jaccard, Python sets)"),
        "ratio": round(ours_eps / base_eps, 2),
    }]
