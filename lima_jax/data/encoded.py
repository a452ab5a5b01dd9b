"""One conversation as token ids and loss flags (`Encoded`), and which of its turns are trained
(`answered_turns`): what every template, LIMA's and the model's own chat template alike, produces."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lima_jax.data.readers import ASSISTANT, Turn


def answered_turns(turns: Sequence[Turn], template: str) -> tuple[Sequence[Turn], int]:
    """Turns up to the last assistant turn, and how many trailing turns were dropped.

    ``raw`` keeps every turn (continuation has no notion of an unanswered prompt).
    """
    if template == "raw":
        return turns, 0
    last = max((i for i, t in enumerate(turns) if t.role == ASSISTANT), default=-1)
    return turns[: last + 1], len(turns) - last - 1


@dataclasses.dataclass
class Encoded:
    """One conversation under a template.

    ids: int32 [n] token ids, BOS first (when the tokenizer or the chat template writes one).
    trained: bool [n] True where the token is a loss-bearing target (as a *target*, i.e. the
      loss at input position i-1 predicts ids[i]).
    prompt_tokens / response_tokens: tokens outside / inside assistant turns (sum = n).
    dropped_turns: trailing unanswered turns removed.
    """

    ids: np.ndarray
    trained: np.ndarray
    prompt_tokens: int
    response_tokens: int
    dropped_turns: int
