"""Pairwise preference after LIMA: A better, B better or tie, each pair judged in both orders.

Order-swap rule: the verdict stands only when both orders agree on it; any disagreement (a flip,
or a win in one order and a tie in the other) is a tie, which cancels the judge's position bias.
A pair with an empty response, an unparseable reply or a failed request is skipped, counted and
kept in the verdict file with its raw replies, so nothing judged is lost."""

from __future__ import annotations

import pathlib

from lima_jax.errors import InputError
from lima_jax.evaluate import instructions
from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.judges import Judge
from lima_jax.evaluate.responses import Response
from lima_jax.evaluate.runner import ask_all
from lima_jax.jsonl import NOT_JSON, JsonLineError, read_jsonl, torn_tail, write_json, write_jsonl, write_text_atomic

VERDICTS = ("a", "tie", "b")
# A last line a kill cut short: the study that appends to the file sets it aside when it reopens it.
TORN_VERDICT_HINT = ("a verdict cut short by an interrupted run; restart `evaluate annotate` on this "
                     "folder, which sets it aside in verdicts.jsonl.torn-<n>")


def combine_orders(ab: str, ba: str) -> str:
    """Verdict ('a', 'b', 'tie') from the parsed replies of order A-B and order B-A
    (each 'first', 'second' or 'tie')."""
    first = {"first": "a", "second": "b", "tie": "tie"}[ab]
    second = {"first": "b", "second": "a", "tie": "tie"}[ba]
    return first if first == second else "tie"


def run_pairwise(pairs: list[tuple[Response, Response]], judge: Judge, cache: ReplyCache, *,
                 quiet: bool = True) -> list[dict]:
    """One record per pair: id, verdict ('a' | 'b' | 'tie' | 'skipped'), why skipped, raw replies."""
    judged = [(a, b) for a, b in pairs if a.text.strip() and b.text.strip()]
    requests = []
    for a, b in judged:
        prompt = a.prompt or b.prompt
        requests.append((instructions.pairwise_messages(prompt, a.text, b.text),
                         lambda p=prompt, x=a.text, y=b.text: judge.pairwise_reply(p, x, y)))
        requests.append((instructions.pairwise_messages(prompt, b.text, a.text),
                         lambda p=prompt, x=b.text, y=a.text: judge.pairwise_reply(p, x, y)))
    replies, errors = ask_all(judge, cache, requests, quiet=quiet)
    by_id = {}
    for n, (a, _b) in enumerate(judged):
        r_ab, r_ba = replies[2 * n], replies[2 * n + 1]
        record = {"id": a.id, "sample": a.sample, "judge": judge.judge_id,
                  "reply_ab": r_ab, "reply_ba": r_ba}
        error = errors[2 * n] or errors[2 * n + 1]
        p_ab, p_ba = instructions.parse_verdict(r_ab or ""), instructions.parse_verdict(r_ba or "")
        if error:
            record.update(verdict="skipped", skip="judge_error", error=error)
        elif p_ab is None or p_ba is None:
            record.update(verdict="skipped", skip="unparseable")
        else:
            record.update(verdict=combine_orders(p_ab, p_ba), order_ab=p_ab, order_ba=p_ba)
        by_id[a.id] = record
    out = []
    for a, b in pairs:
        if a.id in by_id:
            out.append(by_id[a.id])
        else:
            which = "a and b" if not (a.text.strip() or b.text.strip()) else ("a" if not a.text.strip() else "b")
            out.append({"id": a.id, "sample": a.sample, "judge": judge.judge_id,
                        "verdict": "skipped", "skip": f"empty_response_{which.replace(' ', '_')}"})
    return out


def win_table(records: list[dict], *, a_name: str, b_name: str) -> dict:
    """Counts and percentages of A wins / ties / B wins over the judged pairs, plus skip counts."""
    counts = {v: sum(r["verdict"] == v for r in records) for v in VERDICTS}
    judged = sum(counts.values())
    skips: dict[str, int] = {}
    for r in records:
        if r["verdict"] == "skipped":
            skips[r.get("skip", "other")] = skips.get(r.get("skip", "other"), 0) + 1
    pct = {v: (100.0 * counts[v] / judged if judged else 0.0) for v in VERDICTS}
    return {"a": a_name, "b": b_name, "judged": judged, "skipped": sum(skips.values()),
            "skips": skips, "a_wins": counts["a"], "ties": counts["tie"], "b_wins": counts["b"],
            "a_win_pct": pct["a"], "tie_pct": pct["tie"], "b_win_pct": pct["b"]}


def table_markdown(tables: list[dict]) -> str:
    """The win / tie / loss table of one or more comparisons, as markdown."""
    lines = ["| A | B | A wins | tie | B wins | judged | skipped |", "|---|---|---|---|---|---|---|"]
    for t in tables:
        lines.append(f"| {t['a']} | {t['b']} | {t['a_wins']} ({t['a_win_pct']:.1f}%) | "
                     f"{t['ties']} ({t['tie_pct']:.1f}%) | {t['b_wins']} ({t['b_win_pct']:.1f}%) | "
                     f"{t['judged']} | {t['skipped']} |")
    return "\n".join(lines) + "\n"


def read_verdicts(path: str | pathlib.Path) -> list[dict]:
    """Verdict records from a pairwise or annotation verdicts.jsonl (later lines for an id win)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no verdict file")
    latest: dict[str, dict] = {}
    try:
        for where, record in read_jsonl(path):
            _check_verdict(record, where)
            latest[record["id"]] = record
    except JsonLineError as err:
        if err.kind == NOT_JSON and torn_tail(path) is not None:
            raise JsonLineError(err.what, where=err.where, hint=TORN_VERDICT_HINT, kind=err.kind) from None
        raise
    return list(latest.values())


def _check_verdict(record: dict, where: str) -> None:
    """Makes the record's id a string; raises an InputError unless it is a verdict record."""
    try:
        record["id"] = str(record["id"])
        if record["verdict"] not in VERDICTS + ("skipped",):
            raise InputError(f"verdict {record['verdict']!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"not a verdict record ({e})", where=where) from e


def write_pairwise(out: pathlib.Path, records: list[dict], table: dict) -> None:
    """verdicts.jsonl, table.md and table.json in `out`."""
    write_jsonl(out / "verdicts.jsonl", records)
    write_text_atomic(out / "table.md", table_markdown([table]))
    write_json(out / "table.json", table, ensure_ascii=True)
