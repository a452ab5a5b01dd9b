"""The `length` judge: a deterministic, free stand-in for tests and offline dry runs, not a
judge of quality."""

from __future__ import annotations

from lima_jax.evaluate.judges.base import Judge, JudgeError


class LengthJudge(Judge):
    """Deterministic stand-in for tests and offline dry runs, NOT a judge of quality: the longer
    response wins (equal lengths tie); the score grows with length, 1 per 200 characters, capped at 6."""

    judge_id = "length"
    concurrency = 1

    def chat(self, messages):  # only the structured entry points make sense for it
        raise JudgeError("the length judge only answers pairwise and scale requests")

    def pairwise_reply(self, prompt, first, second):
        n1, n2 = len(first.strip()), len(second.strip())
        verdict = "tie" if n1 == n2 else ("1" if n1 > n2 else "2")
        return f"Lengths {n1} and {n2}.\nVerdict: {verdict}"

    def scale_reply(self, prompt, response):
        return f"Length {len(response)}.\nScore: {min(6, 1 + len(response.strip()) // 200)}"
