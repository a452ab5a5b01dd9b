"""Append-only evaluation files after a crash cut their last record short: the judge cache and the
annotation verdicts. Reopened, each sets the fragment aside in FILE.torn-<n> (never dropped),
appends after the last whole record, and reads back whole; `evaluate table` accepts the verdicts.
Response files with text no judge can be sent are file:line errors."""

from __future__ import annotations

import json

import pytest

from lima_jax.evaluate.annotate import AnnotationStudy
from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.cli import main
from lima_jax.evaluate.pairwise import read_verdicts
from lima_jax.evaluate.responses import ResponseError, read_responses
from lima_jax.jsonl import read_records


def _cut(path, record: dict, keep: int) -> bytes:
    """Appends the first `keep` bytes of `record`'s line, as a kill mid-write leaves it."""
    fragment = json.dumps(record).encode()[:keep]
    with path.open("ab") as f:
        f.write(fragment)
    return fragment


def test_a_torn_cache_reply_is_set_aside_and_the_cache_appends_after_it(tmp_path, capsys):
    path = tmp_path / "cache.jsonl"
    cache = ReplyCache(path)
    cache.put("k1", "first reply")
    fragment = _cut(path, {"key": "k2", "reply": "a reply the kill cut"}, 20)
    reopened = ReplyCache(path)
    assert len(reopened) == 1 and reopened.get("k2") is None  # asked again
    assert (tmp_path / "cache.jsonl.torn-1").read_bytes() == fragment
    assert "set aside in" in capsys.readouterr().err
    reopened.put("k2", "asked again")
    assert read_records(path) == [{"key": "k1", "reply": "first reply"}, {"key": "k2", "reply": "asked again"}]
    assert ReplyCache(path).get("k2") == "asked again"


def test_a_reply_with_a_lone_surrogate_is_kept_not_a_failed_write(tmp_path):
    path = tmp_path / "cache.jsonl"
    ReplyCache(path).put("k", "bad \ud800 reply")  # a judge's reply can hold one
    assert path.read_text(encoding="utf-8") == '{"key": "k", "reply": "bad \\ud800 reply"}\n'


def _pairs(n):
    from lima_jax.evaluate.responses import Response

    return [(Response(f"p{i}", 0, f"prompt {i}", f"answer a {i}"),
             Response(f"p{i}", 0, f"prompt {i}", f"answer b {i}")) for i in range(n)]


def test_a_torn_verdict_is_set_aside_and_the_study_resumes(tmp_path, capsys):
    out = tmp_path / "ann"
    study = AnnotationStudy(_pairs(3), out, a_name="lima", b_name="gpt", annotator="ann")
    study.record("p0", "left")
    path = out / "verdicts.jsonl"
    fragment = _cut(path, {"id": "p1", "sample": 0, "verdict": "tie", "judge": "human:ann"}, 30)
    # Before the study reopens it, `evaluate table` names the torn line and what to do.
    assert main(["table", "--verdicts", str(out), "--out", str(tmp_path / "t")]) == 2
    assert f"{path}:2: not valid JSON" in capsys.readouterr().err

    restarted = AnnotationStudy(_pairs(3), out, a_name="lima", b_name="gpt", annotator="ann")
    assert restarted.state()["done"] == 1 and restarted.state()["item"]["id"] == "p1"
    assert (out / "verdicts.jsonl.torn-1").read_bytes() == fragment
    restarted.record("p1", "tie")
    assert [r["id"] for r in read_verdicts(path)] == ["p0", "p1"]
    assert main(["table", "--verdicts", str(out), "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "table.json").read_text())[0]["judged"] == 2


def test_a_response_file_with_a_lone_surrogate_names_its_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "sample": 0, "text": "fine"}\n{"id": "b", "sample": 0, "text": "x\\udc00"}\n')
    with pytest.raises(ResponseError, match=r"r\.jsonl:2: text that cannot be encoded as UTF-8") as err:
        read_responses(path)
    assert "torn" not in str(err.value)  # the line is whole: no hint to rerun decode
