"""The grain input pipeline: source -> tokenize -> pad or pack -> batch, one host's share.

Stages:
  1. read: files (any reader format) or the TFDS ``lima`` source into conversations;
  2. encode (grain map, optionally in worker processes): template + SentencePiece, trim, drop;
  3. plan: for each epoch, a permutation from ``(seed, epoch)``, then rows of one example each
     (padded) or several (packed, best- or first-fit); each epoch is filled to whole global
     batches with empty rows, so epochs never share a batch and the number of steps is exact;
  4. batches (grain ``MapDataset.range(num_steps).map(...)``): step j on host p gets global rows
     ``[j*G + p*B, j*G + (p+1)*B)`` (G global, B = G / process_count rows per host).

Because stage 4 is a random-access map over step numbers, the iterator state is the next step,
output does not depend on ``worker_count``, and a restored state continues mid-epoch with no
example repeated or skipped.

Batch contract (numpy, per host): tokens, targets, segment_ids, positions int32 [B, T];
loss_mask float32 [B, T]. segment_ids 0 marks padding, 1..k the examples packed in a row;
positions restart at 0 for each example; targets[i] is the next token within the same example.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import grain
import ml_collections
import numpy as np

from lima_jax.data import packing
from lima_jax.data.config import validate_data_config
from lima_jax.data.eot import apply_eot_policy
from lima_jax.data.errors import DataError, SkipLog
from lima_jax.data.examples import EncodedExamples, encode_examples
from lima_jax.data.readers import read_conversations
from lima_jax.data.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")


# ---------------------------------------------------------------------------------------------
# Plan: which examples fill each global row, for every epoch.


@dataclasses.dataclass
class Plan:
    """Rows of all epochs; row r holds examples ``row_items[row_offsets[r]:row_offsets[r+1]]``.

    row_offsets: int64 [R + 1]; row_items: int32 [placements]; R is a multiple of
    global_batch_size. steps_per_epoch[e] and real_rows_per_epoch[e] (rows holding an example).
    """

    row_offsets: np.ndarray
    row_items: np.ndarray
    global_batch_size: int
    steps_per_epoch: list[int]
    real_rows_per_epoch: list[int]

    @property
    def num_steps(self) -> int:
        return sum(self.steps_per_epoch)

    def epoch_of_step(self, step: int) -> int:
        """The epoch (0-based) that step (0-based) belongs to."""
        return int(np.searchsorted(np.cumsum(self.steps_per_epoch), step, side="right"))


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """int64 [N]: the order examples are visited in this epoch (deterministic in seed, epoch)."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def make_plan(
    lengths: np.ndarray, *, max_len: int, num_epochs: int, global_batch_size: int, seed: int = 0,
    shuffle: bool = True, pack: bool = False, algorithm: str = "best_fit",
    drop_remainder: bool = False,
) -> Plan:
    """Plans every epoch's rows from example lengths (int [N], each <= max_len)."""
    n, g = len(lengths), global_batch_size
    if n == 0:
        raise DataError("config.data.path", "no example left to train on",
                        "every conversation was dropped or skipped; see the data report", "empty")
    rows: list[list[int]] = []
    steps, real = [], []
    for epoch in range(num_epochs):
        order = epoch_order(n, seed, epoch, shuffle)
        epoch_rows = packing.pack(lengths, order, max_len, algorithm) if pack else [[int(i)] for i in order]
        if drop_remainder:
            epoch_rows = epoch_rows[: len(epoch_rows) // g * g]
            if not epoch_rows:
                raise DataError("config.data.global_batch_size",
                                f"{g} is more than the {n} examples of an epoch with drop_remainder",
                                "lower it or set drop_remainder=False", "config")
        real.append(len(epoch_rows))
        epoch_rows += [[] for _ in range(-len(epoch_rows) % g)]
        steps.append(len(epoch_rows) // g)
        rows += epoch_rows
    counts = np.array([len(r) for r in rows], np.int64)
    return Plan(
        row_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        row_items=np.array([i for r in rows for i in r], np.int32),
        global_batch_size=g, steps_per_epoch=steps, real_rows_per_epoch=real,
    )


# ---------------------------------------------------------------------------------------------
# Batches: a grain map from step number to this host's rows.


class BatchBuilder:
    """grain map: step -> this host's batch dict (see the module docstring for the contract)."""

    def __init__(self, examples: EncodedExamples, plan: Plan, local_batch_size: int,
                 process_index: int, max_len: int, pad_id: int):
        # Only arrays: this object is pickled into every grain worker.
        self.ids, self.trained, self.offsets = examples.ids, examples.trained, examples.offsets
        self.row_offsets, self.row_items = plan.row_offsets, plan.row_items
        self.global_batch_size = plan.global_batch_size
        self.local_batch_size = local_batch_size
        self.first_row = process_index * local_batch_size
        self.max_len, self.pad_id = max_len, pad_id
        self._arange = np.arange(max_len, dtype=np.int32)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        b, t = self.local_batch_size, self.max_len
        tokens = np.full((b, t), self.pad_id, np.int32)  # [B, T]
        targets = np.full((b, t), self.pad_id, np.int32)
        loss_mask = np.zeros((b, t), np.float32)
        segment_ids = np.zeros((b, t), np.int32)
        positions = np.zeros((b, t), np.int32)
        first = int(step) * self.global_batch_size + self.first_row
        for r in range(b):
            row = first + r
            col = 0
            items = self.row_items[self.row_offsets[row]:self.row_offsets[row + 1]]
            for segment, example in enumerate(items, start=1):
                start, stop = self.offsets[example], self.offsets[example + 1]
                n = stop - start - 1  # inputs ids[:-1] predict targets ids[1:]
                tokens[r, col:col + n] = self.ids[start:stop - 1]
                targets[r, col:col + n] = self.ids[start + 1:stop]
                loss_mask[r, col:col + n] = self.trained[start + 1:stop]
                segment_ids[r, col:col + n] = segment
                positions[r, col:col + n] = self._arange[:n]
                col += n
        return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask,
                "segment_ids": segment_ids, "positions": positions}


# ---------------------------------------------------------------------------------------------
# Building it from the config.


def ensure_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app nobody parsed them."""
    from absl import flags  # grain depends on absl

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # keeps every flag's default


def _process(config: ml_collections.ConfigDict) -> tuple[int, int]:
    if config.process_index >= 0 and config.process_count > 0:
        return config.process_index, config.process_count
    import jax  # only here: the data package itself does not need jax

    return jax.process_index(), jax.process_count()


def _read(config: ml_collections.ConfigDict) -> tuple[Any, Any, SkipLog]:
    """(conversations or a TFDS source, record->Conversation or None, skipped records)."""
    if config.path.startswith("tfds:"):
        from lima_jax.data import tfds_lima  # here: tensorflow_datasets is slow to import

        tfds_path = tfds_lima.parse_tfds_path(config.path)
        source = tfds_lima.lima_data_source(tfds_path[1], config.tfds_data_dir, config.tfds_manual_dir)
        return source, tfds_lima.record_to_conversation, SkipLog()
    result = read_conversations(config.path, config.format, config.on_error)
    return result.conversations, None, result.skips


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str | None = None,
                   conversations: Any = None, to_conversation: Any = None) -> Tokenizer:
    """The tokenizer named by config.data.tokenizer, or one trained on the data (cached), with
    the run's end of turn (config.data.eot, `lima_jax.data.eot`)."""
    return apply_eot_policy(_base_tokenizer(config, workdir, conversations, to_conversation),
                            config.eot, config.template)


def _base_tokenizer(config: ml_collections.ConfigDict, workdir: str | None, conversations: Any,
                    to_conversation: Any) -> Tokenizer:
    if config.tokenizer:
        return Tokenizer.load(config.tokenizer)
    cache_dir = config.train_tokenizer.cache_dir
    if not cache_dir and workdir:
        cache_dir = str(pathlib.Path(workdir) / "tokenizer")
    if not cache_dir:
        raise DataError("config.data.train_tokenizer.cache_dir", "nowhere to cache the trained tokenizer",
                        "set it, or pass the run's workdir", "config")
    if conversations is None:
        conversations, to_conversation, _ = _read(config)
    convert = to_conversation or (lambda c: c)
    texts = (t.text for i in range(len(conversations)) for t in convert(conversations[i]).turns)
    path = train_tokenizer(texts, cache_dir, config.train_tokenizer.vocab_size,
                           config.train_tokenizer.model_type)
    return Tokenizer.load(path)


def prepare_examples(config: ml_collections.ConfigDict, tokenizer: Tokenizer | None = None,
                     workdir: str | None = None) -> tuple[Tokenizer, EncodedExamples, SkipLog]:
    """Stages 1-2: read and encode every example (what the plan and the report need)."""
    validate_data_config(config)
    conversations, to_conversation, skips = _read(config)
    if tokenizer is None:
        tokenizer = load_tokenizer(config, workdir, conversations, to_conversation)
    examples = encode_examples(
        conversations, tokenizer, template=config.template, loss_on=config.loss_on,
        max_len=config.max_len, worker_count=config.worker_count, to_conversation=to_conversation,
    )
    return tokenizer, examples, skips


def plan_from_config(config: ml_collections.ConfigDict, examples: EncodedExamples,
                     num_epochs: int | None = None) -> Plan:
    return make_plan(
        examples.lengths, max_len=config.max_len,
        num_epochs=config.num_epochs if num_epochs is None else num_epochs,
        global_batch_size=config.global_batch_size, seed=config.seed, shuffle=config.shuffle,
        pack=config.pack, algorithm=config.packing, drop_remainder=config.drop_remainder,
    )


class DataPipeline:
    """This host's batches for a whole run, plus what the trainer needs to know about them.

    Iterate it (or ``iterator()``) for a grain iterator with ``get_state()``/``set_state()``.
    """

    def __init__(self, config: ml_collections.ConfigDict, tokenizer: Tokenizer,
                 examples: EncodedExamples, plan: Plan, skips: SkipLog,
                 process_index: int, process_count: int):
        g = config.global_batch_size
        if g % process_count:
            raise DataError("config.data.global_batch_size",
                            f"{g} does not split evenly over {process_count} hosts",
                            f"use a multiple of {process_count}", "config")
        self.config, self.tokenizer, self.examples, self.plan, self.skips = (
            config, tokenizer, examples, plan, skips)
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = g // process_count
        self._builder = BatchBuilder(examples, plan, self.local_batch_size, process_index,
                                     config.max_len, tokenizer.pad_id)

    @property
    def num_steps(self) -> int:
        return self.plan.num_steps

    @property
    def steps_per_epoch(self) -> list[int]:
        return self.plan.steps_per_epoch

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's batch of ``step`` (random access, same as the iterator yields)."""
        return self._builder(step)

    def dataset(self) -> grain.IterDataset:
        """The grain dataset of this host's batches, in worker processes if configured."""
        ds = grain.MapDataset.range(self.num_steps).map(self._builder)
        # One thread builds the next batch while the step runs; the order is kept.
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
        if self.config.worker_count > 0:
            ensure_flags_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.config.worker_count,
                per_worker_buffer_size=self.config.worker_buffer_size))
        return it_ds

    def iterator(self) -> grain.DatasetIterator:
        return iter(self.dataset())

    __iter__ = iterator

    def packing_efficiency(self) -> float:
        """Non-padding fraction of the rows that hold examples (leaves out epoch-filling rows)."""
        real_rows = sum(self.plan.real_rows_per_epoch)
        used = int(self.examples.lengths[self.plan.row_items].sum())
        return used / (real_rows * self.config.max_len)

    def summary(self) -> str:
        """What the run will do, in a few lines (printed at the start of training)."""
        c, counts = self.config, self.examples.counts()
        epochs = len(self.plan.steps_per_epoch)
        spe = self.plan.steps_per_epoch
        spe_text = str(spe[0]) if len(set(spe)) == 1 else f"{min(spe)}-{max(spe)}"
        mode = f"packed ({c.packing})" if c.pack else "padded (one example per row)"
        return (
            f"data: {counts['examples']} examples from {counts['conversations']} conversations "
            f"({self.skips.total} bad records skipped, {counts['trimmed']} trimmed to {c.max_len} "
            f"tokens, {counts['dropped_no_trained_token']} dropped with no trained token, "
            f"{counts['trailing_user_turns_removed']} trailing user turns removed)\n"
            f"data: {mode}, {counts['tokens_after_trim']} tokens, "
            f"packing efficiency {self.packing_efficiency():.1%}\n"
            f"data: {epochs} epochs x {spe_text} steps = {self.num_steps} steps at global batch "
            f"{c.global_batch_size} ({self.local_batch_size} rows on each of {self.process_count} hosts)"
        )


def build_pipeline(config: ml_collections.ConfigDict, *, tokenizer: Tokenizer | None = None,
                   workdir: str | None = None) -> DataPipeline:
    """Builds this host's pipeline from ``config.data`` (see get_default_data_config)."""
    tokenizer, examples, skips = prepare_examples(config, tokenizer, workdir)
    plan = plan_from_config(config, examples)
    process_index, process_count = _process(config)
    pipeline = DataPipeline(config, tokenizer, examples, plan, skips, process_index, process_count)
    log.info("%s", pipeline.summary())
    return pipeline


def count_steps(config: ml_collections.ConfigDict, num_epochs: int | None = None, *,
                tokenizer: Tokenizer | None = None, workdir: str | None = None) -> int:
    """The exact number of training steps for ``num_epochs`` (default config.num_epochs)."""
    _, examples, _ = prepare_examples(config, tokenizer, workdir)
    return plan_from_config(config, examples, num_epochs).num_steps
