"""The judge interface: `Judge` (judging messages -> reply text), `JudgeOptions`, `JudgeError`.

A judge turns the judging messages of `lima_jax.evaluate.instructions` into a reply text; the
callers parse it, so every judge is held to the same reply format and an unparseable reply is
counted, not guessed."""


from __future__ import annotations

import dataclasses

from lima_jax.errors import LimaError
from lima_jax.evaluate import instructions


class JudgeError(LimaError, RuntimeError):
    """A judge request that failed for good (after retries) or a bad judge SPEC."""


class Judge:
    """Base class: `chat(messages) -> reply`; `judge_id` names it in the reply cache."""

    judge_id = "judge"
    concurrency = 1

    def chat(self, messages: list[dict]) -> str:
        raise NotImplementedError

    def pairwise_reply(self, prompt: str, first: str, second: str) -> str:
        return self.chat(instructions.pairwise_messages(prompt, first, second))

    def scale_reply(self, prompt: str, response: str) -> str:
        return self.chat(instructions.scale_messages(prompt, response))


@dataclasses.dataclass
class JudgeOptions:
    """Settings for endpoint judges (the CLI's --api-key-env, --timeout, ...)."""
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    retries: int = 6
    backoff: float = 1.0
    concurrency: int = 4
    max_tokens: int = 512
    tokenizer: str | None = None  # local judges: a tokenizer.model other than the checkpoint's
    template: str = "lima"  # local judges: the chat template the judging request is written in
