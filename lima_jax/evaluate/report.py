"""The Figure-1 chart: one horizontal stacked bar per baseline, the share of prompts where the
system wins, ties and loses, as in LIMA's preference figure."""

from __future__ import annotations

import pathlib

from lima_jax.errors import InputError


def plot_win_rates(tables: list[dict], path: str | pathlib.Path, *, title: str | None = None) -> pathlib.Path:
    """Writes a PNG of win / tie / loss percentages of each table's A against its B."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    if not tables:
        raise InputError("no comparisons to plot")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(tables) + 1.4))
    labels = [f"{t['a']} vs {t['b']}" for t in tables]
    left = [0.0] * len(tables)
    for key, name, color in (("a_win_pct", "{a} wins", "#4c72b0"), ("tie_pct", "Tie", "#c7c7c7"),
                             ("b_win_pct", "{b} wins", "#dd8452")):
        widths = [t[key] for t in tables]
        label = name.format(a="A", b="B") if len({t["a"] for t in tables}) > 1 else name.format(
            a=tables[0]["a"], b="baseline")
        bars = ax.barh(labels, widths, left=left, color=color, label=label)
        for bar, w in zip(bars, widths):
            if w >= 6:
                ax.text(bar.get_x() + w / 2, bar.get_y() + bar.get_height() / 2, f"{w:.0f}%",
                        ha="center", va="center", fontsize=9)
        left = [l + w for l, w in zip(left, widths)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of prompts")
    ax.invert_yaxis()
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    if title:
        ax.set_title(title, pad=28)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
