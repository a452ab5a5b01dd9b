"""On-disk cache of judge replies: one JSON line per request, appended and fsynced as soon as the
reply arrives, so a rerun costs nothing and an interrupted study resumes where it stopped. A reply
a kill cut short is set aside in ``CACHE.torn-<n>`` when the cache is opened
(`lima_jax.jsonl.set_aside_torn_tail`), and its request is simply asked again."""

from __future__ import annotations

import hashlib
import json
import pathlib
import threading

from lima_jax.jsonl import append_jsonl, read_jsonl, set_aside_torn_tail


def request_key(judge_id: str, messages: list[dict]) -> str:
    """Stable key of one judge request: the judge's identity and the exact messages."""
    blob = json.dumps([judge_id, messages], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplyCache:
    """Thread-safe {key: reply} backed by an append-only JSONL file (None path = memory only)."""

    def __init__(self, path: str | pathlib.Path | None):
        self.path = pathlib.Path(path) if path else None
        self._lock = threading.Lock()
        self._replies: dict[str, str] = {}
        if self.path and self.path.exists():
            # Now, not at the first new reply: the stderr note comes when the study starts.
            set_aside_torn_tail(self.path)
            for _, record in read_jsonl(self.path, skip_invalid=True):
                if isinstance(record.get("key"), str) and "reply" in record:
                    self._replies[record["key"]] = record["reply"]

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._replies.get(key)

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._replies[key] = reply
            if self.path:
                append_jsonl(self.path, [{"key": key, "reply": reply}], durable=True)
