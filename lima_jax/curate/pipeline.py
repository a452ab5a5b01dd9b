"""A curation run: filters, then duplicates, then contamination, with the report of every stage.

Filters run first because they rewrite answers (markup removal changes what duplicates look
like) and drop most records cheaply; duplicates are found among the survivors; contamination
is checked last, on what would be trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections

from lima_jax.curate import contamination as contamination_lib
from lima_jax.curate import dedup as dedup_lib
from lima_jax.curate import filters, report
from lima_jax.curate.config import validate_curate_config
from lima_jax.curate.records import Record


@dataclasses.dataclass
class CurateResult:
    records: list[Record]
    report: dict
    removed: dict[str, list[Record]]  # stage -> records it removed (filters: per rule)


def dedup_summary(result: dedup_lib.DedupResult, records: Sequence[Record],
                  config: ml_collections.ConfigDict) -> dict:
    """The duplicates section of the report: settings, counts, the largest clusters."""
    d = config.dedup
    largest = sorted(result.clusters, key=lambda c: (-len(c.members), c.members[0]))
    return {
        "key": d.key, "threshold": d.threshold, "num_perm": d.num_perm,
        "shingle_words": d.shingle_words, "keep": d.keep,
        "clusters": len(result.clusters),
        "exact_clusters": sum(c.exact for c in result.clusters),
        "exact_pairs": sum(p.exact for p in result.pairs),
        "near_pairs": sum(not p.exact for p in result.pairs),
        "removed": len(result.removed),
        "listed": [c.to_dict(records) for c in largest[:report.MAX_CLUSTERS_LISTED]],
    }


def curate(records: Sequence[Record], config: ml_collections.ConfigDict,
           eval_prompts: Sequence[contamination_lib.EvalPrompt] = (),
           files: Sequence[str] = ()) -> CurateResult:
    """Runs filters, dedup (if ``config.dedup.enabled``) and contamination (if prompts are given)."""
    validate_curate_config(config)
    stages = [("read", len(records))]
    filtered = filters.apply_filters(records, config)
    removed: dict[str, list[Record]] = {}
    for record, rule in filtered.dropped:
        removed.setdefault(f"filter:{rule}", []).append(record)
    current = filtered.kept
    stages.append(("filters", len(current)))
    dedup_section = None
    if config.dedup.enabled:
        result = dedup_lib.dedup_records(current, config)
        dedup_section = dedup_summary(result, current, config)
        removed["duplicates"] = result.removed
        current = result.kept
        stages.append(("duplicates", len(current)))
    contamination_section = None
    if eval_prompts:
        c = config.contamination
        hits = contamination_lib.find_contamination(current, eval_prompts, c.ngram, c.fields)
        contamination_section = contamination_lib.contamination_report(current, eval_prompts, hits, c.remove)
        if c.remove:
            current, removed["contamination"] = contamination_lib.remove_contaminated(current, hits)
            stages.append(("contamination", len(current)))
    built = report.build_report(
        records, current, files=files, rules=[s.to_dict() for s in filtered.stats],
        dedup=dedup_section, contamination=contamination_section, stages=stages)
    return CurateResult(list(current), built, removed)
