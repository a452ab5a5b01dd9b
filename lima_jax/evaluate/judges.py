"""Judges and the judge SPEC syntax.

    openai:MODEL@BASE_URL   any OpenAI-compatible chat-completions endpoint (`openai_judge`)
    local:PATH              a lima_jax checkpoint or Hugging Face directory, greedy (`local_judge`)
    length                  TEST / OFFLINE PLUMBING ONLY: prefers the longer response and scores
                            by length; it is deterministic and free, and it is not a real judge

A judge turns the judging messages of `instructions` into a reply text; the callers parse it, so
every judge is held to the same reply format and an unparseable reply is counted, not guessed."""

from __future__ import annotations

import dataclasses

from lima_jax.evaluate import instructions


class JudgeError(RuntimeError):
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


def make_judge(spec: str, options: JudgeOptions | None = None) -> Judge:
    """The judge a SPEC string names (see the module docstring)."""
    options = options or JudgeOptions()
    kind, sep, rest = spec.partition(":")
    if spec == "length":
        return LengthJudge()
    if kind == "openai" and sep:
        model, at, base_url = rest.partition("@")
        if not model or not at or not base_url.startswith(("http://", "https://")):
            raise JudgeError(f"--judge {spec!r}: expected openai:MODEL@BASE_URL, e.g. "
                             "openai:gpt-4o@https://api.openai.com/v1")
        from lima_jax.evaluate.openai_judge import OpenAIJudge

        return OpenAIJudge(model=model, base_url=base_url, options=options)
    if kind == "local" and sep and rest:
        from lima_jax.evaluate.local_judge import LocalJudge

        return LocalJudge(rest, options=options, template=options.template)
    raise JudgeError(f"--judge {spec!r}: unknown judge; use openai:MODEL@BASE_URL, local:PATH, or "
                     "length (a deterministic test stand-in, not a real judge)")
