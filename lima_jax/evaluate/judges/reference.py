"""The judge of an ablation: any judge SPEC of `lima_jax.evaluate` (openai:, local:, length), or
`reference`, a deterministic judge for tasks with one right answer (the tiny pool of the test
configuration): it grades a response 1-6 by its character similarity to the reference answer of
its prompt. It is free and offline; it is not a judge of helpfulness for open-ended prompts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import pathlib

from lima_jax.evaluate.judges.base import Judge, JudgeError, JudgeOptions
from lima_jax.evaluate.judges.spec import make_judge
from lima_jax.jsonl import read_jsonl


class ReferenceJudge(Judge):
    """Score = 1 + round(5 * similarity), similarity = difflib's ratio of the whitespace-normalised
    response and reference (6: an exact answer; 1: nothing in common). `references` maps a prompt's
    text to its answer."""

    concurrency = 1

    def __init__(self, references: dict[str, str], source: str = ""):
        if not references:
            raise JudgeError(f"judge reference: no reference answers in {source or 'the prompts'}")
        self.references = {_normalise(p): a for p, a in references.items()}
        digest = hashlib.sha256(json.dumps(sorted(self.references.items())).encode()).hexdigest()[:12]
        self.judge_id = f"reference:{digest}"

    def chat(self, messages):
        raise JudgeError("the reference judge only answers scale requests")

    def pairwise_reply(self, prompt, first, second):
        raise JudgeError("the reference judge only answers scale requests")

    def scale_reply(self, prompt: str, response: str) -> str:
        reference = self.references.get(_normalise(prompt))
        if reference is None:
            raise JudgeError(f"judge reference: no reference answer for the prompt {prompt[:60]!r}")
        similarity = difflib.SequenceMatcher(None, _normalise(response), _normalise(reference)).ratio()
        return (f"Similarity {similarity:.3f} to the reference answer.\n"
                f"Score: {1 + round(5 * similarity)}")


def _normalise(text: str) -> str:
    return " ".join(text.split())


def references_from_prompts(path: str | pathlib.Path) -> dict[str, str]:
    """{prompt: answer} from a prompts file whose records carry the answer as the second turn of
    LIMA's `conversations` (or a `response` field)."""
    references = {}
    for where, record in read_jsonl(path):
        turns = record.get("conversations")
        if isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, str) for t in turns[:2]):
            references[turns[0]] = turns[1]
        elif isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
            references[record["prompt"]] = record["response"]
        else:
            raise JudgeError(f"judge reference: {where} has no reference answer (expected "
                             "'conversations': [prompt, answer] or 'prompt' and 'response')")
    return references


def make_ablation_judge(judge_config, prompts_path: str) -> Judge:
    """The judge `config.judge` names; `prompts_path` holds the references for `reference`."""
    if judge_config.spec == "reference":
        return ReferenceJudge(references_from_prompts(prompts_path), prompts_path)
    options = JudgeOptions(api_key_env=judge_config.api_key_env, timeout=judge_config.timeout,
                           retries=judge_config.retries, concurrency=judge_config.concurrency,
                           max_tokens=judge_config.max_tokens)
    return make_judge(judge_config.spec, options)
