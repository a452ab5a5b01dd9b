"""JSON Lines and JSON files: reading with ``file:line`` errors, appending, atomic writes.

Every JSONL file lima_jax reads or writes goes through here, so they all agree on the details:
UTF-8, one object per line (a line ends at a line feed only), non-ASCII kept as is, a blank line
ignored, a bad line reported as ``path:line: what``. A line is bad when it is not JSON, when it
nests deeper than Python's parser allows, or when a string in it holds a lone surrogate (JSON
``"\ud800"``), text no UTF-8 file or tokenizer can hold (`parse_line`). Training data is the one
exception on the reading side: `lima_jax.data.readers` also reads JSON arrays and can count and
skip bad records, through the same `parse_line`.

Appends are line-buffered (optionally fsynced, for records that must survive a crash the moment
they are made). A crash can still cut the last line short; opening a file for appending finds
such a torn tail, moves it to a sibling ``FILE.torn-<n>`` (reported on stderr, never dropped) and
appends after the last complete line (`set_aside_torn_tail`). Whole-file outputs are written to a
temporary file beside the target and renamed over it, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from lima_jax.errors import InputError

PathLike = str | os.PathLike

# The kinds of `JsonLineError`.
NOT_JSON, TOO_DEEP, UNENCODABLE, NOT_AN_OBJECT = "not_json", "too_deep", "unencodable", "not_an_object"


class JsonLineError(InputError):
    """A line that holds no usable record; `kind` says why: NOT_JSON, TOO_DEEP (nested deeper than
    the parser allows), UNENCODABLE (a lone surrogate) or NOT_AN_OBJECT."""

    def __init__(self, what: str, where: str = "", hint: str = "", *, kind: str):
        self.kind = kind
        super().__init__(what, where=where, hint=hint)


def dumps_line(record: Any) -> str:
    """One JSONL line (with its newline); non-ASCII text is kept readable."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (in a judge's reply, say) has no UTF-8 form: escaped, the record is
        # still written, whole, instead of failing the write.
        line = json.dumps(record)
    return line + "\n"


def unencodable_text(value: Any) -> str | None:
    """Where a string of a decoded JSON value holds a lone surrogate, e.g. ``"\\ud800 at character
    4 of ['conversations'][1]"``, or None when all of it can be written as UTF-8."""
    stack = [("", value)]
    while stack:  # a loop, not recursion: the value may nest as deep as the parser allowed
        at, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"\\u{ord(item[e.start]):04x} at character {e.start} of {at or 'the record'}"
        elif isinstance(item, dict):
            stack.extend((f"{at}[{key!r}]", child) for key, child in reversed(list(item.items())))
            stack.extend((f"{at}[key {i}]", key) for i, key in enumerate(item))
        elif isinstance(item, list):
            stack.extend((f"{at}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None


def check_encodable(value: Any, text: str) -> None:
    """Raises a JsonLineError (UNENCODABLE) when `value`, decoded from the JSON `text`, holds a
    lone surrogate, which UTF-8 output and SentencePiece would fail on far from the file."""
    # UTF-8 decoding refuses surrogates, so only a \u escape in the JSON can make one.
    if "\\u" not in text:
        return
    problem = unencodable_text(value)
    if problem is not None:
        raise JsonLineError(f"text that cannot be encoded as UTF-8: a lone surrogate escape, {problem}",
                            hint="fix or remove the escape in the file", kind=UNENCODABLE)


def parse_line(text: str) -> Any:
    """`json.loads` of one line, which also refuses what would fail later and far from the file:
    JSON nested deeper than the parser allows (TOO_DEEP) and lone surrogates (UNENCODABLE), as a
    JsonLineError without a location (the caller adds it). Text that is not JSON raises
    json.JSONDecodeError."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonLineError("JSON nested deeper than the parser allows", kind=TOO_DEEP) from None
    check_encodable(value, text)
    return value


def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError("no such file", where=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a JSON Lines file", where=str(path)) from None


def _is_complete_line(fragment: bytes) -> bool:
    """Whether the bytes after a file's last line feed hold a whole line (JSON, or blank)."""
    try:
        text = fragment.decode("utf-8-sig")
        if text.strip():
            json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return True


def _complete_length(data: bytes) -> int:
    """How many bytes of a file's contents end at a complete line: all but a torn tail."""
    cut = data.rfind(b"\n") + 1
    return len(data) if _is_complete_line(data[cut:]) else cut


def iter_lines(path: PathLike, *, skip_torn_tail: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line of a UTF-8 text file (a leading
    byte-order mark is dropped); `skip_torn_tail` passes over a last line a crash cut short (see
    `set_aside_torn_tail`), which may end in the middle of a character."""
    path = pathlib.Path(path)
    data = _read_bytes(path)
    if skip_torn_tail:
        data = data[:_complete_length(data)]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", where=str(path)) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as a text-mode read would
    # Lines end at "\n" only: str.splitlines() would also cut at U+2028, U+0085 and the like,
    # which `dumps_line` leaves unescaped inside a string.
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line


def _parse_record(line: str, objects_only: bool) -> Any:
    try:
        record = parse_line(line)
    except json.JSONDecodeError as e:
        raise JsonLineError(f"not valid JSON ({e.msg})", kind=NOT_JSON) from None
    if objects_only and not isinstance(record, dict):
        raise JsonLineError(f"a record must be a JSON object, got {type(record).__name__}",
                            kind=NOT_AN_OBJECT)
    return record


def read_jsonl(path: PathLike, *, skip_invalid: bool = False, objects_only: bool = True,
               skip_torn_tail: bool = False) -> Iterator[tuple[str, Any]]:
    """Yields ``("path:line", record)`` for each record of a JSONL file.

    A line that is not JSON, nests too deep, holds a lone surrogate or (with `objects_only`) is not
    a JSON object raises a JsonLineError naming ``path:line``; with `skip_invalid` it is passed
    over instead, with `skip_torn_tail` only a last line a crash cut short is. Reading never
    changes the file."""
    for number, line in iter_lines(path, skip_torn_tail=skip_torn_tail):
        where = f"{path}:{number}"
        try:
            record = _parse_record(line, objects_only)
        except JsonLineError as e:
            if skip_invalid:
                continue
            raise JsonLineError(e.what, where=where, hint=e.hint, kind=e.kind) from None
        yield where, record


def read_records(path: PathLike, **kwargs) -> list[Any]:
    """Every record of a JSONL file, in order (see `read_jsonl`)."""
    return [record for _, record in read_jsonl(path, **kwargs)]


# How far back to look at a time for the start of a file's last line.
_TAIL_BLOCK = 1 << 16


def _tail_start(f) -> int:
    """Offset just past the last line feed of the open binary file `f` (0 when it has none)."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return 0
    f.seek(end - 1)
    if f.read(1) == b"\n":  # the usual case, one byte read: nothing torn
        return end
    position = end
    while position > 0:
        start = max(0, position - _TAIL_BLOCK)
        f.seek(start)
        newline = f.read(position - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _read_tail(f) -> tuple[int, bytes]:
    """(offset, bytes) of the last line of an open binary file; the position is left at its end."""
    start = _tail_start(f)
    f.seek(start)
    return start, f.read()


def torn_tail(path: PathLike) -> tuple[int, bytes] | None:
    """(line number, bytes) of a JSONL file's last line when a crash cut it short (no line feed
    and not JSON), else None (a missing file included). Nothing is changed."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    with path.open("rb") as f:
        start, fragment = _read_tail(f)
        if _is_complete_line(fragment):
            return None
        f.seek(0)
        return f.read(start).count(b"\n") + 1, fragment


def _write_aside(path: pathlib.Path, fragment: bytes) -> pathlib.Path:
    """Writes `fragment` (fsynced) to the first free ``path.torn-<n>``; returns that path."""
    n = 1
    while True:
        aside = path.with_name(f"{path.name}.torn-{n}")
        try:
            with aside.open("xb") as f:  # "x": an earlier fragment is never overwritten
                f.write(fragment)
                f.flush()
                os.fsync(f.fileno())
            return aside
        except FileExistsError:
            n += 1


def set_aside_torn_tail(path: PathLike) -> pathlib.Path | None:
    """Makes a JSONL file end with a complete line, so what is appended next starts a line of its own.

    A last line a crash cut short (no line feed, not JSON) is copied to a new sibling
    ``FILE.torn-<n>`` and only then cut from the file, so a crash in between loses nothing either;
    that path is returned and reported on stderr. A whole last line that lacks only its line feed
    gets one. Returns None when nothing was set aside (a missing file included)."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    with path.open("r+b") as f:
        start, fragment = _read_tail(f)
        if not fragment:
            return None
        if _is_complete_line(fragment):
            f.write(b"\n")  # the read left the position at the end
            f.flush()
            os.fsync(f.fileno())
            return None
        aside = _write_aside(path, fragment)
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    print(f"{path}: the last line was cut short (an interrupted write); its {len(fragment)} bytes "
          f"are set aside in {aside}", file=sys.stderr)
    return aside


def make_folder_for(path: PathLike) -> None:
    """Creates the folder `path` goes in; a file in the way is an InputError naming `path`."""
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError("cannot create its folder: a file is in the way", where=str(path)) from None


class JsonlAppender:
    """Appends records to a JSONL file, one flushed line each; `durable` also fsyncs every line
    (verdicts and judge replies, which cost money or a person's time to make again).

    With `repair_tail` (the default), opening first sets a torn last line aside
    (`set_aside_torn_tail`); `set_aside` is where it went, or None."""

    def __init__(self, path: PathLike, *, durable: bool = False, repair_tail: bool = True):
        self.path = pathlib.Path(path)
        make_folder_for(self.path)
        if self.path.is_dir():
            raise InputError("is a directory, not a JSON Lines file", where=str(self.path))
        self.durable = durable
        # Appended after a torn line, the first new record would be glued to it and both lost.
        self.set_aside = set_aside_torn_tail(self.path) if repair_tail else None
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: Any) -> None:
        self._file.write(dumps_line(record))
        self._file.flush()
        if self.durable:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append_jsonl(path: PathLike, records: Iterable[Any], *, durable: bool = False,
                 repair_tail: bool = True) -> pathlib.Path | None:
    """Appends `records` to a JSONL file (created with its folder when missing); returns where a
    torn last line was set aside, if one was (see `JsonlAppender`)."""
    with JsonlAppender(path, durable=durable, repair_tail=repair_tail) as out:
        for record in records:
            out.write(record)
    return out.set_aside


def write_text_atomic(path: PathLike, text: str) -> pathlib.Path:
    """Writes `text` to `path` through a temporary file in the same folder and a rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: PathLike, records: Iterable[Any]) -> pathlib.Path:
    """Writes a whole JSONL file atomically."""
    return write_text_atomic(path, "".join(dumps_line(r) for r in records))


def write_json(path: PathLike, value: Any, *, indent: int = 2, ensure_ascii: bool = False) -> pathlib.Path:
    """Writes a JSON document (indented, with a final newline) atomically; `ensure_ascii`
    escapes non-ASCII text, for the files that have always been written that way."""
    return write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=ensure_ascii) + "\n")


def read_json(path: PathLike) -> Any:
    """A JSON document; an unreadable or invalid file raises an InputError naming it."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such file", where=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", where=str(path)) from None
