"""The OpenAI-compatible judge against a raw-socket fake endpoint on 127.0.0.1 that misbehaves the
way real networks and proxies do: a body (or the status line) trickled a byte at a time, a huge
Retry-After, a body cut short (IncompleteRead), a reply that is not HTTP, a dropped connection, a
TLS handshake that never finishes, an oversized body, and error bodies that echo the API key. Each
test shows the time stays bounded by --timeout / the Retry-After cap, the failure is retried and
then counted for its request (the study writes every other verdict), and the key never reaches
an error message, the reply cache, the verdict file or stderr."""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import subprocess
import threading
import time

import pytest

from lima_jax.evaluate.cache import ReplyCache
from lima_jax.evaluate.cli import main
from lima_jax.evaluate.judges import JudgeError, JudgeOptions, make_judge
from lima_jax.evaluate.judges import openai as openai_judge
from lima_jax.evaluate.judges.base import redact
from lima_jax.evaluate.pairwise import run_pairwise
from lima_jax.evaluate.responses import Response

KEY = "sk-test-0123456789abcdefSECRET"


def completion(content: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


def http_reply(status: int, body: bytes, headers: dict | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Content-Type: application/json",
            "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def trickle(data: bytes, every: float):
    """A step that sends `data` one byte every `every` seconds (each read well inside any
    per-read timeout, the whole far beyond the request's)."""
    def step(sock, request):
        for i in range(len(data)):
            sock.sendall(data[i:i + 1])
            time.sleep(every)
    return step


def send(data: bytes):
    return lambda sock, request: sock.sendall(data)


class RawServer:
    """Answers each connection with the next scripted step (a function of the socket and the raw
    request), then with a valid completion; records the raw requests."""

    @staticmethod
    def verdict(body: bytes) -> str:
        """Prefers the response that says 'good' in a pairwise request; else 'Verdict: 1'."""
        user = json.loads(body)["messages"][-1]["content"]
        if "[Response 2]" not in user:
            return "Verdict: 1"
        first = user.split("[Response 1]")[1].split("[Response 2]")[0]
        return "Reasoning.\nVerdict: " + ("1" if "good" in first else "2")

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.script: list = []
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                sock = self.request
                sock.settimeout(10)
                data = b""
                try:
                    if tls is not None:
                        sock = tls.wrap_socket(sock, server_side=True)
                    while b"\r\n\r\n" not in data:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length:")), b"0"))
                    while len(body) < length:
                        body += sock.recv(65536)
                    with server.lock:
                        server.requests.append(data)
                        step = server.script.pop(0) if server.script else None
                    (step or send(http_reply(200, completion(server.verdict(body)))))(sock, data)
                except OSError:
                    pass  # the client gave up and left
                finally:
                    if sock is not self.request:
                        sock.close()  # the TLS wrapper (socketserver closes the plain socket)

        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.tcp.daemon_threads = True
        self.url = f"http{'s' if tls else ''}://127.0.0.1:{self.tcp.server_address[1]}/v1"
        threading.Thread(target=self.tcp.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = RawServer()
    yield s
    s.tcp.shutdown()
    s.tcp.server_close()


def _judge(url, **kw):
    options = JudgeOptions(**{"timeout": 0.5, "retries": 2, "backoff": 0.01, "max_retry_after": 0.2,
                              "concurrency": 1, "api_key_env": "JUDGE_TEST_KEY", **kw})
    return make_judge(f"openai:m@{url}", options)


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)


def test_a_trickled_body_is_cut_at_the_whole_request_timeout_and_retried(server):
    # 300 bytes at 20 ms each: 6 s in all, but never 0.5 s without a byte.
    server.script = [trickle(http_reply(200, completion("slow " * 50)), 0.02)]
    start = time.monotonic()
    assert _judge(server.url, retries=1).chat(MESSAGES) == "Verdict: 1"
    assert time.monotonic() - start < 1.5
    assert len(server.requests) == 2


def test_a_trickled_status_line_times_out_in_bounded_time(server):
    server.script = [trickle(http_reply(200, completion("x")), 0.05)] * 2
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"gave up after 2 attempts; last error: timed out after 0.5 s"):
        _judge(server.url, retries=1).chat(MESSAGES)
    assert time.monotonic() - start < 2.0  # two 0.5 s attempts and a 10 ms wait


def test_a_tls_handshake_that_never_finishes_times_out():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts (in the kernel) and never says a word
    try:
        start = time.monotonic()
        with pytest.raises(JudgeError, match="timed out"):
            _judge(f"https://127.0.0.1:{silent.getsockname()[1]}/v1", retries=0).chat(MESSAGES)
        assert time.monotonic() - start < 1.5
    finally:
        silent.close()


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """A RawServer behind TLS with a throwaway self-signed certificate that the judge trusts."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"needs the openssl command to make a test certificate ({e})")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    monkeypatch.setattr(ssl, "_create_default_https_context", lambda *a, **k: ssl.create_default_context(cafile=cert))
    s = RawServer(tls=server_context)
    yield s
    s.tcp.shutdown()
    s.tcp.server_close()


def test_https_replies_and_a_trickle_over_tls_is_cut_at_the_timeout(tls_server, monkeypatch):
    assert _judge(tls_server.url).chat(MESSAGES) == "Verdict: 1"
    with monkeypatch.context() as m:  # without the test certificate in the trust store: refused
        m.setattr(ssl, "_create_default_https_context", ssl.create_default_context)
        with pytest.raises(JudgeError, match="CERTIFICATE_VERIFY_FAILED"):
            _judge(tls_server.url, retries=0).chat(MESSAGES)
    tls_server.script = [trickle(http_reply(200, completion("slow " * 50)), 0.02)]
    start = time.monotonic()
    assert _judge(tls_server.url, retries=1).chat(MESSAGES) == "Verdict: 1"
    assert time.monotonic() - start < 1.5 and len(tls_server.requests) == 3  # the refused one sent none


def test_no_watchdog_outlives_its_request(server):
    server.script = [trickle(http_reply(200, completion("x")), 0.05), send(http_reply(500, b"x"))]
    judge = _judge(server.url, retries=2)
    assert judge.chat(MESSAGES) == "Verdict: 1"
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]


def test_retry_after_is_honoured_up_to_the_cap(server):
    server.script = [send(http_reply(429, b'{"error": "slow down"}', {"Retry-After": "100000"}))]
    start = time.monotonic()
    assert _judge(server.url, max_retry_after=0.3).chat(MESSAGES) == "Verdict: 1"
    assert 0.3 <= time.monotonic() - start < 1.5  # waited the cap, not 100000 s


def test_a_short_retry_after_is_honoured_over_a_shorter_backoff(server):
    server.script = [send(http_reply(503, b"busy", {"Retry-After": "0.25"}))]
    start = time.monotonic()
    assert _judge(server.url, max_retry_after=5).chat(MESSAGES) == "Verdict: 1"
    assert 0.25 <= time.monotonic() - start < 1.5


@pytest.mark.parametrize("fault", ["incomplete", "not_http", "dropped", "garbage_json", "bad_header"])
def test_transport_failures_are_retried(server, fault):
    step = {
        "incomplete": send(http_reply(200, completion("Verdict: 2"))[:-10]),  # Content-Length lies
        "not_http": send(b"SSH-2.0-OpenSSH_9.6\r\n"),
        "dropped": send(b""),
        "garbage_json": send(http_reply(200, b"{not json")),
        "bad_header": send(b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n"),
    }[fault]
    server.script = [step]
    assert _judge(server.url).chat(MESSAGES) == "Verdict: 1"
    assert len(server.requests) == 2


def test_connection_refused_is_a_judge_error_not_a_traceback():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(JudgeError, match="gave up after 3 attempts"):
        _judge(f"http://127.0.0.1:{port}/v1").chat(MESSAGES)


def test_an_oversized_body_is_refused_not_held(server, monkeypatch):
    monkeypatch.setattr(openai_judge, "MAX_REPLY_BYTES", 1000)
    server.script = [send(http_reply(200, completion("x" * 5000)))]
    assert _judge(server.url).chat(MESSAGES) == "Verdict: 1"
    assert len(server.requests) == 2


def _echo(status):
    """A reply whose body echoes the request's headers, Authorization included."""
    def step(sock, request):
        lines = request.partition(b"\r\n\r\n")[0].decode().split("\r\n")
        auth = next(line for line in lines if line.lower().startswith("authorization:"))
        sock.sendall(http_reply(status, json.dumps({"error": auth, "key": auth.split()[-1],
                                                    "you_sent": lines}).encode()))
    return step


def test_an_echoed_api_key_is_redacted_from_error_messages(server):
    server.script = [_echo(500)] * 3
    with pytest.raises(JudgeError) as e:
        _judge(server.url).chat(MESSAGES)
    assert KEY in server.requests[0].decode()  # it was sent ...
    assert "HTTP 500" in str(e.value) and KEY not in str(e.value)  # ... and is not repeated
    assert "[REDACTED]" in str(e.value)
    server.script = [_echo(401)]
    with pytest.raises(JudgeError, match="not retried") as e:
        _judge(server.url).chat(MESSAGES)
    assert KEY not in str(e.value) and "Bearer" not in str(e.value).replace("Bearer [REDACTED]", "")
    server.script = [_echo(200)] * 3  # 200 but not a completion: the "malformed body" excerpt
    with pytest.raises(JudgeError, match="malformed") as e:
        _judge(server.url).chat(MESSAGES)
    assert KEY not in str(e.value)


def test_redact_patterns():
    text = (f'Authorization: Bearer {KEY}\n{{"authorization": "Bearer abc.def-ghi"}} '
            f'authorization=token123 and {KEY}')
    out = redact(text, [KEY])
    assert KEY not in out and "abc.def-ghi" not in out and "token123" not in out
    assert out.count("[REDACTED]") == 4
    assert redact("Verdict: 1", [KEY]) == "Verdict: 1"


def _pairs(n):
    return [(Response(str(i), 0, f"q{i}", f"good {i}"), Response(str(i), 0, f"q{i}", f"bad {i}"))
            for i in range(n)]


def test_a_study_survives_every_transport_fault_and_writes_the_other_verdicts(server, tmp_path, capsys):
    """Through the CLI: the first request fails every way in turn and for good; the other
    verdicts are written, the failure is counted (exit 1), and the key is nowhere on disk."""
    server.script = [send(b"SSH-2.0-OpenSSH_9.6\r\n"), send(http_reply(200, completion("Verdict: 1"))[:-5]),
                     _echo(500)]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"id": str(i), "sample": 0, "prompt": "q", "text": "good"}) + "\n"
                         for i in range(3)))
    b.write_text("".join(json.dumps({"id": str(i), "sample": 0, "prompt": "q", "text": "meh"}) + "\n"
                         for i in range(3)))
    out = tmp_path / "out"
    rc = main(["pairwise", "--a", str(a), "--b", str(b), "--judge", f"openai:m@{server.url}",
               "--api-key-env", "JUDGE_TEST_KEY", "--timeout", "0.5", "--retries", "2", "--backoff", "0.01",
               "--concurrency", "1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 judge_error" in err
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert [v["verdict"] for v in verdicts] == ["skipped", "a", "a"]
    assert "HTTP 500" in verdicts[0]["error"]
    for path in out.iterdir():
        if path.suffix in (".jsonl", ".json", ".md"):
            assert KEY not in path.read_text(), path
    assert KEY not in err


def test_a_reply_that_quotes_the_key_is_cached_without_it(server, tmp_path):
    server.script = [send(http_reply(200, completion(f"You sent Bearer {KEY}. Verdict: 1")))]
    cache_path = tmp_path / "cache.jsonl"
    run_pairwise(_pairs(1), _judge(server.url), ReplyCache(cache_path))
    assert KEY not in cache_path.read_text() and "[REDACTED]" in cache_path.read_text()


@pytest.mark.parametrize("flag, value, says", [
    ("--retries", "-1", "--retries must be an integer >= 0"),
    ("--timeout", "0", "--timeout must be a number of seconds > 0"),
    ("--timeout", "nan", "--timeout must be a number of seconds > 0"),
    ("--backoff", "-1", "--backoff must be a number of seconds >= 0"),
    ("--max-retry-after", "inf", "--max-retry-after must be a number of seconds >= 0"),
])
def test_cli_rejects_bad_retry_and_timeout_values_in_one_line(tmp_path, capsys, flag, value, says):
    rc = main(["pairwise", "--a", str(tmp_path / "missing.jsonl"), "--b", str(tmp_path / "missing.jsonl"),
               "--judge", "length", "--out", str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "out").exists()
