"""Evaluation after LIMA's protocol: pairwise preference (win / tie / loss, judged in both orders),
the 1-6 helpfulness scale, judges (OpenAI-compatible endpoint, local model, a deterministic test
judge), reports (tables, Figure-1 chart, annotator agreement) and ``python -m lima_jax.evaluate``."""

from lima_jax.evaluate.agreement import agreement
from lima_jax.evaluate.judges import Judge, JudgeError, make_judge
from lima_jax.evaluate.pairwise import combine_orders, run_pairwise, win_table
from lima_jax.evaluate.responses import ResponseError, read_responses
from lima_jax.evaluate.scale import mean_ci, run_scale

__all__ = [
    "Judge", "JudgeError", "ResponseError", "agreement", "combine_orders", "make_judge", "mean_ci",
    "read_responses", "run_pairwise", "run_scale", "win_table",
]
