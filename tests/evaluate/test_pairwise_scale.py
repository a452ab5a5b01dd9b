"""Evaluation logic: order-swap and tie rules, win tables, the 1-6 scale's statistics, annotator
agreement, bad response files, and the CLI end to end with the deterministic `length` stand-in
judge (tables, verdict files, the Figure-1 chart)."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest

from lima_jax.evaluate import instructions
from lima_jax.evaluate.agreement import agreement
from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.cli import main
from lima_jax.evaluate.judges import Judge, JudgeError, LengthJudge, make_judge
from lima_jax.evaluate.pairwise import (
    combine_orders,
    read_verdicts,
    run_pairwise,
    win_table,
)
from lima_jax.evaluate.responses import (
    Response,
    ResponseError,
    pair_responses,
    read_responses,
)
from lima_jax.evaluate.scale import mean_ci, run_scale, scale_summary, t_critical


def _write(path: pathlib.Path, rows) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(texts, samples=1):
    return [{"id": f"p{i}", "sample": s, "prompt": f"question {i}", "text": t, "tokens": [],
             "num_tokens": 0, "stop_reason": "eot"} for i, t in enumerate(texts) for s in range(samples)]


# ----------------------------------------------------------------- order swap and ties
@pytest.mark.parametrize("ab, ba, expected", [
    ("first", "second", "a"),    # A wins in both positions
    ("second", "first", "b"),    # B wins in both positions
    ("first", "first", "tie"),   # the first position wins twice: position bias, a flip -> tie
    ("second", "second", "tie"),
    ("tie", "tie", "tie"),
    ("first", "tie", "tie"),     # a win in one order only is not a win
    ("tie", "first", "tie"),
])
def test_combine_orders(ab, ba, expected):
    assert combine_orders(ab, ba) == expected


class PositionBiased(Judge):
    """Always prefers whatever is shown first: every pair must come out a tie."""
    judge_id = "biased"

    def chat(self, messages):
        return "Verdict: 1"


def test_a_position_biased_judge_yields_only_ties():
    pairs = [(Response(str(i), 0, "q", "x" * i + "a"), Response(str(i), 0, "q", "y")) for i in range(4)]
    records = run_pairwise(pairs, PositionBiased(), ReplyCache(None))
    assert [r["verdict"] for r in records] == ["tie"] * 4
    assert win_table(records, a_name="A", b_name="B")["ties"] == 4


def test_parsers_take_the_last_marked_line():
    assert instructions.parse_verdict("Verdict: 2 hmm\nVerdict: 1") == "first"
    assert instructions.parse_verdict("**Verdict:** Tie") == "tie"
    assert instructions.parse_verdict("Response 1 is better") is None
    assert instructions.parse_score("Score: 7") is None and instructions.parse_score("Score: 4.5") is None
    assert instructions.parse_score("Score: 2\nactually\nScore: 5") == 5


def test_win_table_counts_and_percentages():
    records = [{"verdict": v} for v in ["a", "a", "a", "tie", "b"]] + [{"verdict": "skipped", "skip": "unparseable"}]
    t = win_table(records, a_name="lima", b_name="gpt")
    assert (t["a_wins"], t["ties"], t["b_wins"], t["judged"], t["skipped"]) == (3, 1, 1, 5, 1)
    assert math.isclose(t["a_win_pct"], 60.0) and math.isclose(t["tie_pct"] + t["b_win_pct"], 40.0)


# ----------------------------------------------------------------- the scale's statistics
def test_t_critical_matches_student_t():
    for df, exact in [(1, 12.7062), (10, 2.2281), (50, 2.0086), (100, 1.9840), (1000, 1.9623)]:
        assert abs(t_critical(df) - exact) < 2e-3, df


def test_mean_ci_against_a_hand_computation():
    values = [4, 5, 6, 3, 5]
    mean, low, high = mean_ci(values)
    half = 2.776 * np.std(values, ddof=1) / math.sqrt(5)
    assert math.isclose(mean, 4.6) and math.isclose(low, 4.6 - half) and math.isclose(high, 4.6 + half)
    assert mean_ci([3]) == (3, 3, 3)
    with pytest.raises(ValueError):
        mean_ci([])


def test_scale_summary_averages_samples_per_prompt_before_the_interval():
    records = ([{"id": "p0", "sample": s, "score": sc} for s, sc in enumerate([1, 1, 1, 1])] +
               [{"id": "p1", "sample": s, "score": 6} for s in range(1)] +
               [{"id": "p2", "sample": 0, "score": None, "skip": "unparseable"}])
    s = scale_summary(records, "sys")
    assert (s["prompts"], s["scored"], s["skipped"]) == (2, 5, 1)
    assert math.isclose(s["mean"], 3.5)  # prompt means 1 and 6, not the response mean 2.0
    assert s["ci_low"] < 3.5 < s["ci_high"]


def test_length_judge_scale_and_skips():
    responses = [Response("a", 0, "q", "x" * 450), Response("b", 0, "q", "  ")]
    records = run_scale(responses, LengthJudge(), ReplyCache(None))
    assert records[0]["score"] == 3 and records[1]["skip"] == "empty_response"


# ----------------------------------------------------------------- agreement
def test_agreement_and_kappa():
    x = {"1": "a", "2": "a", "3": "b", "4": "tie", "5": "b"}
    y = {"1": "a", "2": "tie", "3": "b", "4": "tie", "5": "a", "6": "a"}
    r = agreement(x, y)
    assert r["n"] == 5 and math.isclose(r["agreement"], 0.6)
    assert math.isclose(r["tie_discounted_agreement"], 0.7)
    p_e = 0.4 * 0.4 + 0.2 * 0.4 + 0.4 * 0.2  # label marginals (a, tie, b): x .4 .2 .4, y .4 .4 .2
    assert math.isclose(r["cohen_kappa"], (0.6 - p_e) / (1 - p_e))
    assert math.isclose(agreement(x, x)["cohen_kappa"], 1.0)
    with pytest.raises(ValueError, match="share no judged ids"):
        agreement({"1": "a"}, {"2": "a"})


# ----------------------------------------------------------------- bad input
def test_bad_response_files(tmp_path):
    dup = _write(tmp_path / "dup.jsonl", _rows(["x", "y"]) + _rows(["z"]))
    with pytest.raises(ResponseError, match=r"dup.jsonl:3: duplicate id 'p0' sample 0 \(first on line 1\)"):
        read_responses(dup)
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(_rows(["x"])[0]) + "\n{\"id\": ")
    with pytest.raises(ResponseError, match=r"torn.jsonl:2: not valid JSON .*a torn last line\?"):
        read_responses(torn)
    a = read_responses(_write(tmp_path / "a.jsonl", _rows(["x", "y", "z"])))
    b = read_responses(_write(tmp_path / "b.jsonl", _rows(["x", "y"])))
    with pytest.raises(ResponseError, match=r"1 ids only in A \(e.g. \['p2'\]\), 0 only in B.*--intersect"):
        pair_responses(a, b)
    pairs, missing = pair_responses(a, b, intersect=True)
    assert len(pairs) == 2 and missing == {"only_in_a": 1, "only_in_b": 0}


def test_line_separators_inside_an_answer_stay_in_it(tmp_path):
    # JSON keeps U+2028 and U+0085 unescaped inside strings; they must not end the line.
    text = "first\u2028second\x85third"
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_rows([text])[0], ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_responses(path)[("p0", 0)].text == text


def test_unknown_judge_spec():
    with pytest.raises(JudgeError, match="unknown judge"):
        make_judge("gpt4")


# ----------------------------------------------------------------- the CLI end to end
def test_cli_pairwise_table_chart_agree_and_score(tmp_path, capsys):
    a = _write(tmp_path / "lima.jsonl", _rows(["long answer " * 5, "long answer " * 5, "", "same", "s"]))
    b = _write(tmp_path / "gpt.jsonl", _rows(["short", "short", "short", "same", "long enough"]))
    out = tmp_path / "lima_vs_gpt"
    assert main(["pairwise", "--a", str(a), "--b", str(b), "--judge", "length", "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    assert (table["a"], table["b"], table["a_wins"], table["ties"], table["b_wins"]) == ("lima", "gpt", 2, 1, 1)
    assert table["skips"] == {"empty_response_a": 1}
    assert "| lima | gpt | 2 (50.0%) | 1 (25.0%) | 1 (25.0%) | 4 | 1 |" in (out / "table.md").read_text()
    assert len(read_verdicts(out / "verdicts.jsonl")) == 5  # the skipped pair is kept, not lost
    png = out / "winrate.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out2 = tmp_path / "lima_vs_other"
    assert main(["pairwise", "--a", str(a), "--b", str(a), "--judge", "length", "--out", str(out2),
                 "--b-name", "other"]) == 0
    combined = tmp_path / "all"
    assert main(["table", "--verdicts", str(out), str(out2), "--out", str(combined)]) == 0
    rows = json.loads((combined / "table.json").read_text())
    assert [(t["b"], t["ties"]) for t in rows] == [("gpt", 1), ("other", 4)]
    assert (combined / "winrate.png").stat().st_size > 1000

    capsys.readouterr()
    assert main(["agree", "--x", str(out), "--y", str(out2)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4

    scored = tmp_path / "scores"
    r = _write(tmp_path / "r.jsonl", _rows(["x" * 300, "x" * 1000, "y" * 10], samples=2))
    assert main(["score", "--responses", str(r), "--judge", "length", "--out", str(scored)]) == 0
    summary = json.loads((scored / "scores.json").read_text())[0]
    assert (summary["prompts"], summary["scored"]) == (3, 6) and math.isclose(summary["mean"], 3.0)
    assert len((scored / "scores.jsonl").read_text().splitlines()) == 6


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", _rows(["x"]))
    b = _write(tmp_path / "b.jsonl", [{"id": "other", "text": "y"}])
    assert main(["pairwise", "--a", str(a), "--b", str(b), "--judge", "length", "--out", str(tmp_path)]) == 2
    assert "do not answer the same prompts" in capsys.readouterr().err
