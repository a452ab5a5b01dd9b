"""The local-model judge, plumbing only: stories260K cannot judge, so its replies must come back
as text, be counted as unparseable and kept; a request longer than its context is a counted error."""

from __future__ import annotations

from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.judges import JudgeOptions, make_judge
from lima_jax.evaluate.pairwise import run_pairwise, win_table
from lima_jax.evaluate.responses import Response
from lima_jax.evaluate.scale import run_scale


def test_local_judge_plumbing_on_a_tiny_model(shared_data, tmp_path):
    ckpt = shared_data / "checkpoints" / "stories260K-hf"
    judge = make_judge(f"local:{ckpt}", JudgeOptions(max_tokens=6))
    assert judge.concurrency == 1 and judge.judge_id.startswith("local:")
    pairs = [(Response("1", 0, "Tell a story.", "Once upon a time."), Response("1", 0, "Tell a story.", "Tom ran.")),
             (Response("2", 0, "Tell a story.", "Lily " * 300), Response("2", 0, "Tell a story.", "Tom ran."))]
    cache = ReplyCache(tmp_path / "cache.jsonl")
    records = run_pairwise(pairs, judge, cache)
    assert isinstance(records[0]["reply_ab"], str) and records[0]["reply_ab"]
    assert records[0]["skip"] == "unparseable"
    assert records[1]["skip"] == "judge_error" and "more than the model's context of 512" in records[1]["error"]
    assert win_table(records, a_name="a", b_name="b")["skips"] == {"unparseable": 1, "judge_error": 1}
    assert len(cache) == 2  # both orders of pair 1 are cached; the failed pair is not

    scored = run_scale([Response("1", 0, "Tell a story.", "Once upon a time.")], judge, cache)
    assert scored[0]["skip"] == "unparseable" and isinstance(scored[0]["reply"], str)
