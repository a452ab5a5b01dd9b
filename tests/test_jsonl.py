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


# --------------------------------------------------------------------------- torn tails


def _torn_file(path, whole=({"i": 0}, {"i": 1}), fragment=b'{"i": 2, "te'):
    jsonl.write_jsonl(path, whole)
    with path.open("ab") as f:
        f.write(fragment)  # what a kill mid-write leaves
    return fragment


def test_an_append_sets_a_torn_tail_aside_and_starts_a_line_of_its_own(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    fragment = _torn_file(path)
    assert jsonl.torn_tail(path) == (3, fragment)
    with pytest.raises(InputError, match=r"log\.jsonl:3: not valid JSON"):
        jsonl.read_records(path)
    assert jsonl.read_records(path, skip_torn_tail=True) == [{"i": 0}, {"i": 1}]  # reading changes nothing
    assert jsonl.torn_tail(path) == (3, fragment)
    aside = jsonl.append_jsonl(path, [{"i": 2}])
    assert aside == tmp_path / "log.jsonl.torn-1" and aside.read_bytes() == fragment
    assert f"its {len(fragment)} bytes are set aside in {aside}" in capsys.readouterr().err
    assert jsonl.read_records(path) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert jsonl.torn_tail(path) is None
    # A second crash: the next fragment goes beside the first, which is kept.
    with path.open("ab") as f:
        f.write(b'{"i": 3')
    with jsonl.JsonlAppender(path) as out:
        out.write({"i": 3})
    assert out.set_aside == tmp_path / "log.jsonl.torn-2"
    assert aside.read_bytes() == fragment and out.set_aside.read_bytes() == b'{"i": 3'
    assert jsonl.read_records(path) == [{"i": n} for n in range(4)]


@pytest.mark.parametrize("fragment", [
    '{"t": "é'.encode()[:-1],  # cut inside a two-byte character
    b"\x00" * 300,  # a file system's zero fill after a power cut
    b'{"t": "' + b"x" * 200_000,  # longer than the block the tail is looked for in
], ids=["mid-character", "zero-fill", "long"])
def test_any_torn_tail_is_kept_byte_for_byte(tmp_path, fragment):
    path = tmp_path / "log.jsonl"
    _torn_file(path, fragment=fragment)
    assert jsonl.read_records(path, skip_torn_tail=True) == [{"i": 0}, {"i": 1}]
    aside = jsonl.set_aside_torn_tail(path)
    assert aside.read_bytes() == fragment
    assert path.read_bytes() == b'{"i": 0}\n{"i": 1}\n'


def test_a_whole_last_line_only_gets_its_line_feed(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"i": 0}\n{"i": 1}')
    assert jsonl.torn_tail(path) is None and jsonl.set_aside_torn_tail(path) is None
    jsonl.append_jsonl(path, [{"i": 2}])
    assert path.read_bytes() == b'{"i": 0}\n{"i": 1}\n{"i": 2}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_a_file_that_is_only_a_torn_line_and_missing_files(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"i": 0, "t')
    assert jsonl.torn_tail(path) == (1, b'{"i": 0, "t')
    jsonl.append_jsonl(path, [{"i": 0}])
    assert jsonl.read_records(path) == [{"i": 0}]
    assert (tmp_path / "log.jsonl.torn-1").read_bytes() == b'{"i": 0, "t'
    assert jsonl.torn_tail(tmp_path / "none") is None and jsonl.set_aside_torn_tail(tmp_path / "none") is None


def test_a_failed_set_aside_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    _torn_file(path)
    before = path.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonl, "_write_aside", disk_full)
    with pytest.raises(OSError):
        jsonl.append_jsonl(path, [{"i": 2}])
    assert path.read_bytes() == before


def test_repair_tail_off_appends_as_before(tmp_path):
    path = tmp_path / "log.jsonl"
    _torn_file(path, fragment=b'{"i"')
    jsonl.append_jsonl(path, [{"i": 2}], repair_tail=False)
    assert path.read_bytes().endswith(b'{"i"{"i": 2}\n')


def test_an_appender_on_a_folder_or_under_a_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        jsonl.JsonlAppender(tmp_path)
    (tmp_path / "f").write_text("keep")
    with pytest.raises(InputError, match="a file is in the way"):
        jsonl.JsonlAppender(tmp_path / "f" / "log.jsonl")
    assert (tmp_path / "f").read_text() == "keep"


# --------------------------------------------------------------------------- text no file can hold


def test_lone_surrogates_and_deep_nesting_are_named_by_line(tmp_path):
    path = tmp_path / "d.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text('{"ok": "\\ud83d\\ude00"}\n{"t": ["a", "b\\ud800c"]}\n{"d": ' + deep + "}\n",
                    encoding="utf-8")
    with pytest.raises(jsonl.JsonLineError, match=r"d\.jsonl:2: text that cannot be encoded as UTF-8: "
                       r"a lone surrogate escape, \\ud800 at character 1 of \['t'\]\[1\]") as error:
        jsonl.read_records(path)
    assert error.value.kind == jsonl.UNENCODABLE and isinstance(error.value, InputError)
    assert jsonl.read_records(path, skip_invalid=True) == [{"ok": "😀"}]  # a pair is one character
    path.write_text('{"d": ' + deep + "}\n")
    with pytest.raises(jsonl.JsonLineError, match=r"d\.jsonl:1: JSON nested deeper than the parser allows"):
        jsonl.read_records(path)
    with pytest.raises(jsonl.JsonLineError, match="surrogate escape, \\\\udc00 at character 0 of \\[key 0\\]"):
        jsonl.parse_line('{"\\udc00": 1}')


def test_a_record_with_a_lone_surrogate_is_written_escaped_not_lost(tmp_path):
    path = tmp_path / "out.jsonl"
    jsonl.append_jsonl(path, [{"t": "a\ud800b"}, {"t": "é"}])
    assert path.read_text(encoding="utf-8") == '{"t": "a\\ud800b"}\n{"t": "é"}\n'
