"""Train equals serve: the checks that a tokenizer + template + end of turn trains what decoding
and an export will serve.

A setup fails, naming which check, when
- the decode prompt of a conversation (`encode_prompt`, as ``python -m lima_jax.decode`` lays it
  out) is not a token prefix of its training encoding: the model would be served a context it
  never saw in training;
- an assistant turn's trained tokens do not end with the end-of-turn id: the model never learns
  to stop;
- decoding (`lima_jax.decode.answer.stop_names`) or the export's ``eos_token_id``
  (`lima_jax.data.tokenizer_export.export_eos_token_ids`) does not stop at that id;
- BOS is doubled (a template that writes BOS, encoded with another BOS in front);
- the pad id is the end of turn or EOS (a tool that masks padding by id would never train them).
``raw`` (continuation of plain text) has no turns: only the prefix, BOS and pad checks apply.
`python -m lima_jax.data check-template` prints one example with its trained spans marked and exits
1 on a failure; `lima_jax.train` runs the same checks on its data before compiling and refuses a
setup that fails them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lima_jax.data.readers import ASSISTANT, SYSTEM, USER, Turn
from lima_jax.data.templates import answered_turns, encode_conversations, encode_prompt, end_of_turn_id
from lima_jax.data.tokenizer import Tokenizer

# Conversations checked when no data is given: one turn, a system prompt, two rounds.
PROBES: tuple[tuple[Turn, ...], ...] = (
    (Turn(USER, "What is the capital of France?"), Turn(ASSISTANT, "Paris.")),
    (Turn(SYSTEM, "You are a helpful assistant."), Turn(USER, "Say hi."), Turn(ASSISTANT, "Hi!")),
    (Turn(USER, "Name a colour."), Turn(ASSISTANT, "Blue."), Turn(USER, "Another?"),
     Turn(ASSISTANT, "Green.")),
)
TRAINED_OPEN, TRAINED_CLOSE = "\u27e6", "\u27e7"  # ⟦ trained ⟧


@dataclasses.dataclass
class TemplateCheck:
    """problems: one line per failed check (empty: the setup passes); example: the first
    conversation with its trained spans marked; conversations: how many were checked."""

    problems: list[str]
    example: str
    conversations: int

    @property
    def ok(self) -> bool:
        return not self.problems


def mark_trained(ids: Sequence[int], trained: Sequence[bool], tokenizer: Tokenizer) -> str:
    """The text of ``ids`` with each trained span in ⟦ ⟧ and special tokens by name."""
    special = set(tokenizer.special_tokens.values()) | {tokenizer.eot_id, tokenizer.bos_id, tokenizer.eos_id}
    pieces: list[tuple[str, bool]] = []  # (text, trained), ordinary tokens decoded run by run
    run: list[int] = []
    run_trained = False
    for token, is_trained in zip((int(i) for i in ids), (bool(t) for t in trained)):
        if run and (token in special or is_trained != run_trained):
            pieces.append((tokenizer.decode(run), run_trained))
            run = []
        if token in special:
            pieces.append((tokenizer.id_to_piece(token), is_trained))
        else:
            run, run_trained = run + [token], is_trained
    if run:
        pieces.append((tokenizer.decode(run), run_trained))
    out, inside = [], False
    for text, is_trained in pieces:
        if is_trained != inside:
            out.append(TRAINED_OPEN if is_trained else TRAINED_CLOSE)
            inside = is_trained
        out.append(text)
    return "".join(out) + (TRAINED_CLOSE if inside else "")


def _stop_ids(tokenizer: Tokenizer, template: str) -> tuple[set[int], set[int]]:
    from lima_jax.data.tokenizer_export import export_eos_token_ids
    from lima_jax.decode.answer import stop_names

    return set(stop_names(tokenizer, template)), set(export_eos_token_ids(tokenizer))


def check_setup(tokenizer: Tokenizer, template: str, conversations: Sequence[Sequence[Turn]] = PROBES,
                loss_on: str = "assistant", limit: int = 0) -> TemplateCheck:
    """Runs every check on ``conversations`` (the first ``limit`` with an answer, 0 = all)."""
    answered = [turns for turns in conversations if answered_turns(turns, template)[0]]
    if limit:
        answered = answered[:limit]
    if not answered:
        answered = list(PROBES)
    problems: dict[str, str] = {}
    encoded = encode_conversations(answered, tokenizer, template=template, loss_on=loss_on)
    eot = end_of_turn_id(template, tokenizer)
    turns_based = template != "raw"
    for n, (turns, enc) in enumerate(zip(answered, encoded)):
        kept, _ = answered_turns(turns, template)
        ids = enc.ids.tolist()
        for i, turn in enumerate(kept):
            if turn.role != ASSISTANT:
                continue
            prompt = encode_prompt(list(kept[:i]), tokenizer, template)
            if ids[:len(prompt)] != prompt and "prefix" not in problems:
                problems["prefix"] = (
                    f"conversation {n + 1}, assistant turn {i + 1}: the decode prompt is not a token prefix of the "
                    f"training encoding (first difference at token {_first_difference(prompt, ids)})")
        if tokenizer.bos_id is not None and ids[:2] == [tokenizer.bos_id] * 2 and "bos" not in problems:
            problems["bos"] = f"conversation {n + 1}: BOS is doubled at the start"
        if turns_based and loss_on == "assistant" and "eot_trained" not in problems:
            ends = _trained_run_ends(enc.trained)
            n_assistant = sum(t.role == ASSISTANT for t in kept)
            bad = [e for e in ends if ids[e] != eot]
            if bad or len(ends) < n_assistant:
                problems["eot_trained"] = (
                    f"conversation {n + 1}: an assistant turn's trained tokens do not end with the end of turn "
                    f"{tokenizer.id_to_piece(eot)!r} (id {eot})")
    if turns_based:
        decode_stops, export_stops = _stop_ids(tokenizer, template)
        if eot not in decode_stops:
            problems["decode_stop"] = f"decoding does not stop at the end of turn (id {eot}): stops {sorted(decode_stops)}"
        if eot not in export_stops:
            problems["export_stop"] = (f"the export's eos_token_id {sorted(export_stops)} lacks the end of turn "
                                       f"(id {eot})")
    if tokenizer.pad_id in (tokenizer.eos_id, eot):
        problems["pad"] = f"the pad id {tokenizer.pad_id} is the end of turn or EOS"
    example = mark_trained(encoded[0].ids, encoded[0].trained, tokenizer)
    return TemplateCheck([f"{key}: {text}" for key, text in problems.items()], example, len(answered))


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _trained_run_ends(trained: np.ndarray) -> list[int]:
    """Index of the last token of each maximal run of trained tokens."""
    t = np.asarray(trained, bool)
    return [int(i) for i in np.flatnonzero(t & ~np.append(t[1:], False))]
