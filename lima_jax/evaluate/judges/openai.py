"""A judge behind any OpenAI-compatible ``/chat/completions`` endpoint, on the standard library.

Retries with exponential backoff (honouring Retry-After) on 429, 5xx, timeouts, connection
errors and malformed bodies; other 4xx fail at once, because asking again cannot help."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

from lima_jax.evaluate.judges.base import Judge, JudgeError, JudgeOptions


class OpenAIJudge(Judge):
    def __init__(self, *, model: str, base_url: str, options: JudgeOptions):
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.options = options
        self.concurrency = max(1, options.concurrency)
        self.judge_id = f"openai:{model}@{base_url.rstrip('/')}"
        self.api_key = os.environ.get(options.api_key_env, "")
        if not self.api_key and not base_url.startswith(("http://127.0.0.1", "http://localhost")):
            raise JudgeError(f"judge {self.judge_id}: environment variable {options.api_key_env} "
                             "is empty; set it to the API key (or pass --api-key-env NAME)")

    def _request(self, body: bytes) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def chat(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.options.max_tokens}).encode("utf-8")
        last = "no attempt"
        for attempt in range(self.options.retries + 1):
            wait = self.options.backoff * 2 ** attempt
            try:
                with urllib.request.urlopen(self._request(body), timeout=self.options.timeout) as r:
                    payload = r.read()
                try:
                    return _reply_text(payload)
                except ValueError as e:
                    last = f"malformed reply body: {e}"
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                last = f"HTTP {e.code}: {detail}"
                if e.code != 429 and e.code < 500:
                    raise JudgeError(f"judge {self.judge_id}: {last} (not retried)") from e
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, float(retry_after))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.options.retries:
                time.sleep(wait)
        raise JudgeError(f"judge {self.judge_id}: gave up after {self.options.retries + 1} "
                         f"attempts; last error: {last}")


def _reply_text(payload: bytes) -> str:
    """choices[0].message.content of a chat-completions body; ValueError if it is not one."""
    try:
        data = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{type(e).__name__} in {payload[:120]!r}") from e
    if not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, not a string")
    return content
