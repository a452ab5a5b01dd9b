"""lima_jax.jsonl: file:line errors, torn lines, line separators inside strings, atomic writes."""

from __future__ import annotations

import pytest

from lima_jax import jsonl
from lima_jax.errors import InputError, LimaError


def test_round_trip_keeps_text_and_line_separators(tmp_path):
    records = [{"text": "naïve"}, {"text": "a\u2028b\u0085c"}, {"n": 3}]
    path = jsonl.write_jsonl(tmp_path / "out.jsonl", records)
    assert jsonl.read_records(path) == records
    assert "naïve" in path.read_text(encoding="utf-8")  # not escaped


def test_a_bad_line_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:3: not valid JSON") as error:
        jsonl.read_records(path)
    assert isinstance(error.value, LimaError) and isinstance(error.value, ValueError)
    assert jsonl.read_records(path, skip_invalid=True) == [{"a": 1}]


def test_a_record_must_be_an_object_unless_asked_otherwise(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"list\.jsonl:1: a record must be a JSON object, got list"):
        jsonl.read_records(path)
    assert jsonl.read_records(path, objects_only=False) == [[1, 2]]


def test_missing_file_and_byte_order_mark(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        jsonl.read_records(tmp_path / "absent.jsonl")
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert jsonl.read_records(path) == [{"a": 1}]


def test_appends_add_lines_and_atomic_writes_leave_no_temporary_file(tmp_path):
    path = tmp_path / "deep" / "log.jsonl"
    jsonl.append_jsonl(path, [{"i": 0}])
    with jsonl.JsonlAppender(path, durable=True) as out:
        out.write({"i": 1})
    assert jsonl.read_records(path) == [{"i": 0}, {"i": 1}]
    jsonl.write_json(tmp_path / "doc.json", {"k": [1, 2]})
    assert jsonl.read_json(tmp_path / "doc.json") == {"k": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "doc.json"]


def test_an_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.jsonl"
    jsonl.write_jsonl(path, [{"old": True}])

    def records():
        yield {"new": True}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        jsonl.write_jsonl(path, records())
    assert jsonl.read_records(path) == [{"old": True}]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.jsonl"]
