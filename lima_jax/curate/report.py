"""The curation report: where a data set went, rule by rule, and what is left, source by source.

``build_report`` gathers the stages of a curation run (filters, duplicates, contamination,
selection) into one JSON-ready dict; ``to_markdown`` renders it as tables. Lengths are in
characters and words (tokens depend on a tokenizer: ``python -m lima_jax.data report`` counts
those for the curated file).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np

from lima_jax.curate.records import Record

MAX_CLUSTERS_LISTED = 20
MAX_HITS_LISTED = 20


def _stats(values: Sequence[int]) -> dict[str, float]:
    if not len(values):
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0}
    v = np.asarray(values)
    return {"mean": round(float(v.mean()), 1), "median": float(np.median(v)),
            "p90": round(float(np.percentile(v, 90)), 1), "max": int(v.max())}


def source_stats(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """Per source (and 'all'): examples, multi-turn ones, prompt and response characters and
    response words (mean, median, p90, max)."""
    groups: dict[str, list[Record]] = collections.defaultdict(list)
    for r in records:
        groups[r.source].append(r)
    out = {}
    for name, group in [*sorted(groups.items()), ("all", list(records))]:
        out[name] = {
            "examples": len(group),
            "multi_turn": sum(1 for r in group if r.history),
            "prompt_chars": _stats([len(r.prompt) for r in group]),
            "response_chars": _stats([len(r.response) for r in group]),
            "response_words": _stats([len(r.response.split()) for r in group]),
        }
    return out


def build_report(inputs: Sequence[Record], final: Sequence[Record], *, files: Sequence[str] = (),
                 rules: Sequence[dict] = (), dedup: dict | None = None,
                 contamination: dict | None = None, selection: dict | None = None,
                 stages: Sequence[tuple[str, int]] = ()) -> dict[str, Any]:
    """One dict for the whole run; every argument but ``inputs`` and ``final`` is optional.

    rules: RuleStats.to_dict() of each filter rule; dedup: the dedup summary (see pipeline.py);
    stages: (name, records left) after each stage, in order.
    """
    return {
        "files": list(files),
        "input": {"examples": len(inputs), "per_source": dict(collections.Counter(r.source for r in inputs))},
        "stages": [{"stage": name, "records": n} for name, n in stages],
        "rules": list(rules),
        "duplicates": dedup,
        "contamination": contamination,
        "selection": selection,
        "output": {"examples": len(final), "per_source": source_stats(final)},
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in row) + " |"
              for row in rows]
    return lines + [""]


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: stages, rules, sources, duplicate clusters, contamination."""
    out = ["# Curation report", ""]
    if report["files"]:
        out += ["Input: " + ", ".join(f"`{f}`" for f in report["files"]), ""]
    out += [f"{report['input']['examples']:,} examples in, {report['output']['examples']:,} out.", ""]
    if report["stages"]:
        out += ["## Stages", ""] + _table(["stage", "records left"],
                                          [[s["stage"], f"{s['records']:,}"] for s in report["stages"]])
    if report["rules"]:
        out += ["## Filters", "", "Each rule sees the records its source matches that earlier rules kept.", ""]
        out += _table(["rule", "what", "in", "out", "dropped", "rewritten", "first dropped"],
                      [[r["rule"], r["description"], r["in"], r["out"], r["dropped"], r["changed"],
                        ", ".join(r["first_dropped"][:2])] for r in report["rules"]])
    per_source = report["output"]["per_source"]
    out += ["## Output per source", ""]
    out += _table(
        ["source", "examples", "multi-turn", "prompt chars mean / median", "response chars mean / median / p90 / max",
         "response words mean"],
        [[name, s["examples"], s["multi_turn"],
          f"{s['prompt_chars']['mean']:,.0f} / {s['prompt_chars']['median']:,.0f}",
          (f"{s['response_chars']['mean']:,.0f} / {s['response_chars']['median']:,.0f} / "
           f"{s['response_chars']['p90']:,.0f} / {s['response_chars']['max']:,}"),
          f"{s['response_words']['mean']:,.0f}"] for name, s in per_source.items()])
    d = report.get("duplicates")
    if d:
        summary = (f"Key `{d['key']}`, Jaccard threshold {d['threshold']} on word {d['shingle_words']}-grams "
                   f"(MinHash {d['num_perm']} permutations + LSH, confirmed exactly): {d['exact_pairs']} exact "
                   f"and {d['near_pairs']} near-duplicate pairs in {d['clusters']} clusters "
                   f"({d['exact_clusters']} wholly exact), {d['removed']} records removed, keeping the "
                   f"{d['keep']} of each.")
        out += ["## Duplicates", "", summary, ""]
        if d["listed"]:
            out += _table(["size", "exact", "min similarity", "kept", "removed", "sources", "prompt"],
                          [[c["size"], c["exact"], c["min_similarity"], c["kept"], ", ".join(c["removed"][:3]),
                            ", ".join(c["sources"]), c["prompt"][:60]] for c in d["listed"]])
    c = report.get("contamination")
    if c:
        summary = (f"{c['records_overlapping']} training records overlap evaluation prompts "
                   f"({'removed' if c['removed'] else 'kept; reported only'}).")
        out += ["## Contamination", "", summary, ""]
        out += _table(["evaluation set", "prompts", "prompts overlapped", "training records"],
                      [[name, e["prompts"], e["prompts_overlapped"], e["training_records"]]
                       for name, e in c["per_eval_set"].items()])
        if c["hits"]:
            out += _table(["training record", "source", "evaluation set", "evaluation id", "shared text"],
                          [[h["record"], h["source"], h["eval_set"], h["eval_id"], h["overlap"]]
                           for h in c["hits"][:MAX_HITS_LISTED]])
    s = report.get("selection")
    if s:
        out += ["## Selection", "", f"Method `{s['method']}`: {s['selected']:,} of {s['pool']:,} records.", ""]
        if s.get("per_source"):
            out += _table(["source", "selected"], sorted(s["per_source"].items()))
    return "\n".join(out).rstrip() + "\n"
