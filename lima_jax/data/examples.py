"""Tokenized examples: every conversation encoded once, trimmed to max_len, with its statistics.

This is the pipeline's first grain stage: ``MapDataset.source(conversations)`` in chunks, mapped
through the chat template and SentencePiece (with ``worker_count`` SentencePiece threads),
gathered into flat arrays. Every host encodes the whole data set: the lengths of all
examples are what lets every host compute the same packing plan and the exact number of steps
without talking to the others (for SFT sets of ~1k-50k examples this takes seconds).

An example occupies ``len(ids) - 1`` row positions (inputs ids[:-1], targets ids[1:]). One longer
than ``max_len`` positions is trimmed to ``ids[:max_len + 1]``; one left with no trained target
(its first assistant token lies beyond max_len, or it has no assistant turn) is dropped. Both
are counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from lima_jax.data import templates
from lima_jax.data.readers import Conversation
from lima_jax.data.tokenizer import Tokenizer

# Conversations per grain element: one batched SentencePiece call amortises Python overhead.
_CHUNK = 256


@dataclasses.dataclass
class EncodedExamples:
    """The kept (trimmed) examples as flat arrays, plus per-conversation statistics.

    Kept examples (N of them), concatenated:
      ids: int32 [sum of kept lengths]; trained: bool [same]; offsets: int64 [N + 1].
      conversation_index: int32 [N], which conversation each kept example came from.
    Every conversation read (C of them, incl. dropped), for the report:
      sources: [C] str; turns: int32 [C]; prompt_tokens, response_tokens: int32 [C] (untrimmed);
      loss_tokens: int32 [C] (after trimming); trimmed, dropped: bool [C];
      dropped_turns: int32 [C] trailing unanswered turns removed.
    """

    ids: np.ndarray
    trained: np.ndarray
    offsets: np.ndarray
    conversation_index: np.ndarray
    sources: list[str]
    example_ids: list[str]
    turns: np.ndarray
    prompt_tokens: np.ndarray
    response_tokens: np.ndarray
    loss_tokens: np.ndarray
    trimmed: np.ndarray
    dropped: np.ndarray
    dropped_turns: np.ndarray
    max_len: int

    @property
    def num_examples(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """int64 [N]: row positions each kept example occupies (tokens - 1)."""
        return np.diff(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, trained) of kept example i."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.trained[a:b]

    def counts(self) -> dict[str, int]:
        """Totals the report and the run log print."""
        return {
            "conversations": len(self.sources),
            "examples": self.num_examples,
            "trimmed": int(self.trimmed.sum()),
            "dropped_no_trained_token": int(self.dropped.sum()),
            "trailing_user_turns_removed": int((self.dropped_turns > 0).sum()),
            "tokens": int(self.prompt_tokens.sum() + self.response_tokens.sum()),
            "tokens_after_trim": int(len(self.ids)),
            "loss_tokens": int(self.loss_tokens.sum()),
        }


class _EncodeChunk:
    """grain map: a chunk of conversations -> (Encoded, source, id, number of turns) each."""

    def __init__(self, tokenizer: Tokenizer, template: str, loss_on: str, num_threads: int):
        self.tokenizer, self.template, self.loss_on = tokenizer, template, loss_on
        self.num_threads = num_threads

    def __call__(self, chunk: Sequence[Conversation]) -> list[tuple]:
        encoded = templates.encode_conversations(
            [c.turns for c in chunk], self.tokenizer, self.template, self.loss_on,
            self.num_threads,
        )
        return [(e, c.source, c.id, len(c.turns)) for e, c in zip(encoded, chunk, strict=True)]


def _encode_all(
    source: Any, tokenizer: Tokenizer, template: str, loss_on: str, worker_count: int,
    to_conversation: Any = None,
) -> list[tuple]:
    ds = grain.MapDataset.source(source)
    if to_conversation is not None:  # e.g. a TFDS record -> Conversation
        ds = ds.map(to_conversation)
    # In this process, SentencePiece's own C++ threads (one per worker) doing the tokenizing:
    # starting grain worker processes costs more (~2 s each here) than encoding LIMA (<1 s).
    threads = max(1, worker_count)
    ds = ds.batch(_CHUNK, batch_fn=list).map(_EncodeChunk(tokenizer, template, loss_on, threads))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return [e for chunk in it_ds for e in chunk]


def encode_examples(
    conversations: Sequence[Conversation] | Any,
    tokenizer: Tokenizer,
    *,
    template: str = "lima",
    loss_on: str = "assistant",
    max_len: int = 2048,
    worker_count: int = 0,
    to_conversation: Any = None,
) -> EncodedExamples:
    """Encodes, trims and filters every conversation; see the module docstring.

    Args:
      conversations: a sequence of Conversation, or a random-access source (a TFDS data
        source) with ``to_conversation`` turning its records into Conversation.
      worker_count: SentencePiece threads for the encoding (0 or 1: one).
    """
    templates.check_template(template, loss_on)
    results = _encode_all(conversations, tokenizer, template, loss_on, worker_count, to_conversation)
    encoded = [r[0] for r in results]
    meta = [r[1:] for r in results]
    c = len(encoded)
    loss_tokens = np.zeros(c, np.int32)
    trimmed = np.zeros(c, bool)
    dropped = np.zeros(c, bool)
    kept_ids, kept_trained, kept_index = [], [], []
    for i, e in enumerate(encoded):
        ids, trained = e.ids, e.trained
        if len(ids) - 1 > max_len:
            ids, trained = ids[: max_len + 1], trained[: max_len + 1]
            trimmed[i] = True
        # trained[0] is BOS as a target of nothing: only targets ids[1:] carry loss.
        loss_tokens[i] = int(trained[1:].sum())
        if loss_tokens[i] == 0:
            dropped[i] = True
            continue
        kept_ids.append(ids)
        kept_trained.append(trained)
        kept_index.append(i)
    lengths = np.array([len(x) for x in kept_ids], np.int64)
    return EncodedExamples(
        ids=np.concatenate(kept_ids) if kept_ids else np.zeros(0, np.int32),
        trained=np.concatenate(kept_trained) if kept_trained else np.zeros(0, bool),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        conversation_index=np.asarray(kept_index, np.int32),
        sources=[m[0] for m in meta],
        example_ids=[m[1] for m in meta],
        turns=np.array([m[2] for m in meta], np.int32),
        prompt_tokens=np.array([e.prompt_tokens for e in encoded], np.int32),
        response_tokens=np.array([e.response_tokens for e in encoded], np.int32),
        loss_tokens=loss_tokens,
        trimmed=trimmed,
        dropped=dropped,
        dropped_turns=np.array([e.dropped_turns for e in encoded], np.int32),
        max_len=max_len,
    )
