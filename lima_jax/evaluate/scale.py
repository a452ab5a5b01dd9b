"""LIMA's ablation measure: each response graded 1-6 for helpfulness, reported per system as a
mean with a two-sided 95% confidence interval.

Samples of one prompt are not independent, so the interval is taken over prompts: each prompt's
scores are averaged over its samples, then a Student-t interval is taken over those prompt means."""

from __future__ import annotations

import math

from lima_jax.errors import InputError
from lima_jax.evaluate import instructions
from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.judges import Judge
from lima_jax.evaluate.responses import Response
from lima_jax.evaluate.runner import ask_all

# Two-sided 95% Student-t critical values t_{0.975, df}; beyond the table, interpolated in 1/df
# towards the normal 1.95996 (error < 0.001, far below the sampling error it scales).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
         17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
         25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000,
         120: 1.980}
_Z975 = 1.959964


def t_critical(df: int) -> float:
    """t_{0.975, df}, the two-sided 95% critical value."""
    if df < 1:
        raise InputError(f"degrees of freedom must be >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    knots = sorted(_T975) + [math.inf]
    hi = next(k for k in knots if k > df)
    lo = max(k for k in knots if k < df)
    t_lo, t_hi = _T975[lo], _T975.get(hi, _Z975)
    w = (1 / lo - 1 / df) / (1 / lo - (0 if hi == math.inf else 1 / hi))
    return t_lo + w * (t_hi - t_lo)


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% Student-t interval; one value gives a zero-width interval."""
    if not values:
        raise InputError("no values to average")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_critical(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def run_scale(responses: list[Response], judge: Judge, cache: ReplyCache, *,
              quiet: bool = True) -> list[dict]:
    """One record per response: id, sample, score (1-6) or skip reason, raw reply."""
    judged = [r for r in responses if r.text.strip()]
    requests = [(instructions.scale_messages(r.prompt, r.text),
                 lambda r=r: judge.scale_reply(r.prompt, r.text)) for r in judged]
    replies, errors = ask_all(judge, cache, requests, quiet=quiet)
    results = {}
    for r, reply, error in zip(judged, replies, errors):
        record = {"id": r.id, "sample": r.sample, "judge": judge.judge_id, "reply": reply}
        score = instructions.parse_score(reply or "")
        if error:
            record.update(score=None, skip="judge_error", error=error)
        elif score is None:
            record.update(score=None, skip="unparseable")
        else:
            record["score"] = score
        results[(r.id, r.sample)] = record
    return [results.get((r.id, r.sample)) or
            {"id": r.id, "sample": r.sample, "judge": judge.judge_id, "score": None,
             "skip": "empty_response"} for r in responses]


def scale_summary(records: list[dict], system: str) -> dict:
    """Mean score and 95% CI over prompts (each prompt the mean of its samples), plus skip counts."""
    per_prompt: dict[str, list[int]] = {}
    skips: dict[str, int] = {}
    for r in records:
        if r["score"] is None:
            skips[r["skip"]] = skips.get(r["skip"], 0) + 1
        else:
            per_prompt.setdefault(r["id"], []).append(r["score"])
    means = [sum(s) / len(s) for s in per_prompt.values()]
    summary = {"system": system, "prompts": len(means), "scored": sum(map(len, per_prompt.values())),
               "skipped": sum(skips.values()), "skips": skips}
    if means:
        mean, low, high = mean_ci(means)
        summary.update(mean=mean, ci_low=low, ci_high=high)
    else:
        summary.update(mean=None, ci_low=None, ci_high=None)
    return summary


def scale_markdown(summaries: list[dict]) -> str:
    lines = ["| system | mean score (1-6) | 95% CI | prompts | responses scored | skipped |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        if s["mean"] is None:
            lines.append(f"| {s['system']} | - | - | 0 | 0 | {s['skipped']} |")
        else:
            lines.append(f"| {s['system']} | {s['mean']:.2f} | [{s['ci_low']:.2f}, {s['ci_high']:.2f}] | "
                         f"{s['prompts']} | {s['scored']} | {s['skipped']} |")
    return "\n".join(lines) + "\n"
