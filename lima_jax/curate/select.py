"""Choosing which examples to train on: stratified by source with per-source quotas (LIMA's
Table 1 as a preset), the N longest responses ("Long Is More", Zhao et al. 2024), a random N,
and nested random subsets for quantity ablations (1k within 2k within 4k ...).

Records are plain dicts in any of the project's formats: ``prompt``/``response`` (the curation
record), LIMA's ``conversations`` (a list of strings), FastChat's ``conversations`` (a list of
``{"from", "value"}``), OpenAI ``messages`` or Alpaca ``output``; the source is ``source`` or,
for Dolly, ``category``. Every function is deterministic in its arguments (a seed where there is
randomness) and returns the chosen records themselves, not copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from lima_jax.errors import InputError

# LIMA's Table 1 (the 1,000 training examples) by this repo's source names, which are those of
# lima/train.jsonl. The paper splits Stack Exchange into STEM 200 and Other 200; the released
# file names both `stackexchange`, so they form one quota of 400. `multi_turn` (the 30 dialogue
# chains of section 7) is not part of Table 1's 1,000.
TABLE1_QUOTAS: dict[str, int] = {
    "stackexchange": 400,  # STEM 200 + Other 200
    "wikihow": 200,
    "writingprompts": 150,  # Pushshift r/WritingPrompts
    "nlp": 50,  # Super-Natural Instructions
    "authors": 200,  # manually authored (paper authors, group A)
}

_ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model"}


def response_text(record: dict) -> str:
    """The assistant side of a record: its response, or its assistant turns joined by a blank
    line (a multi-turn chain counts all of its answers)."""
    if not isinstance(record, dict):
        raise TypeError(f"a record must be a dict, got {type(record).__name__}")
    if isinstance(record.get("response"), str):
        return record["response"]
    turns = record.get("conversations")
    if isinstance(turns, list) and turns:
        if all(isinstance(t, str) for t in turns):  # LIMA: user, assistant, user, ...
            return "\n\n".join(turns[1::2])
        if all(isinstance(t, dict) for t in turns):  # FastChat / ShareGPT
            return "\n\n".join(str(t.get("value", "")) for t in turns
                               if str(t.get("from", "")).lower() in _ASSISTANT_ROLES)
    messages = record.get("messages")
    if isinstance(messages, list):
        return "\n\n".join(str(m.get("content", "")) for m in messages
                           if isinstance(m, dict) and m.get("role") == "assistant")
    if isinstance(record.get("output"), str):  # Alpaca, Dolly
        return record["output"]
    raise InputError(f"record has no response (fields: {sorted(record)}); expected 'response', "
                     "'conversations', 'messages' or 'output'")


def record_source(record: dict) -> str:
    """The record's source (``source``, or Dolly's ``category``); '' when it names none."""
    value = record.get("source") or record.get("category") or ""
    return str(value)


def _permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def _check_n(n: int, available: int, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise InputError(f"{what}: the size must be an integer >= 0, got {n!r}")
    if n > available:
        raise InputError(f"{what}: asked for {n} examples but only {available} are available")


def stratified(records: Sequence[dict], quotas: dict[str, int], seed: int = 0) -> list[dict]:
    """Exactly `quotas[s]` records of each source s, drawn at random (by `seed`) within the
    source; sources without a quota are left out. The result keeps the input order.

    Raises ValueError naming the source when a source has fewer records than its quota.
    """
    by_source: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_source.setdefault(record_source(record), []).append(i)
    short = []
    for source, quota in quotas.items():
        if not isinstance(quota, (int, np.integer)) or isinstance(quota, bool) or quota < 0:
            raise InputError(f"quota for source {source!r} must be an integer >= 0, got {quota!r}")
        have = len(by_source.get(source, []))
        if have < quota:
            short.append(f"{source!r} has {have} records, its quota is {quota}")
    if short:
        known = ", ".join(f"{s or '(none)'}={len(ix)}" for s, ix in sorted(by_source.items()))
        raise InputError(f"stratified: {'; '.join(short)} (sources present: {known})")
    chosen = []
    for k, (source, quota) in enumerate(quotas.items()):
        indices = by_source.get(source, [])
        # Each source gets its own stream (seed, k): one quota's change leaves the others alone.
        order = np.random.default_rng([seed, k]).permutation(len(indices))
        chosen.extend(indices[j] for j in order[:quota])
    return [records[i] for i in sorted(chosen)]


def longest_n(records: Sequence[dict], n: int,
              length: Callable[[str], int] = len) -> list[dict]:
    """The `n` records with the longest responses (by `length`, characters by default), longest
    first; equal lengths keep the input order, so the choice is deterministic."""
    _check_n(n, len(records), "longest_n")
    lengths = [length(response_text(r)) for r in records]
    order = sorted(range(len(records)), key=lambda i: (-lengths[i], i))
    return [records[i] for i in order[:n]]


def random_n(records: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """`n` records drawn without replacement: the first n of one permutation (by `seed`), so
    random_n(r, m, s) is a prefix of random_n(r, n, s) for m <= n."""
    _check_n(n, len(records), "random_n")
    return [records[i] for i in _permutation(len(records), seed)[:n]]


def nested_subsets(records: Sequence[dict], sizes: Iterable[int], seed: int = 0) -> dict[int, list]:
    """{size: records} where each subset is a prefix of one permutation, so the 1k subset lies
    inside the 2k subset, which lies inside the 4k one (the quantity ablation's data)."""
    sizes = list(sizes)
    if not sizes:
        raise InputError("nested_subsets: no sizes given")
    for size in sizes:
        _check_n(size, len(records), "nested_subsets")
    order = _permutation(len(records), seed)
    return {int(size): [records[i] for i in order[:size]] for size in sorted(sizes)}
