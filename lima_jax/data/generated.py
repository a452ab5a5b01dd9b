"""A generated instruction-following data set for the CPU demo, in LIMA's JSONL format.

Four kinds of request, each with one right answer a small model can learn in minutes:
repeat a word N times, sort three words, pick the larger of two numbers, name the
last of several words. Held-out prompts use word and number combinations that never
appear in training, so a good held-out score means the model learned the rule, not
the examples. Generation is deterministic in the seed.
"""

from __future__ import annotations

import pathlib
import random

from lima_jax.jsonl import write_jsonl

WORDS = (
    "apple river stone cloud tiger lemon piano rocket garden silver window candle forest "
    "planet orange yellow bridge castle dragon meadow pepper rabbit saddle tomato violet "
    "wizard anchor basket cotton dinner engine falcon ginger harbor island jungle kettle "
    "ladder marble needle oyster pencil quartz ribbon spider turtle velvet walnut zipper"
).split()
NUMBER_WORDS = ("two", "three", "four")


def _repeat(rng: random.Random):
    word, times = rng.choice(WORDS), rng.randrange(len(NUMBER_WORDS))
    return (f"Repeat the word {word} {NUMBER_WORDS[times]} times.",
            " ".join([word] * (times + 2)), ("repeat", word, times))


def _sort(rng: random.Random):
    words = rng.sample(WORDS, 3)
    return (f"Sort these words alphabetically: {', '.join(words)}.",
            ", ".join(sorted(words)), ("sort", *sorted(words)))


def _larger(rng: random.Random):
    a, b = rng.sample(range(10, 100), 2)
    return (f"Which number is larger, {a} or {b}?", f"{max(a, b)} is larger.",
            ("larger", min(a, b), max(a, b)))


def _last(rng: random.Random):
    words = rng.sample(WORDS, rng.choice((3, 4)))
    return (f"What is the last word in this list: {' '.join(words)}?", words[-1],
            ("last", *words))


TASKS = (_repeat, _sort, _larger, _last)


def generate(train_size: int = 2000, held_out_size: int = 200, seed: int = 0):
    """(train, held_out): lists of (prompt, answer); no held-out item's key is in train."""
    rng = random.Random(seed)
    held_out, held_keys = [], set()
    while len(held_out) < held_out_size:
        prompt, answer, key = rng.choice(TASKS)(rng)
        if key not in held_keys:
            held_keys.add(key)
            held_out.append((prompt, answer))
    train = []
    while len(train) < train_size:
        prompt, answer, key = rng.choice(TASKS)(rng)
        if key not in held_keys:
            train.append((prompt, answer))
    return train, held_out


def _write_pairs(pairs, path: pathlib.Path, source: str) -> pathlib.Path:
    """(prompt, answer) pairs as LIMA JSONL records of `source`."""
    return write_jsonl(path, ({"conversations": [prompt, answer], "source": source} for prompt, answer in pairs))


def write_demo_data(directory: str | pathlib.Path, train_size: int = 2000,
                    held_out_size: int = 200, seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `train.jsonl` and `held_out.jsonl` into `directory`; returns their paths."""
    directory = pathlib.Path(directory)
    train, held_out = generate(train_size, held_out_size, seed)
    return (_write_pairs(train, directory / "train.jsonl", "demo"),
            _write_pairs(held_out, directory / "held_out.jsonl", "demo"))
