"""Agreement between two annotators' pairwise verdicts, as LIMA reports between crowd workers,
authors and GPT-4: plain agreement, LIMA's tie-discounted agreement (1 when equal, 0.5 when exactly
one says tie, 0 when they pick opposite winners) and Cohen's kappa over the three labels."""

from __future__ import annotations

from lima_jax.errors import InputError

LABELS = ("a", "tie", "b")


def agreement(x: dict[str, str], y: dict[str, str]) -> dict:
    """Agreement over the ids both {id: verdict} maps judged ('a' | 'tie' | 'b'; others ignored)."""
    ids = sorted(i for i in x if i in y and x[i] in LABELS and y[i] in LABELS)
    if not ids:
        raise InputError("the two annotators share no judged ids; nothing to compare")
    n = len(ids)
    equal = sum(x[i] == y[i] for i in ids)
    half = sum(x[i] != y[i] and "tie" in (x[i], y[i]) for i in ids)
    p_o = equal / n
    p_e = sum((sum(x[i] == c for i in ids) / n) * (sum(y[i] == c for i in ids) / n) for c in LABELS)
    kappa = 1.0 if p_e == 1.0 else (p_o - p_e) / (1 - p_e)
    return {"n": n, "agreement": p_o, "tie_discounted_agreement": (equal + 0.5 * half) / n,
            "cohen_kappa": kappa}
