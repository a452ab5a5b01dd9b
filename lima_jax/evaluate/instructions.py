"""The judging instructions (written for this project after LIMA's protocol) and the parsers that
read a judge's reply. The reply must end with a fixed last line so parsing never guesses:
``Verdict: 1`` / ``Verdict: 2`` / ``Verdict: tie`` for pairs, ``Score: N`` (1-6) for the scale."""

from __future__ import annotations

import re

PAIRWISE_SYSTEM = (
    "You are a careful evaluator of AI assistant responses. You will see a user's prompt and two "
    "responses to it. Decide which response is better: more helpful, correct, relevant and "
    "complete, and well written, for the person who asked. Length alone is not quality. The "
    "order in which the responses are shown is random and must not influence you. If neither is "
    "clearly better, say tie.")

PAIRWISE_USER = """[Prompt]
{prompt}

[Response 1]
{first}

[Response 2]
{second}

Explain your reasoning in a few sentences, then finish with exactly one last line:
Verdict: 1   (Response 1 is better)
Verdict: 2   (Response 2 is better)
Verdict: tie (neither is clearly better)"""

SCALE_SYSTEM = (
    "You are a careful evaluator of AI assistant responses. Rate how helpful a response is to "
    "the user's prompt on a scale of 1 to 6: 1 = useless or harmful, 2 = mostly unhelpful, 3 = "
    "somewhat helpful with major flaws, 4 = helpful with minor flaws, 5 = very helpful, 6 = "
    "excellent, as good as an expert's answer.")

SCALE_USER = """[Prompt]
{prompt}

[Response]
{response}

Explain your rating in a few sentences, then finish with exactly one last line:
Score: N   (N an integer from 1 to 6)"""

_VERDICT = re.compile(r"verdict\s*[:=]\s*\**\s*(1|2|tie)\b", re.IGNORECASE)
_SCORE = re.compile(r"score\s*[:=]\s*\**\s*([1-6])(?![\d.])", re.IGNORECASE)


def pairwise_messages(prompt: str, first: str, second: str) -> list[dict]:
    return [{"role": "system", "content": PAIRWISE_SYSTEM},
            {"role": "user", "content": PAIRWISE_USER.format(prompt=prompt, first=first, second=second)}]


def scale_messages(prompt: str, response: str) -> list[dict]:
    return [{"role": "system", "content": SCALE_SYSTEM},
            {"role": "user", "content": SCALE_USER.format(prompt=prompt, response=response)}]


def parse_verdict(reply: str) -> str | None:
    """'first', 'second' or 'tie' from the reply's last ``Verdict:`` line; None if there is none."""
    found = _VERDICT.findall(reply or "")
    if not found:
        return None
    return {"1": "first", "2": "second"}.get(found[-1].lower(), "tie")


def parse_score(reply: str) -> int | None:
    """The 1-6 score from the reply's last ``Score:`` line; None if there is none."""
    found = _SCORE.findall(reply or "")
    return int(found[-1]) if found else None
