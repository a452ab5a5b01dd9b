"""The curation record: one prompt/response pair with its source, score and provenance.

A raw Q&A dump is JSON Lines (or a JSON array) in the ``qa`` format, one object per answer::

  {"prompt": str, "response": str,            # required
   "source": str, "id": str,                  # optional ('' -> the file's stem, file:line)
   "score": number,                           # optional: the answer's votes (Stack Exchange)
   "history": [str, ...],                     # optional: earlier turns, user first, alternating
   ...}                                       # any other field is kept in ``meta`` and written back

The instruction formats the data package reads (LIMA jsonl, Alpaca, Dolly, FastChat/ShareGPT,
OpenAI messages) are read too, through :mod:`lima_jax.data.readers`; a record whose last turn is
an unanswered prompt (the LIMA test set) gets an empty response. Every error names ``file:line``:
a score that is NaN or infinite, text with a lone surrogate escape and JSON nested too deep are
errors too. Records are written back as ``qa`` or ``lima`` JSON Lines, the latter ready for training.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lima_jax.data.errors import DataError, RecordError
from lima_jax.data.readers import (
    ASSISTANT,
    FORMAT_HELP,
    SYSTEM,
    USER,
    conversation_from_record,
    detect_format,
    iter_records,
    split_paths,
)
from lima_jax.errors import InputError
from lima_jax.jsonl import write_jsonl

QA_FIELDS = ("prompt", "response", "source", "id", "score", "history")
FORMATS = ("qa", "lima", "alpaca", "fastchat", "openai")
WRITE_FORMATS = ("qa", "lima")
QA_HELP = "qa ({'prompt', 'response', 'source'?, 'id'?, 'score'?, 'history'?})"


@dataclasses.dataclass(frozen=True)
class Record:
    """One example under curation. Filters return changed copies (``dataclasses.replace``)."""

    prompt: str
    response: str  # '' when the record holds only a prompt (an evaluation set)
    source: str = ""
    id: str = ""
    score: float | None = None  # answer votes; None when the dump has none
    history: tuple[str, ...] = ()  # earlier turns of a multi-turn chain: user, assistant, ...
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    location: str = ""  # file:line it was read from

    @property
    def text(self) -> str:
        """Prompt and response together (what near-duplicate detection compares by default)."""
        return f"{self.prompt}\n\n{self.response}"


def _detect(record: Any) -> str | None:
    if isinstance(record, dict) and "prompt" in record and "response" in record:
        return "qa"
    return detect_format(record)


def _qa_score(record: dict) -> float | None:
    """A qa record's 'score' (None when it has none); a RecordError unless it is a number."""
    score = record.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise RecordError(f"'score' is {score!r}, not a number", "bad_score")
    return _finite(score)


def _finite(score: float | None) -> float | None:
    """`score`; a RecordError when it is NaN or infinite, which Python's json reads (``NaN``,
    ``Infinity``) and which would sort and select arbitrarily."""
    if isinstance(score, float) and not math.isfinite(score):
        raise RecordError(f"'score' is {score!r}, not a finite number", "bad_score")
    return score


def _qa(record: dict, source: str, record_id: str, location: str) -> Record:
    for key in ("prompt", "response"):
        if key not in record:
            raise RecordError(f"missing field {key!r} for format qa (fields: {sorted(record)})",
                              "missing_field")
        if not isinstance(record[key], str):
            raise RecordError(f"{key!r} is {type(record[key]).__name__}, not a string", "not_a_string")
    score = _qa_score(record)
    history = record.get("history") or []
    if not isinstance(history, list) or not all(isinstance(t, str) for t in history):
        raise RecordError("'history' must be a list of strings (user, assistant, ...)", "bad_history")
    if len(history) % 2:
        raise RecordError(f"'history' has {len(history)} turns; it must end on an assistant turn "
                          "(an even number)", "bad_history")
    return Record(
        prompt=record["prompt"], response=record["response"],
        source=str(record.get("source") or source), id=str(record.get("id") or record_id),
        score=score, history=tuple(history),
        meta={k: v for k, v in record.items() if k not in QA_FIELDS}, location=location,
    )


def _from_conversation(record: dict, fmt: str, source: str, record_id: str, location: str) -> Record:
    conversation = conversation_from_record(record, fmt, source, record_id)
    system = [t.text for t in conversation.turns if t.role == SYSTEM]
    turns = [t for t in conversation.turns if t.role != SYSTEM]
    for i, turn in enumerate(turns):
        if turn.role != (USER, ASSISTANT)[i % 2]:
            raise RecordError(f"turn {i} is {turn.role!r}; turns must alternate user, assistant, "
                              "starting with user", "bad_turn_order")
    texts = [t.text for t in turns]
    if not texts:
        raise RecordError("no user or assistant turn", "empty")
    if len(texts) % 2:  # ends on an unanswered prompt
        history, prompt, response = texts[:-1], texts[-1], ""
    else:
        history, prompt, response = texts[:-2], texts[-2], texts[-1]
    meta: dict[str, Any] = {"system": system} if system else {}
    if fmt == "alpaca" and "category" in record:  # Dolly: the category is its source
        meta["category"] = record["category"]
    score = record.get("score")
    # Not a field of these formats: a score that is no number is ignored, as it always was.
    score = _finite(score) if isinstance(score, (int, float)) else None
    return Record(prompt=prompt, response=response, source=conversation.source, id=conversation.id,
                  score=score, history=tuple(history), meta=meta, location=location)


def read_records(paths: str | Sequence[str], fmt: str = "auto") -> list[Record]:
    """Reads every file of ``paths`` (one path, comma-separated paths, or a list) into Records.

    ``fmt`` is 'auto' (detected per file from its first record) or one of FORMATS. A bad record
    raises DataError naming ``file:line``: curation reads raw dumps, where a silently skipped
    record would hide a broken export.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError("--format", f"unknown format {fmt!r}",
                        f"choose auto or one of: {QA_HELP}, {FORMAT_HELP}", "config")
    files = split_paths(paths)
    if not files:
        raise DataError("--data", "no input file given", "name one or more .jsonl/.json files", "config")
    out: list[Record] = []
    for path in files:
        stem, file_fmt, count = pathlib.Path(path).stem, fmt, 0
        for line, record, error in iter_records(path):
            if error is not None:
                raise error
            location = f"{path}:{line}"
            if file_fmt == "auto":
                file_fmt = _detect(record) or ""
                if not file_fmt:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise DataError(location, f"unknown record format (record has {keys})",
                                    f"pass --format; known: {QA_HELP}, {FORMAT_HELP}", "unknown_format")
            if not isinstance(record, dict):
                raise DataError(location, f"expected a JSON object, got {type(record).__name__}",
                                f"format {file_fmt}", "not_an_object")
            try:
                if file_fmt == "qa":
                    out.append(_qa(record, stem, f"{stem}:{line}", location))
                else:
                    out.append(_from_conversation(record, file_fmt, stem, f"{stem}:{line}", location))
            except RecordError as e:
                raise DataError(location, e.what, f"format {file_fmt}", e.kind) from None
            count += 1
        if count == 0:
            raise DataError(path, "no records in the file", "check the path", "empty_file")
    return out


def to_json(record: Record, fmt: str = "qa") -> dict[str, Any]:
    """The record as a JSON object: ``qa`` keeps every field, ``lima`` is what training reads."""
    if fmt == "lima":
        turns = [*record.history, record.prompt] + ([record.response] if record.response else [])
        return {"conversations": turns, "source": record.source}
    if fmt != "qa":
        raise InputError(f"cannot write format {fmt!r}; choose one of {WRITE_FORMATS}")
    out: dict[str, Any] = {"id": record.id, "source": record.source, "prompt": record.prompt,
                           "response": record.response}
    if record.score is not None:
        out["score"] = record.score
    if record.history:
        out["history"] = list(record.history)
    for key, value in record.meta.items():
        out.setdefault(key, value)
    return out


def write_records(path: str | pathlib.Path, records: Iterable[Record], fmt: str = "qa") -> int:
    """Writes records as JSON Lines (UTF-8, one object per line, atomically); returns how many."""
    if fmt not in WRITE_FORMATS:
        raise DataError("--output-format", f"unknown format {fmt!r}", f"choose one of {WRITE_FORMATS}",
                        "config")
    rows = [to_json(record, fmt) for record in records]
    write_jsonl(path, rows)
    return len(rows)
