"""Helpers for the data tests: fixture paths, a tiny SentencePiece model, LIMA-like files.

The tiny tokenizer is trained once per test session (train_tokenizer caches it by a hash of its
corpus under pytest's session temp dir), so every test module can ask for it cheaply.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from lima_jax.data.tokenizer import Tokenizer, train_tokenizer

FIXTURES = pathlib.Path(__file__).resolve().parent
SOURCES = ("stackexchange", "wikihow", "writingprompts", "nlp", "authors")
_WORDS = (
    "the a model data token turn user assistant answer question rain garden cloud river stone "
    "light water sugar paris france egg minute color blue red green apple plan trip winter warm "
    "island weather flight joke award field plant carbon oxygen end stop talk write read learn "
    "small large fast slow one two three four five six seven eight nine ten because and or but"
).split()


def sentence(rng: np.random.Generator, n_words: int) -> str:
    words = rng.choice(_WORDS, size=max(1, n_words))
    return " ".join(words).capitalize() + "."


def corpus(n: int = 800, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [sentence(rng, int(rng.integers(3, 30))) for _ in range(n)]


def tiny_tokenizer(cache_dir: pathlib.Path) -> Tokenizer:
    """A ~400-piece BPE model trained on a synthetic corpus (cached in cache_dir)."""
    return Tokenizer.load(train_tokenizer(corpus(), cache_dir, vocab_size=400))


def write_lima_like(path: pathlib.Path, n: int, seed: int = 0, multi_turn_every: int = 7,
                    long_every: int = 0, words: tuple[int, int] = (2, 20)) -> pathlib.Path:
    """Writes n LIMA-format lines with random lengths; every k-th is multi-turn (4 turns)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            turns = 4 if multi_turn_every and i % multi_turn_every == 3 else 2
            conv = [sentence(rng, int(rng.integers(*words))) for _ in range(turns)]
            if long_every and i % long_every == 1:
                conv[-1] = " ".join(sentence(rng, 40) for _ in range(20))
            f.write(json.dumps({"conversations": conv, "source": SOURCES[i % len(SOURCES)]}) + "\n")
    return path
