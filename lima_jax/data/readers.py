"""Readers: LIMA JSONL, Alpaca JSON, FastChat/ShareGPT and OpenAI-messages files into one type.

Every reader yields :class:`Conversation` (turns with roles, plus the record's source and id).
Files may be JSON Lines (one object per line) or a JSON array of objects; which of the four
record formats a file holds is detected from its first record, or named (``format=``).
A bad record raises :class:`DataError` naming ``file:line`` and what was wrong, or, with
``on_error='skip'``, is counted in a :class:`SkipLog` (never dropped silently). Bad includes text
that would only fail later, far from the file: a lone surrogate escape (JSON ``"\ud800"``, which
SentencePiece cannot encode) and JSON nested deeper than the parser allows (`lima_jax.jsonl.parse_line`).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lima_jax.data.errors import DataError, RecordError, SkipLog, check_on_error
from lima_jax.jsonl import JsonLineError, check_encodable, parse_line

SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
FORMATS = ("lima", "alpaca", "fastchat", "openai")
FORMAT_HELP = (
    "lima ({'conversations': [str, ...], 'source': str}), "
    "alpaca ({'instruction', 'input', 'output'}), "
    "fastchat ({'conversations': [{'from', 'value'}, ...]}), "
    "openai ({'messages': [{'role', 'content'}, ...]})"
)


@dataclasses.dataclass(frozen=True)
class Turn:
    """One utterance: ``role`` is 'system', 'user' or 'assistant'."""

    role: str
    text: str


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A conversation from any reader: its turns, where it came from, and an id."""

    turns: tuple[Turn, ...]
    source: str
    id: str


@dataclasses.dataclass
class ReadResult:
    """Conversations read from one or more files, plus what was skipped."""

    conversations: list[Conversation]
    skips: SkipLog
    formats: dict[str, str]  # path -> format used


# ---------------------------------------------------------------------------------------------
# Record formats: each turns one decoded JSON object into a Conversation or raises RecordError.


def _require(record: dict, key: str, fmt: str) -> Any:
    if key not in record:
        raise RecordError(
            f"missing field {key!r} for format {fmt} (fields present: {sorted(record)})",
            "missing_field",
        )
    return record[key]


def _require_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} is {type(value).__name__}, not a string", "not_a_string")
    return value


def _require_list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise RecordError(f"{what} is {type(value).__name__}, not a list", "not_a_list")
    if not value:
        raise RecordError(f"{what} is empty: a conversation needs at least one turn", "empty")
    return value


def _lima(record: dict) -> list[Turn]:
    utterances = _require_list(_require(record, "conversations", "lima"), "'conversations'")
    roles = (USER, ASSISTANT)
    return [
        Turn(roles[i % 2], _require_str(u, f"turn {i} of 'conversations'"))
        for i, u in enumerate(utterances)
    ]


def _alpaca(record: dict) -> list[Turn]:
    instruction = _require_str(_require(record, "instruction", "alpaca"), "'instruction'")
    extra = _require_str(record.get("input", "") or "", "'input'")
    output = _require_str(_require(record, "output", "alpaca"), "'output'")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [Turn(USER, prompt), Turn(ASSISTANT, output)]


# ShareGPT dumps name the assistant after the product it came from.
_FASTCHAT_ROLES = {
    "human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "chatgpt": ASSISTANT,
    "bard": ASSISTANT, "bing": ASSISTANT, "model": ASSISTANT, "system": SYSTEM,
}


def _fastchat(record: dict) -> list[Turn]:
    turns = _require_list(_require(record, "conversations", "fastchat"), "'conversations'")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"turn {i} is {type(turn).__name__}, not an object", "not_an_object")
        speaker = _require_str(_require(turn, "from", "fastchat"), f"turn {i} 'from'")
        if speaker.lower() not in _FASTCHAT_ROLES:
            raise RecordError(
                f"turn {i} has unknown speaker {speaker!r} (known: {sorted(_FASTCHAT_ROLES)})",
                "unknown_role",
            )
        text = _require_str(_require(turn, "value", "fastchat"), f"turn {i} 'value'")
        out.append(Turn(_FASTCHAT_ROLES[speaker.lower()], text))
    return out


def _openai(record: dict) -> list[Turn]:
    messages = _require_list(_require(record, "messages", "openai"), "'messages'")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"message {i} is {type(message).__name__}, not an object", "not_an_object")
        role = _require_str(_require(message, "role", "openai"), f"message {i} 'role'")
        if role not in (SYSTEM, USER, ASSISTANT):
            raise RecordError(
                f"message {i} has role {role!r}; expected system, user or assistant", "unknown_role"
            )
        text = _require_str(_require(message, "content", "openai"), f"message {i} 'content'")
        out.append(Turn(role, text))
    return out


_CONVERTERS: dict[str, Callable[[dict], list[Turn]]] = {
    "lima": _lima, "alpaca": _alpaca, "fastchat": _fastchat, "openai": _openai,
}


def detect_format(record: Any) -> str | None:
    """Names the format of one decoded record, or None when it matches none of them."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "openai"
    if "instruction" in record and "output" in record:
        return "alpaca"
    conversations = record.get("conversations")
    if isinstance(conversations, list) and conversations:
        return "fastchat" if isinstance(conversations[0], dict) else "lima"
    return None


def check_format(fmt: str) -> None:
    """Raises a DataError unless ``fmt`` is 'auto' or a known format."""
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(
            "config.data.format", f"unknown format {fmt!r}",
            f"choose auto or one of: {FORMAT_HELP}", "config",
        )


def conversation_from_record(record: Any, fmt: str, source: str, record_id: str) -> Conversation:
    """Converts one decoded record of format ``fmt``; raises RecordError when it does not fit.

    ``source`` and ``record_id`` are the defaults used when the record names neither.
    """
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}", "not_an_object")
    turns = _CONVERTERS[fmt](record)
    own_source = record.get("source") or record.get("category")
    own_id = record.get("id", record.get("question_id"))
    return Conversation(
        turns=tuple(turns),
        source=str(own_source) if own_source else source,
        id=str(own_id) if own_id not in (None, "") else record_id,
    )


# ---------------------------------------------------------------------------------------------
# Files: JSON Lines or a JSON array, each record with the line it starts on.


def _iter_jsonl(path: str, data: bytes) -> Iterator[tuple[int, Any, DataError | None]]:
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield number, None, DataError(
                f"{path}:{number}", f"invalid UTF-8 at byte {e.start} of the line",
                "re-encode the file as UTF-8", "invalid_utf8",
            )
            continue
        try:
            record, error = parse_line(text), None
        except json.JSONDecodeError as e:
            record, error = None, DataError(
                f"{path}:{number}", f"malformed JSON at column {e.colno}: {e.msg}",
                "each line must be one complete JSON object", "malformed_json",
            )
        except JsonLineError as e:  # nested too deep, or a lone surrogate
            record, error = None, DataError(f"{path}:{number}", e.what, e.hint, e.kind)
        yield number, record, error


def _iter_json_array(path: str, data: bytes) -> Iterator[tuple[int, Any, DataError | None]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        # One bad byte makes the whole array unreadable, so this is fatal even with skip.
        raise DataError(
            f"{path}:{line}", f"invalid UTF-8 at byte {e.start} of the file",
            "re-encode the file as UTF-8", "invalid_utf8",
        ) from None
    newlines = [m.start() for m in re.finditer("\n", text)]
    line_of = lambda offset: bisect.bisect_left(newlines, offset) + 1  # noqa: E731
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    n = len(text)

    def skip_space(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def syntax_error(i: int, what: str) -> DataError:
        # A JSON array cannot be resynchronised after a syntax error: fatal even with skip.
        return DataError(
            f"{path}:{line_of(i)}", what,
            "fix the JSON (a JSON array cannot skip a broken element; JSON Lines can)",
            "malformed_json",
        )

    position = skip_space(position)
    if position < n and text[position] == "]":
        return
    while True:
        position = skip_space(position)
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as e:
            raise syntax_error(e.pos, f"malformed JSON: {e.msg}") from None
        except RecursionError:  # where this element ends is unknown, as after a syntax error
            raise syntax_error(position, "JSON nested deeper than the parser allows") from None
        yield line_of(position), *_encodable(value, text[position:end], f"{path}:{line_of(position)}")
        position = skip_space(end)
        if position < n and text[position] == ",":
            position += 1
        elif position < n and text[position] == "]":
            if skip_space(position + 1) != n:
                raise syntax_error(position + 1, "extra data after the closing ']'")
            return
        else:
            raise syntax_error(position, "expected ',' or ']' between array elements")


def _encodable(value: Any, text: str, where: str) -> tuple[Any, DataError | None]:
    """(value, None), or (None, the error) when a string of it holds a lone surrogate: one
    element, which the reader can skip."""
    try:
        check_encodable(value, text)
    except JsonLineError as e:
        return None, DataError(where, e.what, e.hint, e.kind)
    return value, None


def iter_records(path: str) -> Iterator[tuple[int, Any, DataError | None]]:
    """Yields ``(line, decoded record or None, error or None)`` for each record of a file."""
    try:
        data = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found", "check config.data.path / --data", "missing_file") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, not a data file", "name a .jsonl or .json file",
                        "missing_file") from None
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is harmless; drop it
        data = data[3:]
    if data.lstrip()[:1] == b"[":
        yield from _iter_json_array(path, data)
    else:
        yield from _iter_jsonl(path, data)


def read_file(
    path: str, fmt: str = "auto", on_error: str = "raise", skips: SkipLog | None = None
) -> tuple[list[Conversation], str]:
    """Reads one file into conversations; returns them and the format used.

    Args:
      path: a JSON Lines file or a JSON array file.
      fmt: 'auto' (detect from the first record) or one of FORMATS.
      on_error: 'raise' stops at the first bad record; 'skip' counts it in ``skips``.
      skips: where skipped records are counted (a new SkipLog when None).
    """
    check_format(fmt)
    check_on_error(on_error)
    skips = SkipLog() if skips is None else skips
    stem = pathlib.Path(path).stem
    conversations = []
    for line, record, error in iter_records(path):
        if error is None:
            if fmt == "auto":
                detected = detect_format(record)
                if detected is None:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    # An unknown format is a setting problem, not a bad record: always fatal.
                    raise DataError(
                        f"{path}:{line}", f"unknown record format (record has {keys})",
                        f"name the format with --format / config.data.format; known: {FORMAT_HELP}",
                        "unknown_format",
                    )
                fmt = detected
            try:
                conversations.append(conversation_from_record(record, fmt, stem, f"{stem}:{line}"))
                continue
            except RecordError as e:
                error = DataError(f"{path}:{line}", e.what, f"format {fmt}", e.kind)
        if on_error == "raise":
            raise error
        skips.add(error)
    if fmt == "auto":
        raise DataError(path, "no records in the file", "check the path", "empty_file")
    return conversations, fmt


def split_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Accepts one path, a comma-separated string of paths, or a sequence of paths."""
    if isinstance(paths, (str, os.PathLike)):
        return [p.strip() for p in str(paths).split(",") if p.strip()]
    return [str(p) for p in paths]


def read_conversations(
    paths: str | Sequence[str], fmt: str = "auto", on_error: str = "raise"
) -> ReadResult:
    """Reads every file of ``paths`` (see split_paths) into one list of conversations."""
    files = split_paths(paths)
    if not files:
        raise DataError("config.data.path", "no data file given", "set --data / config.data.path", "config")
    skips = SkipLog()
    conversations, formats = [], {}
    for path in files:
        read, formats[path] = read_file(path, fmt, on_error, skips)
        conversations.extend(read)
    return ReadResult(conversations, skips, formats)
