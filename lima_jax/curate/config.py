"""The curation config: LIMA's filter settings, near-duplicate and contamination thresholds.

Defaults are the paper's (LIMA, section 2: Alignment Data). ``python -m lima_jax.curate`` starts
from ``get_default_curate_config()``, or from ``get_config()`` of a ``--config file.py``, and takes
``--config.<section>.<key>=value`` overrides, both through `lima_jax.cli.load_config` (an unknown
key or a value of the wrong type stops the run, naming it); ``validate_curate_config`` names any
value that cannot work.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from lima_jax.cli import load_config
from lima_jax.data.errors import DataError

DEDUP_KEYS = ("text", "prompt", "response", "either")
KEEP_POLICIES = ("first", "longest", "score")


def get_default_curate_config() -> ml_collections.ConfigDict:
    """LIMA's curation settings; every key can be overridden with ``--config.x.y=value``."""
    c = ml_collections.ConfigDict()

    c.stackexchange = ml_collections.ConfigDict()
    c.stackexchange.sources = "stackexchange"  # comma-separated source prefixes the rules apply to
    c.stackexchange.min_score = 10
    # A raw dump must carry each answer's score; False lets records without one pass
    # (re-filtering an already curated set, like LIMA's own train.jsonl).
    c.stackexchange.require_score = True
    c.stackexchange.min_chars = 1200
    c.stackexchange.max_chars = 4096
    # "Not written in the first person": more than this many I/me/my/mine/myself per 100 words
    # of prose (code excluded). A rate, not "any": the kept LIMA answers open with the odd
    # "I'd suggest" (48 of its 400 Stack Exchange answers hold an "I").
    c.stackexchange.max_first_person_per_100_words = 1.0

    c.wikihow = ml_collections.ConfigDict()
    c.wikihow.sources = "wikihow"
    # Sections dropped from an article, by heading (case-insensitive).
    c.wikihow.drop_sections = "Related wikiHows,Sources and Citations,References,Video,Things You'll Need"

    c.generic = ml_collections.ConfigDict()
    c.generic.min_prompt_chars = 1
    c.generic.max_prompt_chars = 0  # 0: no upper bound
    c.generic.min_response_chars = 1
    c.generic.max_response_chars = 0
    c.generic.boilerplate = True  # drop "As an AI language model...", "[deleted]", "N/A", ...

    c.dedup = ml_collections.ConfigDict()
    c.dedup.enabled = True
    # Estimated Jaccard similarity of word-shingle sets at which two examples are near-duplicates.
    c.dedup.threshold = 0.7
    c.dedup.num_perm = 128  # MinHash permutations (LSH bands x rows are chosen by datasketch)
    c.dedup.shingle_words = 3
    # How LSH bands are tuned: weight of a missed pair against a false candidate (which is then
    # rejected by the exact check, so it only costs time).
    c.dedup.false_negative_weight = 0.9
    c.dedup.key = "text"  # text (prompt + response) | prompt | response | either
    c.dedup.keep = "first"  # which member of a cluster stays: first | longest | score
    c.dedup.seed = 1

    c.contamination = ml_collections.ConfigDict()
    # Comma-separated evaluation prompt files (LIMA test jsonl, Vicuna, Koala, WizardLM,
    # Self-Instruct); '' = none.
    c.contamination.eval_sets = ""
    c.contamination.ngram = 8  # shared word n-grams of this length count as overlap
    c.contamination.fields = "prompt"  # prompt | text (prompt + response)
    c.contamination.remove = True  # False: report the overlap, keep the examples
    return c


def load_curate_config(path: str = "", overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The default config, or ``get_config()`` of the Python file `path`, with ``--config.a.b=value``
    `overrides`, validated. A missing file, an unknown key or a bad value raises a LimaError."""
    config = load_config(path or get_default_curate_config(), overrides)
    validate_curate_config(config)
    return config


def validate_curate_config(c: ml_collections.ConfigDict) -> None:
    """Raises DataError naming the key for a value that cannot work."""
    def check(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise DataError(f"config.{key}", what, "", "config")

    se = c.stackexchange
    check(0 <= se.min_chars, "stackexchange.min_chars", "must be >= 0")
    check(se.max_chars == 0 or se.max_chars >= se.min_chars, "stackexchange.max_chars",
          f"must be 0 or >= min_chars ({se.min_chars})")
    check(se.max_first_person_per_100_words >= 0, "stackexchange.max_first_person_per_100_words",
          "must be >= 0")
    g = c.generic
    for kind in ("prompt", "response"):
        low, high = g[f"min_{kind}_chars"], g[f"max_{kind}_chars"]
        check(low >= 0, f"generic.min_{kind}_chars", "must be >= 0")
        check(high == 0 or high >= low, f"generic.max_{kind}_chars", f"must be 0 or >= {low}")
    d = c.dedup
    check(0.0 < d.threshold <= 1.0, "dedup.threshold", f"must be in (0, 1], got {d.threshold}")
    check(d.num_perm >= 16, "dedup.num_perm", f"must be >= 16, got {d.num_perm}")
    check(d.shingle_words >= 1, "dedup.shingle_words", "must be >= 1")
    check(0.0 < d.false_negative_weight < 1.0, "dedup.false_negative_weight", "must be in (0, 1)")
    check(d.key in DEDUP_KEYS, "dedup.key", f"{d.key!r} is not one of {DEDUP_KEYS}")
    check(d.keep in KEEP_POLICIES, "dedup.keep", f"{d.keep!r} is not one of {KEEP_POLICIES}")
    check(c.contamination.ngram >= 1, "contamination.ngram", "must be >= 1")
    check(c.contamination.fields in ("prompt", "text"), "contamination.fields", "prompt or text")
