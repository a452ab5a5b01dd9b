"""The judge interface: `Judge` (judging messages -> reply text), `JudgeOptions`, `JudgeError`,
and `redact`, which takes API keys out of any text bound for disk or stderr.

A judge turns the judging messages of `lima_jax.evaluate.instructions` into a reply text; the
callers parse it, so every judge is held to the same reply format and an unparseable reply is
counted, not guessed. `JudgeOptions` checks its numbers when it is made (README, "Evaluation":
``--timeout`` bounds a whole request, ``--retries`` and ``--max-retry-after`` bound the waiting)."""


from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable

from lima_jax.errors import InputError, LimaError
from lima_jax.evaluate import instructions

REDACTED = "[REDACTED]"
# "Bearer <token>" anywhere, and the value of an Authorization / api-key header or field however
# it is quoted (``Authorization: x``, ``"authorization": "x"``, ``api_key=x``).
_SECRET_PATTERNS = [
    re.compile(r"(?i)\b(bearer)\s+(?!\[REDACTED\])[^\s\"',;}\]]+"),
    re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]key)([\"']?\s*[:=]\s*[\"']?)"
               r"((?:basic|digest|token)\s+)?(?!bearer\b)(?!\[REDACTED\])[^\s\"',;}\]]+"),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every secret value and every Bearer token / Authorization or API-key value
    replaced by ``[REDACTED]``. Apply it to a whole text before cutting it short, so a cut cannot
    leave half a key that no longer matches."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{REDACTED}", text)


class JudgeError(LimaError, RuntimeError):
    """A judge request that failed for good (after retries) or a bad judge SPEC."""


class Judge:
    """Base class: `chat(messages) -> reply`; `judge_id` names it in the reply cache."""

    judge_id = "judge"
    concurrency = 1
    secrets: tuple[str, ...] = ()  # values (API keys) `redact` removes from replies and errors

    def chat(self, messages: list[dict]) -> str:
        raise NotImplementedError

    def redact(self, text: str) -> str:
        """`text` without this judge's secrets or any Bearer / Authorization value (see `redact`)."""
        return redact(text, self.secrets)

    def pairwise_reply(self, prompt: str, first: str, second: str) -> str:
        return self.chat(instructions.pairwise_messages(prompt, first, second))

    def scale_reply(self, prompt: str, response: str) -> str:
        return self.chat(instructions.scale_messages(prompt, response))


@dataclasses.dataclass
class JudgeOptions:
    """Settings for endpoint judges (the CLI's --api-key-env, --timeout, ...); a value that cannot
    work (a negative retry count, a timeout that is not a positive number) is an InputError."""
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0  # seconds for a WHOLE request: connect, send, and the full reply body
    retries: int = 6
    backoff: float = 1.0  # first wait before a retry; doubles per retry
    max_retry_after: float = 60.0  # longest wait before a retry: caps Retry-After and the backoff
    concurrency: int = 4
    max_tokens: int = 512
    tokenizer: str | None = None  # local judges: a tokenizer.model other than the checkpoint's
    template: str = "lima"  # local judges: the chat template the judging request is written in

    def __post_init__(self):
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise InputError(f"--retries must be an integer >= 0, got {self.retries!r}")
        _seconds("--timeout", self.timeout, positive=True)
        _seconds("--backoff", self.backoff)
        _seconds("--max-retry-after", self.max_retry_after)


def _seconds(flag: str, value, positive: bool = False) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > 0 if positive else value >= 0))
    if not ok:
        raise InputError(f"{flag} must be a number of seconds {'> 0' if positive else '>= 0'}, got {value!r}")
