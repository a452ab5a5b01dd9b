"""JSON Lines and JSON files: reading with ``file:line`` errors, appending, atomic writes.

Every JSONL file lima_jax reads or writes goes through here, so they all agree on the details:
UTF-8, one object per line (a line ends at a line feed only), non-ASCII kept as is, a blank line
ignored, a bad line reported as ``path:line: what``. Training data is the one exception on the
reading side: `lima_jax.data.readers` also reads JSON arrays and can count and skip bad records.
Appends are line-buffered (optionally fsynced, for records that must survive a crash the moment
they are made); whole-file outputs are written to a temporary file beside the target and renamed
over it, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

from lima_jax.errors import InputError

PathLike = str | os.PathLike


def dumps_line(record: Any) -> str:
    """One JSONL line (with its newline); non-ASCII text is kept readable."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def iter_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line of a UTF-8 text file (a leading
    byte-order mark is dropped)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("no such file", where=str(path)) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a JSON Lines file", where=str(path)) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", where=str(path)) from None
    # Lines end at "\n" only: str.splitlines() would also cut at U+2028, U+0085 and the like,
    # which `dumps_line` leaves unescaped inside a string.
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, line


def read_jsonl(path: PathLike, *, skip_invalid: bool = False,
               objects_only: bool = True) -> Iterator[tuple[str, Any]]:
    """Yields ``("path:line", record)`` for each record of a JSONL file.

    A line that is not JSON (or, with `objects_only`, not a JSON object) raises an InputError
    naming ``path:line``; with `skip_invalid` it is passed over instead (a torn last line of a
    cache that a crash cut short, say)."""
    for number, line in iter_lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if skip_invalid:
                continue
            raise InputError(f"not valid JSON ({e.msg})", where=where) from None
        if objects_only and not isinstance(record, dict):
            if skip_invalid:
                continue
            raise InputError(f"a record must be a JSON object, got {type(record).__name__}", where=where)
        yield where, record


def read_records(path: PathLike, **kwargs) -> list[Any]:
    """Every record of a JSONL file, in order (see `read_jsonl`)."""
    return [record for _, record in read_jsonl(path, **kwargs)]


class JsonlAppender:
    """Appends records to a JSONL file, one flushed line each; `durable` also fsyncs every line
    (verdicts and judge replies, which cost money or a person's time to make again)."""

    def __init__(self, path: PathLike, *, durable: bool = False):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durable = durable
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


def append_jsonl(path: PathLike, records: Iterable[Any], *, durable: bool = False) -> None:
    """Appends `records` to a JSONL file (created with its folder when missing)."""
    with JsonlAppender(path, durable=durable) as out:
        for record in records:
            out.write(record)


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
