"""Test-set contamination: training examples that overlap evaluation prompts, reported and removable.

Evaluation prompts come from the LIMA test set (``{"conversations": [prompt]}``), Vicuna
(``text``), Koala (``prompt``), WizardLM (``Instruction``), Self-Instruct (``instruction`` plus
its first instance's ``input``), or any file of ``qa`` / Alpaca records. A training example
overlaps a prompt when, after the normalisation dedup uses, they share a word n-gram (n = 8 by
default, in the spirit of GPT-3's 13-gram decontamination, shorter because instructions are
short), or, for an evaluation prompt of fewer than n words, when the whole prompt appears in the
example's text.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

from lima_jax.curate.dedup import normalize
from lima_jax.curate.records import Record
from lima_jax.data.errors import DataError
from lima_jax.data.readers import iter_records, split_paths

_GENERIC_STEMS = ("test", "train", "dev", "eval", "validation", "prompts")


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
    text: str
    eval_set: str  # the file's stem: lima_test, vicuna_test_set, ...
    id: str
    location: str


def _prompt_of(record: Any) -> tuple[str, str] | None:
    """(prompt text, id) of one evaluation record, or None when no known field holds a prompt."""
    if not isinstance(record, dict):
        return None
    rid = str(record.get("id", record.get("question_id", record.get("idx", ""))))
    conversations = record.get("conversations")
    if isinstance(conversations, list) and conversations:
        first = conversations[0]
        text = first.get("value") if isinstance(first, dict) else first
        return (text, rid) if isinstance(text, str) else None
    for key in ("prompt", "text", "Instruction"):
        if isinstance(record.get(key), str):
            return record[key], rid
    if isinstance(record.get("instruction"), str):
        extra = record.get("input") or ""
        instances = record.get("instances")
        if not extra and isinstance(instances, list) and instances and isinstance(instances[0], dict):
            extra = instances[0].get("input") or ""
        text = record["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
        return text, rid
    return None


def read_eval_prompts(paths: str | Sequence[str]) -> list[EvalPrompt]:
    """Reads evaluation prompt files (see the module docstring); errors name file:line."""
    out = []
    for path in split_paths(paths):
        stem = pathlib.Path(path).stem
        if stem in _GENERIC_STEMS:  # lima/test.jsonl -> lima_test
            stem = f"{pathlib.Path(path).resolve().parent.name}_{stem}"
        for line, record, error in iter_records(path):
            if error is not None:
                raise error
            found = _prompt_of(record)
            if found is None:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}:{line}", f"no prompt field in the record (it has {keys})",
                                "expected conversations, prompt, text, Instruction or instruction",
                                "unknown_format")
            text, rid = found
            out.append(EvalPrompt(text, stem, rid or f"{stem}:{line}", f"{path}:{line}"))
    return out


@dataclasses.dataclass(frozen=True)
class Hit:
    """One training record overlapping one evaluation prompt."""

    record: int  # index into the records checked
    prompt: int  # index into the evaluation prompts
    overlap: str  # the shared n-gram, or the whole (short) evaluation prompt


class ContaminationIndex:
    """The evaluation prompts' n-grams, for checking many training texts against them."""

    def __init__(self, prompts: Sequence[EvalPrompt], n: int = 8):
        self.prompts, self.n = list(prompts), n
        self.ngrams: dict[str, int] = {}  # n-gram -> first prompt holding it
        self.short: list[tuple[str, int]] = []  # (padded normalised text, prompt) for < n words
        for k, p in enumerate(self.prompts):
            words = normalize(p.text).split()
            if len(words) < n:
                if words:
                    self.short.append((f" {' '.join(words)} ", k))
                continue
            for i in range(len(words) - n + 1):
                self.ngrams.setdefault(" ".join(words[i:i + n]), k)

    def overlaps(self, text: str) -> list[tuple[int, str]]:
        """(prompt index, shared n-gram or short prompt) for each prompt ``text`` overlaps."""
        words = normalize(text).split()
        found: dict[int, str] = {}
        for i in range(len(words) - self.n + 1):
            gram = " ".join(words[i:i + self.n])
            k = self.ngrams.get(gram)
            if k is not None:
                found.setdefault(k, gram)
        padded = f" {' '.join(words)} "
        for short, k in self.short:
            if short in padded:
                found.setdefault(k, short.strip())
        return sorted(found.items())


def find_contamination(records: Sequence[Record], prompts: Sequence[EvalPrompt], n: int = 8,
                       fields: str = "prompt") -> list[Hit]:
    """Every (training record, evaluation prompt) overlap; ``fields`` is 'prompt' or 'text'
    (prompt and response: catches a test prompt quoted inside an answer, at more false alarms)."""
    index = ContaminationIndex(prompts, n)
    hits = []
    for i, record in enumerate(records):
        text = record.prompt if fields == "prompt" else record.text
        hits += [Hit(i, k, overlap) for k, overlap in index.overlaps(text)]
    return hits


def contamination_report(records: Sequence[Record], prompts: Sequence[EvalPrompt],
                         hits: Sequence[Hit], removed: bool) -> dict:
    """Counts per evaluation set and every hit (training id, evaluation id, shared text)."""
    per_set: dict[str, dict[str, set]] = {}
    for p in prompts:
        per_set.setdefault(p.eval_set, {"prompts": 0, "hit_prompts": set(), "records": set()})
        per_set[p.eval_set]["prompts"] += 1
    for h in hits:
        entry = per_set[prompts[h.prompt].eval_set]
        entry["hit_prompts"].add(h.prompt)
        entry["records"].add(h.record)
    return {
        "removed": removed,
        "records_overlapping": len({h.record for h in hits}),
        "per_eval_set": {
            name: {"prompts": e["prompts"], "prompts_overlapped": len(e["hit_prompts"]),
                   "training_records": len(e["records"])}
            for name, e in sorted(per_set.items())
        },
        "hits": [{"record": records[h.record].id, "source": records[h.record].source,
                  "eval_set": prompts[h.prompt].eval_set, "eval_id": prompts[h.prompt].id,
                  "overlap": h.overlap} for h in hits],
    }


def remove_contaminated(records: Sequence[Record], hits: Sequence[Hit]) -> tuple[list[Record], list[Record]]:
    """(kept, removed): every record with at least one hit is removed."""
    bad = {h.record for h in hits}
    return ([r for i, r in enumerate(records) if i not in bad],
            [r for i, r in enumerate(records) if i in bad])
