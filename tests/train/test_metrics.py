"""Training metrics: on resume the file reads as one run, and a line cut off by a kill is set
aside, not lost."""

from __future__ import annotations

import json

from lima_jax.jsonl import read_records
from lima_jax.train.metrics import MetricsLogger


def test_resume_keeps_the_steps_taken_and_sets_a_torn_line_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "lo', encoding="utf-8")  # killed mid-write
    logger = MetricsLogger(tmp_path, enabled=True, total_steps=10, initial_step=2, progress=False)
    logger.log({"step": 3, "loss": 0.25})
    logger.close()
    assert [r["step"] for r in read_records(path)] == [1, 2, 3]
    assert read_records(path)[-1]["loss"] == 0.25  # the resumed run's step 3, not the old one
    assert (tmp_path / "metrics.jsonl.torn-1").read_text(encoding="utf-8") == '{"step": 4, "lo'
