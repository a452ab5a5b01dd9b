"""The data report: what a data set holds once tokenized under a template (the paper's Table 1).

Counts per source, turns, prompt and response token statistics (mean, median, p90, max),
total and loss-bearing tokens, trimmed / dropped examples, skipped bad records with their first
locations, and packing efficiency at max_len; optionally a histogram of lengths per source.
Prompt tokens are everything outside assistant turns (BOS, user and system text, their EOTs and
template text); response tokens are assistant text and its end-of-turn token. Both are counted
before trimming.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from lima_jax.data import packing
from lima_jax.data.errors import SkipLog
from lima_jax.data.examples import EncodedExamples
from lima_jax.data.pipeline import epoch_order
from lima_jax.data.tokenizer import Tokenizer


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0}
    return {
        "mean": round(float(np.mean(values)), 1),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "max": int(np.max(values)),
    }


def _group(examples: EncodedExamples, mask: np.ndarray) -> dict[str, Any]:
    prompt, response = examples.prompt_tokens[mask], examples.response_tokens[mask]
    return {
        "examples": int(mask.sum()),
        "turns": int(examples.turns[mask].sum()),
        "prompt_tokens": _stats(prompt),
        "response_tokens": _stats(response),
        "tokens": int(prompt.sum() + response.sum()),
        "loss_tokens": int(examples.loss_tokens[mask].sum()),
        "trimmed": int(examples.trimmed[mask].sum()),
        "dropped": int(examples.dropped[mask].sum()),
    }


def packing_efficiency(examples: EncodedExamples, max_len: int, seed: int = 0) -> dict[str, Any]:
    """Non-padding fraction of one epoch's rows: padded, best-fit and first-fit packed."""
    lengths = examples.lengths
    order = epoch_order(len(lengths), seed, 0)
    out: dict[str, Any] = {"padded": packing.efficiency(lengths, [[i] for i in order], max_len)}
    for algorithm in packing.ALGORITHMS:
        rows = packing.pack(lengths, order, max_len, algorithm)
        out[algorithm] = packing.efficiency(lengths, rows, max_len)
        out[f"{algorithm}_rows"] = len(rows)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def build_report(examples: EncodedExamples, skips: SkipLog, tokenizer: Tokenizer,
                 config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring)."""
    sources = np.array(examples.sources, dtype=object)
    names = sorted(set(examples.sources), key=lambda s: (-int((sources == s).sum()), s))
    counts = examples.counts()
    return {
        "data": config.path,
        "template": config.template,
        "loss_on": config.loss_on,
        "tokenizer": tokenizer.path or "trained",
        "vocab_size": tokenizer.vocab_size,
        "max_len": config.max_len,
        "sources": {name: _group(examples, sources == name) for name in names},
        "all": _group(examples, np.ones(len(sources), bool)),
        **counts,
        "skipped": skips.to_dict(),
        "packing_efficiency": packing_efficiency(examples, config.max_len, config.seed),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    head = (f"{'source':<16}{'examples':>9}{'turns':>7}  {'prompt mean/med/p90/max':>25}  "
            f"{'response mean/med/p90/max':>27}{'tokens':>10}{'trimmed':>8}{'dropped':>8}")
    lines = [f"data report: {report['data']} (template {report['template']}, loss on "
             f"{report['loss_on']}, max_len {report['max_len']}, tokenizer {report['tokenizer']})",
             "", head, "-" * len(head)]

    def row(name: str, g: dict) -> str:
        p, r = g["prompt_tokens"], g["response_tokens"]
        ps = f"{p['mean']:.0f}/{p['median']:.0f}/{p['p90']:.0f}/{p['max']}"
        rs = f"{r['mean']:.0f}/{r['median']:.0f}/{r['p90']:.0f}/{r['max']}"
        return (f"{name:<16}{g['examples']:>9}{g['turns']:>7}  {ps:>25}  {rs:>27}"
                f"{g['tokens']:>10,}{g['trimmed']:>8}{g['dropped']:>8}")

    lines += [row(name, g) for name, g in report["sources"].items()]
    lines += ["-" * len(head), row("all", report["all"]), ""]
    pe = report["packing_efficiency"]
    skipped = report["skipped"]
    lines += [
        f"tokens: {report['tokens']:,} ({report['tokens_after_trim']:,} after trimming; "
        f"{report['loss_tokens']:,} loss-bearing)",
        f"examples: {report['examples']} kept of {report['conversations']}; {report['trimmed']} "
        f"trimmed to {report['max_len']}; {report['dropped_no_trained_token']} dropped (no trained "
        f"token within max_len); {report['trailing_user_turns_removed']} with a trailing user turn "
        "removed",
        f"skipped bad records: {skipped['total']}"
        + (f" {skipped['by_kind']}" if skipped["total"] else ""),
        *[f"  {where}" for where in skipped["first"]],
        f"packing efficiency at {report['max_len']}: best_fit {pe['best_fit']:.1%} "
        f"({pe['best_fit_rows']} rows), first_fit {pe['first_fit']:.1%} ({pe['first_fit_rows']} "
        f"rows), padded {pe['padded']:.1%}",
    ]
    return "\n".join(lines)


def plot_lengths(examples: EncodedExamples, max_len: int, path: str) -> None:
    """Writes a histogram of conversation lengths (tokens, untrimmed) per source to ``path``."""
    import matplotlib  # noqa: PLC0415 (only for --plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    lengths = examples.prompt_tokens + examples.response_tokens
    sources = np.array(examples.sources, dtype=object)
    names = sorted(set(examples.sources))
    bins = np.geomspace(max(1, lengths.min()), max(lengths.max(), max_len) + 1, 40)
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.hist([lengths[sources == n] for n in names], bins=bins, stacked=True, label=names)
    ax.axvline(max_len, color="k", linestyle="--", label=f"max_len {max_len}")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per conversation (prompt + response)")
    ax.set_ylabel("conversations")
    ax.set_title(f"{len(lengths)} conversations, {int(lengths.sum()):,} tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
