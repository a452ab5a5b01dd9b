"""The OpenAI-compatible judge against a fake chat-completions server on 127.0.0.1 (real HTTP):
normal replies, slow replies past the timeout, 429 and 500 with retries, malformed bodies, the
concurrency limit, the on-disk cache and resuming an interrupted study."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.cli import main
from lima_jax.evaluate.judges import JudgeError, JudgeOptions, make_judge
from lima_jax.evaluate.pairwise import run_pairwise
from lima_jax.evaluate.responses import Response


class FakeServer:
    """Replies with a script of (status, body, delay) steps, then with `default(request)`."""

    def __init__(self):
        self.script: list[tuple[int, bytes, float]] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.delay = 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    step = server.script.pop(0) if server.script else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if step is None:
                        step = (200, server.default(body), server.delay)
                    status, payload, delay = step
                    time.sleep(delay)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def completion(content: str) -> bytes:
        return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()

    def default(self, body) -> bytes:
        """Prefers the response that mentions 'good', whichever position it is in."""
        user = body["messages"][-1]["content"]
        first = user.split("[Response 1]")[1].split("[Response 2]")[0]
        return self.completion("Reasoning.\nVerdict: " + ("1" if "good" in first else "2"))


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _judge(server, **kw):
    options = JudgeOptions(**{"timeout": 2.0, "retries": 3, "backoff": 0.01, "concurrency": 2, **kw})
    return make_judge(f"openai:test-model@{server.url}", options)


MESSAGES = [{"role": "user", "content": "hi"}]


def test_request_shape_and_api_key(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    server.script = [(200, FakeServer.completion("Verdict: tie"), 0)]
    judge = _judge(server, api_key_env="JUDGE_KEY")
    assert judge.chat(MESSAGES) == "Verdict: tie"
    body, headers = server.requests[0], server.headers[0]
    assert body["model"] == "test-model" and body["messages"] == MESSAGES and body["temperature"] == 0
    assert headers["Authorization"] == "Bearer sk-test"


def test_missing_api_key_for_a_remote_endpoint_is_an_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(JudgeError, match="NO_SUCH_KEY is empty"):
        make_judge("openai:gpt-4o@https://api.example.com/v1", JudgeOptions(api_key_env="NO_SUCH_KEY"))
    with pytest.raises(JudgeError, match="openai:MODEL@BASE_URL"):
        make_judge("openai:gpt-4o", JudgeOptions())


def test_retries_429_500_and_malformed_bodies_then_succeeds(server):
    server.script = [(429, b'{"error": "rate"}', 0), (500, b"oops", 0), (200, b"not json", 0),
                     (200, b'{"choices": []}', 0), (502, b"", 0)]
    judge = _judge(server, retries=5)
    start = time.perf_counter()
    reply = judge.chat([{"role": "user", "content": "[Response 1] good [Response 2] bad"}])
    assert reply.endswith("Verdict: 1")
    assert len(server.requests) == 6
    assert time.perf_counter() - start < 2.0  # backoff 0.01 s doubling: well under a second


def test_gives_up_after_the_retries_with_the_last_error(server):
    server.script = [(503, b"down", 0)] * 3
    with pytest.raises(JudgeError, match=r"gave up after 3 attempts; last error: HTTP 503"):
        _judge(server, retries=2).chat(MESSAGES)
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server):
    server.script = [(401, b'{"error": "bad key"}', 0)]
    with pytest.raises(JudgeError, match=r"HTTP 401.*not retried"):
        _judge(server).chat(MESSAGES)
    assert len(server.requests) == 1


def test_slow_reply_times_out_and_is_retried(server):
    server.script = [(200, FakeServer.completion("Verdict: 1"), 1.0),
                     (200, FakeServer.completion("Verdict: 2"), 0)]
    assert _judge(server, timeout=0.2).chat(MESSAGES) == "Verdict: 2"  # the slow one is dropped
    assert len(server.requests) == 2


def _pairs(n):
    return [(Response(str(i), 0, f"q{i}", f"good answer {i}"), Response(str(i), 0, f"q{i}", f"bad {i}"))
            for i in range(n)]


def test_study_runs_both_orders_within_the_concurrency_limit_and_is_cached(server, tmp_path):
    server.delay = 0.05
    cache_path = tmp_path / "cache.jsonl"
    records = run_pairwise(_pairs(6), _judge(server, concurrency=3), ReplyCache(cache_path))
    assert [r["verdict"] for r in records] == ["a"] * 6  # 'good' wins in both orders
    assert len(server.requests) == 12 and 1 < server.max_in_flight <= 3
    again = run_pairwise(_pairs(6), _judge(server), ReplyCache(cache_path))
    assert len(server.requests) == 12  # every reply from the cache: the rerun costs nothing
    assert [r["verdict"] for r in again] == ["a"] * 6


def test_interrupted_study_resumes_and_failures_are_reported_not_lost(server, tmp_path):
    cache_path = tmp_path / "cache.jsonl"
    server.script = [(500, b"down", 0)] * 4  # the first request fails for good (1 + 3 retries)
    judge = _judge(server, concurrency=1, retries=3)
    records = run_pairwise(_pairs(3), judge, ReplyCache(cache_path))
    assert [r["verdict"] for r in records] == ["skipped", "a", "a"]
    assert records[0]["skip"] == "judge_error" and "HTTP 500" in records[0]["error"]
    asked = len(server.requests)
    records = run_pairwise(_pairs(3), judge, ReplyCache(cache_path))
    assert [r["verdict"] for r in records] == ["a", "a", "a"]
    assert len(server.requests) == asked + 1  # only the failed request is asked again


def test_unparseable_replies_are_counted_by_the_cli(server, tmp_path, capsys):
    server.script = [(200, FakeServer.completion("I cannot decide."), 0)]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"id": str(i), "sample": 0, "prompt": "q", "text": "good"}) + "\n"
                         for i in range(2)))
    b.write_text("".join(json.dumps({"id": str(i), "sample": 0, "prompt": "q", "text": "meh"}) + "\n"
                         for i in range(2)))
    out = tmp_path / "out"
    rc = main(["pairwise", "--a", str(a), "--b", str(b), "--judge", f"openai:m@{server.url}",
               "--backoff", "0.01", "--concurrency", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    table = json.loads((out / "table.json").read_text())
    assert (table["judged"], table["a_wins"], table["skips"]) == (1, 1, {"unparseable": 1})
    assert "1 unparseable" in capsys.readouterr().err
    kept = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert kept[0]["reply_ab"] == "I cannot decide."  # the raw reply is kept
