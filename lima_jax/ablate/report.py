"""An ablation's results: the table (markdown), the JSON, and the chart of mean helpfulness with
95% confidence intervals, against the number of training examples on a log2 axis (LIMA's
Figure 6, `plot=size`) or one bar per condition (Figure 5, `plot=condition`)."""

from __future__ import annotations

import pathlib

# Judges that are stand-ins, named in the report so nobody reads their scores as quality.
STAND_IN_JUDGES = {"length": "prefers longer answers; a plumbing test, not a judge of quality",
                   "reference": "similarity to a known right answer; only for the tiny generated task"}


def _label(result: dict) -> str:
    return result.get("label") or result["cell"]


def plot_results(results: list[dict], path: pathlib.Path, *, kind: str, title: str,
                 judge: str) -> pathlib.Path | None:
    """Writes the PNG; returns None when no cell has a score to plot."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    scored = [r for r in results if r.get("mean") is not None]
    if not scored:
        return None
    if kind == "size":
        scored = sorted(scored, key=lambda r: r["size"])
    means = [r["mean"] for r in scored]
    errors = [[r["mean"] - r["ci_low"] for r in scored], [r["ci_high"] - r["mean"] for r in scored]]
    fig, ax = plt.subplots(figsize=(6.4 if kind == "size" else max(4.8, 1.3 * len(scored) + 2), 4.2))
    if kind == "size":
        sizes = [r["size"] for r in scored]
        ax.errorbar(sizes, means, yerr=errors, marker="o", capsize=4, color="#4c72b0")
        if len(set(sizes)) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{s:,}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training examples")
    else:
        positions = range(len(scored))
        # Bars rise from the scale's floor (1), so their heights compare like the scores do.
        ax.bar(positions, [m - 1 for m in means], bottom=1, yerr=errors, capsize=4, color="#4c72b0",
               alpha=0.85)
        ax.set_xticks(list(positions))
        ax.set_xticklabels([f"{_label(r)}\n({r['size']:,})" for r in scored], fontsize=9)
        ax.set_xlabel("training data (examples)")
    low = min(r["ci_low"] for r in scored)
    high = max(r["ci_high"] for r in scored)
    margin = max(0.25, 0.1 * (high - low))
    ax.set_ylim(max(1.0, low - margin) if kind == "size" else 1.0, min(6.0, high + margin))
    ax.set_ylabel("helpfulness (1-6), mean and 95% CI")
    ax.set_title(f"{title}\njudge: {judge}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def results_markdown(name: str, results: list[dict], *, judge: str, decode: dict, recipe: dict) -> str:
    stand_in = f" (stand-in: {STAND_IN_JUDGES[judge]})" if judge in STAND_IN_JUDGES else ""
    lines = [
        f"# Ablation: {name}", "",
        (f"Judge: `{judge}`{stand_in}. Each prompt's score is the mean of its {decode['num_samples']} "
         "samples; the interval is a 95% Student-t interval over prompts."),
        (f"Recipe: {recipe['model']}, {recipe['epochs']} epochs, batch {recipe['batch']}, learning rate "
         f"{recipe['learning_rate']:g} to {recipe['end_learning_rate']:g}; decoding {decode['summary']}."),
        "",
        "| cell | data | examples | mean score (1-6) | 95% CI | prompts | scored | skipped | train steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        data = f"{r['select']} of {', '.join(pathlib.Path(p).name for p in r['path'].split(','))}"
        if r.get("sources"):
            data += f" [{r['sources']}]"
        if r["mean"] is None:
            score, ci = "-", "-"
        else:
            score, ci = f"{r['mean']:.2f}", f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        lines.append(f"| {_label(r)} | {data} | {r['size']:,} | {score} | {ci} | {r['prompts']} | "
                     f"{r['scored']} | {r['skipped']} | {r['train'].get('total_steps', '-')} |")
    skipped = [r for r in results if r["skipped"]]
    if skipped:
        lines += ["", "Skipped responses (not scored): " + "; ".join(
            f"{_label(r)}: " + ", ".join(f"{n} {why}" for why, n in sorted(r["skips"].items()))
            for r in skipped)]
    return "\n".join(lines) + "\n"

