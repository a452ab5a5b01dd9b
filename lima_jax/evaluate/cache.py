"""On-disk cache of judge replies: one JSON line per request, appended and flushed as soon as the
reply arrives, so a rerun costs nothing and an interrupted study resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading


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
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:  # a torn last line (killed mid-write) is simply asked again
                    record = json.loads(line)
                    self._replies[record["key"]] = record["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._replies.get(key)

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._replies[key] = reply
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
