"""The annotation server refuses writes that did not come from its own page, over real HTTP on a
server started here: a text/plain POST (what a cross-site form can send), a POST from another
origin, a same-looking origin behind a DNS-rebound host name, and an oversized body; each is
refused (403 / 413) and the verdict file is left as it was, while the page's own same-origin JSON
POST still records."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from lima_jax.evaluate import annotate
from tests.evaluate.test_annotate import Running


@pytest.fixture
def run(tmp_path):
    r = Running(tmp_path / "ann")
    yield r
    r.stop()


def _post(run, body: bytes, headers: dict, host: str | None = None) -> tuple[int, dict]:
    port = run.server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    if host is not None:
        conn.putrequest("POST", "/api/verdict", skip_host=True)
        conn.putheader("Host", host)
    else:
        conn.putrequest("POST", "/api/verdict")
    for k, v in {"Content-Length": str(len(body)), **headers}.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    response = conn.getresponse()
    status, reply = response.status, response.read()
    conn.close()
    return status, json.loads(reply)


def _raw(run, request: bytes) -> bytes:
    """The whole reply to a hand-written request (read to the server's close)."""
    reply = b""
    with socket.create_connection(run.server.server_address, timeout=5) as s:
        s.sendall(request)
        while chunk := s.recv(65536):
            reply += chunk
    return reply


def _file(run) -> bytes:
    return run.study.path.read_bytes() if run.study.path.exists() else b""


VERDICT = json.dumps({"id": "p0", "choice": "left"}).encode()
JSON = {"Content-Type": "application/json"}


def test_same_origin_json_posts_record(run):
    origin = f"http://127.0.0.1:{run.server.server_address[1]}"
    status, state = _post(run, VERDICT, {**JSON, "Origin": origin})
    assert status == 200 and state["done"] == 1
    status, state = _post(run, json.dumps({"id": "p1", "choice": "tie"}).encode(),
                          {"Content-Type": "application/json; charset=UTF-8"})  # no Origin: curl, scripts
    assert status == 200 and state["done"] == 2
    port = run.server.server_address[1]  # reached as localhost (or through a forwarded port): still its own
    status, _ = _post(run, json.dumps({"id": "p2", "choice": "tie"}).encode(),
                      {**JSON, "Origin": f"http://localhost:{port}"}, host=f"localhost:{port}")
    assert status == 200
    assert [json.loads(line)["id"] for line in _file(run).splitlines()] == ["p0", "p1", "p2"]


@pytest.mark.parametrize("headers, host", [
    ({"Content-Type": "text/plain"}, None),  # a cross-site <form enctype=text/plain> or a simple fetch
    ({"Content-Type": "application/x-www-form-urlencoded"}, None),
    ({}, None),
    ({**JSON, "Origin": "http://evil.example"}, None),
    ({**JSON, "Origin": "null"}, None),  # a sandboxed frame or a file:// page
    ({**JSON, "Origin": "http://127.0.0.1:1"}, None),  # another local port is another origin
    ({**JSON, "Origin": "http://evil.example:PORT"}, "evil.example:PORT"),  # DNS rebinding
])
def test_cross_site_and_non_json_posts_are_refused_and_record_nothing(run, headers, host):
    port = str(run.server.server_address[1])
    headers = {k: v.replace("PORT", port) for k, v in headers.items()}
    before = _file(run)
    status, reply = _post(run, VERDICT, headers, host=host.replace("PORT", port) if host else None)
    assert status == 403 and "error" in reply
    assert _file(run) == before and run.study.state()["done"] == 0


def test_an_oversized_body_is_refused_without_being_read(run):
    before = _file(run)
    big = b'{"id": "p0", "choice": "left", "pad": "' + b"x" * (annotate.MAX_BODY_BYTES + 10) + b'"}'
    status, reply = _post(run, big, JSON)
    assert status == 413 and "error" in reply
    # A length far beyond the cap with no body sent at all: if the server tried to read it, this
    # would wait for the 5 s socket timeout instead of answering at once.
    reply = _raw(run, b"POST /api/verdict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000000000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 413")
    assert _file(run) == before and run.study.state()["done"] == 0


def test_a_body_that_stalls_is_dropped_and_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(annotate, "STALL_SECONDS", 0.3)
    r = Running(tmp_path / "ann")
    try:
        with socket.create_connection(r.server.server_address, timeout=5) as s:
            s.sendall(b"POST /api/verdict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n" + VERDICT)  # 1000 promised, fewer sent
            assert s.recv(100) == b""  # dropped after 0.3 s, not held open
        assert _file(r) == b"" and r.study.state()["done"] == 0
    finally:
        r.stop()


@pytest.mark.parametrize("length", ["-5", "abc", "\u00b2"])
def test_a_bad_content_length_is_a_400_not_a_hang(run, length):
    reply = _raw(run, b"POST /api/verdict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + length.encode("latin-1") + b"\r\n\r\n" + VERDICT)
    assert reply.startswith(b"HTTP/1.0 400")
    assert _file(run) == b""


def test_the_server_listens_on_loopback_by_default(tmp_path):
    from lima_jax.evaluate.cli import build_parser

    args = build_parser().parse_args(["annotate", "--a", "a", "--b", "b", "--out", "o"])
    assert args.host == "127.0.0.1"
    r = Running(tmp_path / "ann")
    try:
        assert r.server.server_address[0] == "127.0.0.1"
    finally:
        r.stop()


def test_the_page_sends_json(tmp_path):
    """The page's own script posts application/json, so the checks above never refuse it (the
    Chromium test in test_annotate.py drives it for real)."""
    from lima_jax.evaluate.annotation_page import PAGE

    assert '"Content-Type": "application/json"' in PAGE and 'method: "POST"' in PAGE
