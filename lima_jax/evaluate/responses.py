"""Reading response files written by ``python -m lima_jax.decode`` and pairing two systems' answers.

Every problem names the file and line (a lone surrogate escape, text no judge could be sent,
included); duplicate (id, sample) rows are an error (a judge would otherwise see one answer
twice), empty answers are kept but flagged so the caller counts them."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

from lima_jax.errors import InputError, LimaError
from lima_jax.jsonl import NOT_JSON, JsonLineError, read_jsonl

TORN_LINE_HINT = "a torn last line? rerun decode to resume it"


class ResponseError(LimaError, ValueError):
    """A response file that cannot be judged as given."""


@dataclasses.dataclass(frozen=True)
class Response:
    id: str
    sample: int
    prompt: str
    text: str


def read_responses(path: str | pathlib.Path) -> dict[tuple[str, int], Response]:
    """{(id, sample): Response} from a decode JSONL file, in file order."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ResponseError(f"{path}: no such response file")
    rows: dict[tuple[str, int], Response] = {}
    first_line: dict[tuple[str, int], str] = {}
    for where, record in _records(path):
        if not isinstance(record, dict) or "id" not in record or "text" not in record:
            raise ResponseError(f"{where}: expected an object with 'id' and 'text' (a decode output line)")
        key = (str(record["id"]), int(record.get("sample", 0)))
        if key in rows:
            raise ResponseError(f"{where}: duplicate id {key[0]!r} sample {key[1]} (first on line "
                                f"{first_line[key]}); each (id, sample) must appear once")
        text = record["text"]
        if not isinstance(text, str):
            raise ResponseError(f"{where}: 'text' must be a string, got {type(text).__name__}")
        rows[key] = Response(key[0], key[1], str(record.get("prompt", "")), text)
        first_line[key] = where.rpartition(":")[2]  # the line number of "path:line"
    if not rows:
        raise ResponseError(f"{path}: no responses")
    return rows


def _records(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
    """("path:line", record) of every line; a line that is not JSON, nests too deep or holds a
    lone surrogate is a ResponseError."""
    try:
        yield from read_jsonl(path, objects_only=False)
    except JsonLineError as err:
        cut_short = err.kind == NOT_JSON  # a line cut short, not text the file really holds
        raise ResponseError(err.what, where=err.where, hint=TORN_LINE_HINT if cut_short else err.hint) from None
    except InputError as err:  # not there, or not text
        raise ResponseError(err.what, where=err.where, hint=err.hint) from None


def pair_responses(a: dict, b: dict, *, sample: int = 0, a_name: str = "A", b_name: str = "B",
                   intersect: bool = False) -> tuple[list[tuple[Response, Response]], dict]:
    """[(a, b)] for every prompt id of sample `sample`, in A's order, and counts of what was left out.

    Ids present in only one file are an error unless `intersect` (then they are counted as skipped).
    """
    a_ids = {k[0]: r for k, r in a.items() if k[1] == sample}
    b_ids = {k[0]: r for k, r in b.items() if k[1] == sample}
    if not a_ids or not b_ids:
        raise ResponseError(f"no responses with sample {sample} in {a_name if not a_ids else b_name}")
    only_a = [i for i in a_ids if i not in b_ids]
    only_b = [i for i in b_ids if i not in a_ids]
    if (only_a or only_b) and not intersect:
        raise ResponseError(
            f"the response files do not answer the same prompts: {len(only_a)} ids only in {a_name} "
            f"(e.g. {only_a[:3]}), {len(only_b)} only in {b_name} (e.g. {only_b[:3]}); pass --intersect "
            "to judge the shared ids only")
    for i in a_ids:
        if i in b_ids and a_ids[i].prompt and b_ids[i].prompt and a_ids[i].prompt != b_ids[i].prompt:
            raise ResponseError(f"id {i!r} has different prompts in {a_name} and {b_name}; "
                                "the files come from different prompt sets")
    pairs = [(a_ids[i], b_ids[i]) for i in a_ids if i in b_ids]
    return pairs, {"only_in_a": len(only_a), "only_in_b": len(only_b)}
