"""The human annotation page: a local web server that shows each prompt with the two systems'
responses in a random (but per-item fixed) left/right order, takes "1 better / tie / 2 better" by
button or key, and appends every verdict to OUT/verdicts.jsonl (fsynced) the moment it is made.
On start it reads that file back, so a restarted server continues where the annotator stopped
(a verdict a kill cut short is set aside in ``verdicts.jsonl.torn-<n>``, not dropped, and its
item asked again); the verdicts use the pairwise format (a / tie / b), so `evaluate table` and
`agree` read them. The server listens on 127.0.0.1 by default and records only its own page's
JSON POSTs: another origin or another content type is a 403, a body over MAX_BODY_BYTES a 413
(README, "Evaluation")."""

from __future__ import annotations

import http.server
import ipaddress
import json
import pathlib
import random
import socket
import threading
import time
import urllib.parse

from lima_jax.evaluate.annotation_page import PAGE
from lima_jax.evaluate.pairwise import table_markdown, win_table
from lima_jax.evaluate.responses import Response
from lima_jax.jsonl import append_jsonl, read_jsonl, set_aside_torn_tail, write_json, write_text_atomic


class AnnotationStudy:
    """The pairs, their left/right order, and the verdicts so far (thread-safe)."""

    def __init__(self, pairs: list[tuple[Response, Response]], out: pathlib.Path, *, a_name: str,
                 b_name: str, annotator: str, seed: int = 0):
        self.pairs = {a.id: (a, b) for a, b in pairs}
        self.order = [a.id for a, _ in pairs]
        # Seeded per id, not drawn in sequence: the same item keeps its sides after a restart.
        self.left_is_a = {i: random.Random(f"{seed}:{i}").random() < 0.5 for i in self.order}
        self.out, self.a_name, self.b_name, self.annotator = out, a_name, b_name, annotator
        self.path = out / "verdicts.jsonl"
        self.verdicts: dict[str, dict] = {}
        self._lock = threading.Lock()
        out.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # A torn last line (killed mid-write) goes aside now, before the next verdict is
            # appended to it: that item is not yet judged.
            set_aside_torn_tail(self.path)
            for _, record in read_jsonl(self.path, skip_invalid=True):
                if isinstance(record.get("id"), str) and record["id"] in self.pairs:
                    self.verdicts[record["id"]] = record

    def state(self) -> dict:
        with self._lock:
            todo = next((i for i in self.order if i not in self.verdicts), None)
            item = None
            if todo is not None:
                a, b = self.pairs[todo]
                left, right = (a, b) if self.left_is_a[todo] else (b, a)
                item = {"id": todo, "prompt": a.prompt or b.prompt, "left": left.text, "right": right.text}
            return {"done": len(self.verdicts), "total": len(self.order), "item": item}

    def record(self, item_id: str, choice: str) -> dict:
        """Saves one verdict ('left' | 'tie' | 'right' as seen on the page) and rewrites the table."""
        if item_id not in self.pairs:
            raise KeyError(f"unknown item id {item_id!r}")
        if choice not in ("left", "tie", "right"):
            raise ValueError(f"choice must be left, tie or right, got {choice!r}")
        left = "a" if self.left_is_a[item_id] else "b"
        verdict = "tie" if choice == "tie" else (left if choice == "left" else {"a": "b", "b": "a"}[left])
        a, _ = self.pairs[item_id]
        record = {"id": item_id, "sample": a.sample, "verdict": verdict, "judge": f"human:{self.annotator}",
                  "annotator": self.annotator, "left": left, "choice": choice, "time": time.time()}
        with self._lock:
            append_jsonl(self.path, [record], durable=True)
            self.verdicts[item_id] = record
            table = win_table(list(self.verdicts.values()), a_name=self.a_name, b_name=self.b_name)
            write_text_atomic(self.out / "table.md", table_markdown([table]))
            write_json(self.out / "table.json", table, ensure_ascii=True)
        return self.state()


# A verdict is a few dozen bytes; a POST body larger than this is refused (413) unread.
MAX_BODY_BYTES = 64 << 10
# A connection that stalls this long (mid-request or mid-body) is dropped, freeing its thread.
STALL_SECONDS = 60.0


def _same_origin(origin: str, host_header: str | None, names: set[str]) -> bool:
    """Whether a request's Origin is this server's own: ``http://`` + the Host the browser
    reached it by, where that Host is an IP address or one of `names` (localhost, the --host
    name, this machine's name). A foreign Host (a DNS-rebound domain) is never its own."""
    if not host_header:
        return False
    try:
        o, h = urllib.parse.urlsplit(origin), urllib.parse.urlsplit("//" + host_header)
        o_port, h_port = o.port or 80, h.port or 80
    except ValueError:
        return False
    if o.scheme != "http" or not o.hostname or o.username or o.path not in ("", "/") or o.query:
        return False
    if (o.hostname, o_port) != (h.hostname, h_port):
        return False
    try:
        ipaddress.ip_address(h.hostname)
        return True
    except ValueError:
        return h.hostname in names


def make_server(study: AnnotationStudy, host: str = "127.0.0.1", port: int = 8765) -> http.server.ThreadingHTTPServer:
    """An HTTP server for `study` (port 0: any free port); call serve_forever() on it.

    It records only what the page itself sends: a POST must be ``application/json`` (which a
    cross-site form cannot send, and a cross-site script cannot without a CORS preflight this
    server never grants) and, when it has an Origin, come from the server's own origin; anything
    else is a 403. A body over MAX_BODY_BYTES is a 413, refused before it is read."""
    page = PAGE.encode("utf-8")
    names = {"localhost", host.lower().strip("[]"), socket.gethostname().lower()}

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = STALL_SECONDS

        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            if status >= 400:  # a refused request's body may be unread: no next request on it
                self.close_connection = True
                self.send_header("Connection", "close")
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif self.path == "/api/state":
                self._send(200, json.dumps(study.state()).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self):
            if self.path != "/api/verdict":
                return self._send(404, b'{"error": "not found"}')
            length = self.headers.get("Content-Length", "0").strip()
            if not (length.isascii() and length.isdigit()):
                return self._send(400, b'{"error": "Content-Length must be a number of bytes"}')
            if int(length) > MAX_BODY_BYTES:
                return self._send(413, json.dumps({"error": f"body over {MAX_BODY_BYTES} bytes"}).encode())
            try:
                raw = self.rfile.read(int(length))
            except OSError:  # the client stalled past `timeout` or left: nothing to record
                self.close_connection = True
                return
            origin = self.headers.get("Origin")
            if origin is not None and not _same_origin(origin, self.headers.get("Host"), names):
                return self._send(403, json.dumps({"error": f"cross-origin POST from {origin[:100]!r} refused"}).encode())
            if self.headers.get_content_type() != "application/json":
                return self._send(403, b'{"error": "a verdict must be sent as application/json"}')
            try:
                body = json.loads(raw)
                state = study.record(str(body["id"]), body["choice"])
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
                return self._send(400, json.dumps({"error": str(e)}).encode())
            self._send(200, json.dumps(state).encode())

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(pairs, out: pathlib.Path, *, a_name: str, b_name: str, annotator: str,
          host: str = "127.0.0.1", port: int = 8765, seed: int = 0) -> None:
    study = AnnotationStudy(pairs, out, a_name=a_name, b_name=b_name, annotator=annotator, seed=seed)
    server = make_server(study, host, port)
    state = study.state()
    print(f"evaluate annotate: http://{host}:{server.server_address[1]}/  ({state['done']} of "
          f"{state['total']} judged; verdicts in {study.path}; Ctrl-C to stop, rerun to resume)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
