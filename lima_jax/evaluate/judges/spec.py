"""The judge SPEC syntax and `make_judge`, the one place a SPEC becomes a judge.

    openai:MODEL@BASE_URL   any OpenAI-compatible chat-completions endpoint (`judges.openai`)
    local:PATH              a lima_jax checkpoint or Hugging Face directory, greedy (`judges.local`)
    length                  TEST / OFFLINE PLUMBING ONLY: prefers the longer response and scores
                            by length; it is deterministic and free, and it is not a real judge

A judge turns the judging messages of `instructions` into a reply text; the callers parse it, so
every judge is held to the same reply format and an unparseable reply is counted, not guessed."""

from __future__ import annotations

from lima_jax.evaluate.judges.base import Judge, JudgeError, JudgeOptions
from lima_jax.evaluate.judges.length import LengthJudge


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
        from lima_jax.evaluate.judges.openai import OpenAIJudge

        return OpenAIJudge(model=model, base_url=base_url, options=options)
    if kind == "local" and sep and rest:
        from lima_jax.evaluate.judges.local import LocalJudge

        return LocalJudge(rest, options=options, template=options.template)
    raise JudgeError(f"--judge {spec!r}: unknown judge; use openai:MODEL@BASE_URL, local:PATH, or "
                     "length (a deterministic test stand-in, not a real judge)")
