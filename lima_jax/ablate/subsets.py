"""The data of an ablation: each cell's training subset (read a pool, filter its sources,
select, write LIMA-style JSONL), the generated tiny pool of the test configuration, and the one
tokenizer every cell shares when the recipe trains its own.

A subset is rebuilt from the config on every run; when a cell's `data.jsonl` already exists it
must match byte for byte, so a resumed cell never trains on different data than it started with.
"""

from __future__ import annotations

import pathlib
import random

from lima_jax.ablate.config import GENERATED, AblationConfigError, parse_quotas
from lima_jax.curate.select import longest_n, random_n, record_source, stratified
from lima_jax.data import generated as demo_data
from lima_jax.data.errors import DataError, RecordError
from lima_jax.data.readers import ASSISTANT, SYSTEM, USER, read_file
from lima_jax.errors import InputError, LimaError
from lima_jax.jsonl import dumps_line, write_jsonl, write_text_atomic


class AblationError(LimaError, RuntimeError):
    """The ablation cannot go on; the message names the cell and the file."""


def _lima_record(conversation, where: str) -> dict:
    """A reader's Conversation as a LIMA-style record (system text leads the first user turn)."""
    system = [t.text for t in conversation.turns if t.role == SYSTEM]
    turns = [t for t in conversation.turns if t.role != SYSTEM]
    roles = [t.role for t in turns]
    expected = [USER if i % 2 == 0 else ASSISTANT for i in range(len(turns))]
    if roles != expected or len(turns) < 2:
        raise AblationError(f"{where}: turns {roles} do not alternate user, assistant, ... "
                            "(LIMA's format needs a user turn first and at least one answer)")
    texts = [t.text for t in turns]
    if system:
        texts[0] = "\n\n".join(system + [texts[0]])
    return {"conversations": texts, "source": conversation.source, "id": conversation.id}


def read_pool(paths: str) -> list[dict]:
    """Every record of the comma-separated files `paths` (any format lima_jax.data reads) as
    LIMA-style dicts: `conversations` (strings), `source` (the record's source, Dolly category,
    or the file's stem) and `id`."""
    records = []
    for path in (p.strip() for p in paths.split(",") if p.strip()):
        try:
            conversations, _ = read_file(path)
        except (DataError, RecordError) as err:
            raise AblationError(f"reading pool {path}: {err}") from None
        records += [_lima_record(c, f"{path} record {c.id}") for c in conversations]
    return records


def select_subset(name: str, cell, pool: list[dict], seed: int) -> list[dict]:
    """The cell's training examples, chosen from `pool` by the cell's sources, select and size."""
    where = f"cells.{name}"
    if cell.sources:
        keep = {s.strip() for s in cell.sources.split(",") if s.strip()}
        present = sorted({record_source(r) for r in pool})
        missing = sorted(keep - set(present))
        if missing:
            raise AblationConfigError(f"{where}.sources", f"{missing} not in {cell.path} "
                                      f"(its sources: {present})")
        pool = [r for r in pool if record_source(r) in keep]
    try:
        if cell.select == "all":
            chosen = list(pool)
            if cell.size and cell.size != len(chosen):
                raise InputError(f"select=all gives {len(chosen)} examples, not size={cell.size}")
        elif cell.select == "random":
            chosen = random_n(pool, cell.size, seed)
        elif cell.select == "longest":
            chosen = longest_n(pool, cell.size)
        else:
            chosen = stratified(pool, parse_quotas(cell.quotas, f"{where}.quotas"), seed)
    except ValueError as err:
        if isinstance(err, AblationConfigError):
            raise
        raise AblationConfigError(f"{where}.size" if cell.select != "stratified" else f"{where}.quotas",
                                  f"{err} (pool {cell.path}"
                                  + (f", sources {cell.sources}" if cell.sources else "") + ")") from None
    return chosen


def subset_text(records: list[dict]) -> str:
    """The cell's data file as text: what `write_subset` writes and compares byte for byte."""
    return "".join(map(dumps_line, records))


def write_subset(path: pathlib.Path, records: list[dict], name: str) -> pathlib.Path:
    """Writes the cell's data file, or checks that the one already there holds the same data."""
    text = subset_text(records)
    if path.exists():
        if path.read_text(encoding="utf-8") != text:
            raise AblationError(
                f"cell {name}: {path} differs from the subset the config selects now (was a pool, "
                "size, seed or selection changed?); delete the cell's directory to start it again")
        return path
    return write_text_atomic(path, text)


def write_tiny_pool(directory: pathlib.Path, train_size: int = 256, test_size: int = 16,
                    seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """The tests' pool: the demo's four generated tasks, each record's source naming its task
    (repeat, sort, larger, last), and held-out prompts with their one right answer (unseen
    combinations), so the `reference` judge can grade them. Deterministic in `seed`."""
    rng = random.Random(seed)
    held, held_keys = [], set()
    while len(held) < test_size:
        prompt, answer, key = rng.choice(demo_data.TASKS)(rng)
        if key not in held_keys:
            held_keys.add(key)
            held.append({"conversations": [prompt, answer], "source": key[0], "id": f"test{len(held)}"})
    train = []
    while len(train) < train_size:
        prompt, answer, key = rng.choice(demo_data.TASKS)(rng)
        if key not in held_keys:
            train.append({"conversations": [prompt, answer], "source": key[0], "id": f"pool{len(train)}"})
    return write_jsonl(directory / "train.jsonl", train), write_jsonl(directory / "test.jsonl", held)


def resolve_generated(paths: str, workdir: pathlib.Path, which: str) -> str:
    """Replaces 'generated:tiny' in `paths` by the generated pool's train or test file."""
    if GENERATED not in paths:
        return paths
    train_path, test_path = write_tiny_pool(workdir / "pool")
    target = str(train_path if which == "train" else test_path)
    return ",".join(target if p.strip() == GENERATED else p.strip() for p in paths.split(","))


def shared_tokenizer(recipe, pools: list[list[dict]], workdir: pathlib.Path) -> str:
    """recipe.data.tokenizer, else recipe.model.init_from's own, else a tokenizer trained once on
    every cell's pool (cached by content), so that all cells see the same vocabulary."""
    if recipe.data.tokenizer:
        return recipe.data.tokenizer
    if recipe.model.init_from and recipe.data.train_tokenizer.vocab_size <= 0:
        return str(recipe.model.init_from)
    from lima_jax.data.tokenizer import train_tokenizer

    texts = [t for pool in pools for r in pool for t in r["conversations"]]
    try:
        return str(train_tokenizer(texts, workdir / "tokenizer", recipe.data.train_tokenizer.vocab_size,
                                   recipe.data.train_tokenizer.model_type))
    except DataError as err:
        raise AblationConfigError("recipe.data.train_tokenizer.vocab_size", err.what) from None
