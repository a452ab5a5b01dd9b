"""Readers: the four formats into one conversation type, and every kind of bad input."""

import json
import subprocess
import sys

import pytest

from lima_jax.data import readers
from lima_jax.data.__main__ import main as cli_main
from lima_jax.data.errors import DataError
from tests.helpers.data_fixtures.tiny import FIXTURES

U, A, S = readers.USER, readers.ASSISTANT, readers.SYSTEM


def roles(conversation):
    return [t.role for t in conversation.turns]


def test_lima_jsonl_roles_alternate_and_source_is_kept():
    convs, fmt = readers.read_file(str(FIXTURES / "lima.jsonl"))
    assert fmt == "lima" and len(convs) == 8
    assert roles(convs[4]) == [U, A, U, A]
    assert convs[0].source == "stackexchange" and convs[0].id == "lima:1"
    assert convs[0].turns[1].text == "The capital of France is Paris."


def test_alpaca_json_joins_instruction_and_input():
    convs, fmt = readers.read_file(str(FIXTURES / "alpaca.json"))
    assert fmt == "alpaca" and len(convs) == 3
    assert convs[0].turns[0].text == "Give three tips for staying healthy."  # empty input: no join
    assert convs[1].turns[0].text == "Translate to French.\n\nGood morning"
    assert roles(convs[1]) == [U, A] and convs[1].turns[1].text == "Bonjour"
    assert convs[2].id == "alpaca:12"  # the line the third element starts on


def test_fastchat_maps_speakers_and_keeps_ids():
    convs, fmt = readers.read_file(str(FIXTURES / "fastchat.json"))
    assert fmt == "fastchat"
    assert [c.id for c in convs] == ["fc-1", "fc-2"]
    assert roles(convs[1]) == [S, U, A, U, A]


def test_openai_messages():
    convs, fmt = readers.read_file(str(FIXTURES / "openai.jsonl"))
    assert fmt == "openai" and roles(convs[0]) == [S, U, A]
    assert convs[0].turns[2].text == "Apple."


def test_several_files_and_named_format():
    result = readers.read_conversations(f"{FIXTURES / 'lima.jsonl'},{FIXTURES / 'openai.jsonl'}")
    assert len(result.conversations) == 10
    assert set(result.formats.values()) == {"lima", "openai"}
    with pytest.raises(DataError, match="missing field 'instruction'"):
        readers.read_file(str(FIXTURES / "lima.jsonl"), fmt="alpaca")


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


GOOD = json.dumps({"conversations": ["q", "a"], "source": "s"})
BAD_CASES = {
    "malformed_json": ('{"conversations": ["q", "a"]', "malformed JSON"),
    "missing_field": (json.dumps({"source": "s"}), "missing field 'conversations'"),
    "not_a_string": (json.dumps({"conversations": ["q", 7]}), "turn 1 of 'conversations' is int"),
    "empty": (json.dumps({"conversations": []}), "is empty"),
    # JSON that parses but holds text SentencePiece and UTF-8 cannot take, or nests past the parser.
    "unencodable": ('{"conversations": ["q \\ud800", "a"]}', "cannot be encoded as UTF-8"),
    "too_deep": ('{"conversations": ["q", "a"], "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 "nested deeper than the parser allows"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_line_names_file_line_and_problem(tmp_path, kind):
    bad, what = BAD_CASES[kind]
    path = _write(tmp_path, "d.jsonl", f"{GOOD}\n{GOOD}\n{bad}\n{GOOD}\n")
    with pytest.raises(DataError) as info:
        readers.read_file(path, fmt="lima")
    assert str(info.value).startswith(f"{path}:3: ") and what in str(info.value)


def test_missing_field_and_invalid_utf8(tmp_path):
    path = _write(tmp_path, "a.jsonl", json.dumps({"instruction": "i", "input": ""}) + "\n")
    with pytest.raises(DataError, match=r"a.jsonl:1: missing field 'output'"):
        readers.read_file(path, fmt="alpaca")
    path = _write(tmp_path, "u.jsonl", GOOD.encode() + b"\n" + b'{"conversations": ["\xff", "a"]}\n')
    with pytest.raises(DataError, match=r"u.jsonl:2: invalid UTF-8"):
        readers.read_file(path)


def test_skip_counts_and_lists_locations(tmp_path):
    lines = [GOOD, BAD_CASES["malformed_json"][0], GOOD, BAD_CASES["not_a_string"][0], GOOD]
    path = _write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    result = readers.read_conversations(path, on_error="skip")
    assert len(result.conversations) == 3
    assert result.skips.total == 2
    assert dict(result.skips.counts) == {"malformed_json": 1, "not_a_string": 1}
    assert result.skips.first[0].startswith(f"{path}:2:") and result.skips.first[1].startswith(f"{path}:4:")


def test_skip_counts_lone_surrogates_and_deep_nesting(tmp_path):
    lines = [GOOD, BAD_CASES["unencodable"][0], GOOD, BAD_CASES["too_deep"][0]]
    path = _write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    result = readers.read_conversations(path, on_error="skip")
    assert len(result.conversations) == 2
    assert dict(result.skips.counts) == {"unencodable": 1, "too_deep": 1}
    assert result.skips.first[0].startswith(f"{path}:2: text that cannot be encoded")


def test_json_array_lone_surrogate_is_skippable_and_deep_nesting_fatal(tmp_path):
    alpaca = json.dumps({"instruction": "i", "output": "o"})
    path = _write(tmp_path, "a.json", f'[\n{alpaca},\n{{"instruction": "i\\udfff", "output": "o"}},\n{alpaca}\n]')
    with pytest.raises(DataError, match=r"a.json:3: text that cannot be encoded as UTF-8"):
        readers.read_file(path)
    result = readers.read_conversations(path, on_error="skip")
    assert len(result.conversations) == 2 and dict(result.skips.counts) == {"unencodable": 1}
    path = _write(tmp_path, "b.json", f'[\n{alpaca},\n' + "[" * 100_000 + "]" * 100_000 + "\n]")
    with pytest.raises(DataError, match=r"b.json:3: JSON nested deeper than the parser allows"):
        readers.read_conversations(path, on_error="skip")  # where it ends is unknown: fatal


def test_missing_file_unknown_format_and_broken_array_are_fatal(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        readers.read_conversations(str(tmp_path / "nope.jsonl"), on_error="skip")
    path = _write(tmp_path, "x.jsonl", json.dumps({"text": "hello"}) + "\n")
    with pytest.raises(DataError, match=r"x.jsonl:1: unknown record format .*--format"):
        readers.read_conversations(path, on_error="skip")
    with pytest.raises(DataError, match="unknown format 'csv'"):
        readers.read_file(path, fmt="csv")
    path = _write(tmp_path, "arr.json", '[\n{"instruction": "i", "output": "o"},\n{"instruction": }\n]')
    with pytest.raises(DataError, match=r"arr.json:3: malformed JSON"):
        readers.read_conversations(path, on_error="skip")


def test_cli_bad_input_exits_2_with_location(tmp_path, capsys):
    path = _write(tmp_path, "d.jsonl", f"{GOOD}\n{{broken\n")
    code = cli_main(["report", "--data", path, "--tokenizer", "unused.model"])
    err = capsys.readouterr().err
    assert code == 2 and f"{path}:2: malformed JSON" in err and "Traceback" not in err


def test_cli_subprocess_missing_file_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lima_jax.data", "report", "--data", str(tmp_path / "none.jsonl"),
         "--tokenizer", "x.model"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "none.jsonl: file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_real_lima_and_instruction_sets(shared_data):
    result = readers.read_conversations(str(shared_data / "lima" / "train.jsonl"))
    convs = result.conversations
    assert len(convs) == 1030
    counts = {}
    for c in convs:
        counts[c.source] = counts.get(c.source, 0) + 1
    assert counts == {"stackexchange": 400, "wikihow": 200, "writingprompts": 150, "nlp": 50,
                      "authors": 200, "multi_turn": 30}
    assert len(convs[1021].turns) == 5 and convs[1021].turns[-1].role == U
    alpaca, fmt = readers.read_file(str(shared_data / "instruct" / "random_9k.json"))
    assert fmt == "alpaca" and len(alpaca) == 9229
    fastchat, fmt = readers.read_file(str(shared_data / "instruct" / "filtered_alpaca_1k_longest.json"))
    assert fmt == "fastchat" and len(fastchat) == 1000 and roles(fastchat[0])[:2] == [U, A]
    dolly, _ = readers.read_file(str(shared_data / "instruct" / "dolly_3k.json"))
    assert len(dolly) == 2996 and dolly[0].source != "dolly_3k"  # category becomes the source
