"""Asks a judge many questions: cached replies first, the rest concurrently (up to the judge's
concurrency), each reply cached the moment it arrives. A request that fails for good (a JudgeError:
for an endpoint judge, every transport failure after its retries) is reported as an error for that
item and the study goes on; a rerun asks only what is missing. Replies and error texts pass
through the judge's `redact` before they are cached or returned, so no API key reaches the disk
(README, "Evaluation")."""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable

from lima_jax.evaluate.cache import ReplyCache, request_key
from lima_jax.evaluate.judges import Judge, JudgeError

# A request: (key of the messages, a function that asks the judge and returns the reply).
Request = tuple[list[dict], Callable[[], str]]


def ask_all(judge: Judge, cache: ReplyCache, requests: list[Request], *,
            quiet: bool = True) -> tuple[list[str | None], list[str | None]]:
    """(replies, errors), aligned with `requests`: reply text or None, error message or None."""
    keys = [request_key(judge.judge_id, messages) for messages, _ in requests]
    replies: list[str | None] = [cache.get(k) for k in keys]
    errors: list[str | None] = [None] * len(requests)
    todo = [i for i, r in enumerate(replies) if r is None]
    if not quiet and len(todo) < len(requests):
        print(f"evaluate: {len(requests) - len(todo)} of {len(requests)} judge replies from the cache",
              file=sys.stderr)

    def ask(i: int) -> None:
        try:
            reply = judge.redact(requests[i][1]())
        except JudgeError as e:
            errors[i] = judge.redact(str(e))
            return
        cache.put(keys[i], reply)
        replies[i] = reply

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, judge.concurrency)) as pool:
        for future in concurrent.futures.as_completed([pool.submit(ask, i) for i in todo]):
            future.result()  # anything but JudgeError is a bug: let it out
    return replies, errors
