"""Held-out exact match: greedy answers to held-out requests against their references.

The training run's generation score (`train.eval_exact_match`): each held-out
conversation's first user turn is laid out with the training template, the model
answers greedily through `lima_jax.decode.answer` (stopping at the template's end of turn
or EOS), and the answer counts when its text equals the reference answer
(whitespace-trimmed).
"""

from __future__ import annotations

from lima_jax.data import read_conversations
from lima_jax.data.readers import ASSISTANT, USER
from lima_jax.data.templates import encode_prompt
from lima_jax.decode import Answerer, SamplingConfig


def exact_match(model, tokenizer, path: str, *, template: str = "lima",
                max_new_tokens: int = 48, examples: int = 0) -> dict:
    """{'exact_match': fraction, 'answered': n, 'sample': (prompt, answer, reference)}."""
    pairs = []
    for conversation in read_conversations(path).conversations:
        turns = conversation.turns
        user = next((i for i, t in enumerate(turns) if t.role == USER), None)
        if user is None or user + 1 >= len(turns) or turns[user + 1].role != ASSISTANT:
            continue
        pairs.append((turns[: user + 1], turns[user + 1].text))
    if examples:
        pairs = pairs[:examples]
    if not pairs:
        return {"exact_match": None, "answered": 0}
    # The turns before the answer (any system turn, then the user's), as training laid them out.
    prompts = [encode_prompt(turns, tokenizer, template) for turns, _ in pairs]
    answerer = Answerer(model, tokenizer, template)
    max_new = min(max_new_tokens, answerer.room(prompts))
    answers = [a.text.strip() for a in answerer.answer(prompts, sampling=SamplingConfig.greedy_config(),
                                                       max_new_tokens=max(max_new, 1))]
    hits = [a == reference.strip() for a, (_, reference) in zip(answers, pairs)]
    first_prompt = pairs[0][0][-1].text
    return {"exact_match": sum(hits) / len(hits), "answered": len(hits),
            "sample": [first_prompt, answers[0], pairs[0][1]]}
