"""Curation inputs that would fail far from the file, or outputs that could cost a user data:
NaN/Infinity scores, lone surrogates and too-deep JSON are file:line errors; an output never
replaces an input and is written whole or not at all."""

from __future__ import annotations

import json

import pytest

from lima_jax.curate import records as records_lib
from lima_jax.curate.__main__ import main
from lima_jax.curate.contamination import read_eval_prompts
from lima_jax.data.errors import DataError

GOOD = json.dumps({"prompt": "p", "response": "r", "score": 5})


@pytest.mark.parametrize("score", ["NaN", "Infinity", "-Infinity"])
def test_a_score_that_is_not_finite_is_a_file_line_error(tmp_path, capsys, score):
    dump = tmp_path / "dump.jsonl"
    dump.write_text(f'{GOOD}\n{{"prompt": "p2", "response": "r2", "score": {score}}}\n')
    with pytest.raises(DataError, match=r"dump\.jsonl:2: 'score' is -?(nan|inf), not a finite number"):
        records_lib.read_records(str(dump))
    assert main(["select", "--method", "longest", "--n", "1", "--data", str(dump),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"error: {dump}:2: 'score' is" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
    lima = tmp_path / "lima.jsonl"  # a format with no score field of its own
    lima.write_text(f'{{"conversations": ["q", "a"], "score": {score}}}\n')
    with pytest.raises(DataError, match=r"lima\.jsonl:1: 'score' is"):
        records_lib.read_records(str(lima))


def test_a_lone_surrogate_or_deep_json_in_a_dump_or_eval_file_is_a_file_line_error(tmp_path):
    dump = tmp_path / "dump.jsonl"
    dump.write_text(f'{GOOD}\n{{"prompt": "p\\ud800", "response": "r"}}\n')
    with pytest.raises(DataError, match=r"dump\.jsonl:2: text that cannot be encoded as UTF-8"):
        records_lib.read_records(str(dump))
    dump.write_text(f'{GOOD}\n{{"prompt": "p", "response": "r", "x": {"[" * 100_000}{"]" * 100_000}}}\n')
    with pytest.raises(DataError, match=r"dump\.jsonl:2: JSON nested deeper than the parser allows"):
        records_lib.read_records(str(dump))
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "\\udfff"}\n')
    with pytest.raises(DataError, match=r"eval\.jsonl:2: text that cannot be encoded"):
        read_eval_prompts(str(prompts))


def test_an_output_that_is_an_input_is_refused(tmp_path, capsys):
    dump = tmp_path / "dump.jsonl"
    dump.write_text("".join(json.dumps({"prompt": f"p{i}", "response": "r" * i}) + "\n" for i in range(1, 5)))
    before = dump.read_bytes()
    assert main(["select", "--method", "longest", "--n", "1", "--data", str(dump), "--out", str(dump)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --out: {dump} is also an input "
                                               "(write to another file; the input is left as it is)")
    assert main(["dedup", "--data", str(dump), "--out", str(tmp_path / "o.jsonl"),
                 "--report", str(tmp_path / "." / "dump.jsonl")]) == 2
    assert "--report:" in capsys.readouterr().err
    assert dump.read_bytes() == before


def test_an_output_that_fails_mid_write_leaves_the_old_one_whole(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    out.write_text('{"conversations": ["old", "output"]}\n')
    records = [records_lib.Record("p1", "r1"), records_lib.Record("p2", "r2")]
    to_json = records_lib.to_json

    def fails_on_the_second(record, fmt="qa"):
        if record.prompt == "p2":
            raise RuntimeError("killed")
        return to_json(record, fmt)

    monkeypatch.setattr(records_lib, "to_json", fails_on_the_second)
    with pytest.raises(RuntimeError):
        records_lib.write_records(out, records, "lima")
    assert out.read_text() == '{"conversations": ["old", "output"]}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left
