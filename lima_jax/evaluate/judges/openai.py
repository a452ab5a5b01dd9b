"""A judge behind any OpenAI-compatible ``/chat/completions`` endpoint, on the standard library.

Bounded in time (README, "Evaluation"): ``--timeout`` is a deadline for the WHOLE request
(connect, TLS handshake, send, status line, headers and the full body), not for each socket read,
so a reply trickled a byte at a time cannot hold a request open. A watchdog shuts the request's
socket down when the deadline passes, whatever phase it is in. urllib is kept, with its proxy
settings from the environment, and given connections that register their sockets with that
watchdog; httpx would not help here, since its timeouts are also per operation.

Retried, with exponential backoff (``--backoff``, doubling), on 429, 5xx and every transport
failure: a timeout, a refused or dropped connection, a body cut short (IncompleteRead), a reply
that is not HTTP, a malformed or oversized body. Retry-After is honoured up to
``--max-retry-after`` seconds, which also caps the backoff. Other 4xx fail at once, because asking
again cannot help. A request that fails for good is a JudgeError, which the caller counts for that
request while the study goes on. Redirects are not followed (they would carry the key elsewhere).

Every error text and reply passes through `redact` before it is raised or returned, so the API key,
any Bearer token and any Authorization value that an endpoint echoes never reaches the reply
cache, a verdict file or stderr."""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request

from lima_jax.errors import LimaError
from lima_jax.evaluate.judges.base import Judge, JudgeError, JudgeOptions

MAX_REPLY_BYTES = 32 << 20  # a reply body larger than this is refused (and retried), not held
ERROR_DETAIL_CHARS = 200  # how much of an error body an error message quotes (after redaction)


class OpenAIJudge(Judge):
    def __init__(self, *, model: str, base_url: str, options: JudgeOptions):
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.options = options
        self.concurrency = max(1, options.concurrency)
        self.judge_id = f"openai:{model}@{base_url.rstrip('/')}"
        self.api_key = os.environ.get(options.api_key_env, "")
        self.secrets = (self.api_key,) if self.api_key else ()
        if not self.api_key and not base_url.startswith(("http://127.0.0.1", "http://localhost")):
            raise JudgeError(f"judge {self.judge_id}: environment variable {options.api_key_env} "
                             "is empty; set it to the API key (or pass --api-key-env NAME)")

    def _request(self, body: bytes) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

    def _excerpt(self, payload: bytes) -> str:
        """The start of a body for an error message: redacted whole, then cut (a cut first could
        leave half a key that no longer matches)."""
        return self.redact(payload.decode("utf-8", "replace"))[:ERROR_DETAIL_CHARS]

    def chat(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.options.max_tokens}).encode("utf-8")
        cap = self.options.max_retry_after
        last = "no attempt"
        for attempt in range(self.options.retries + 1):
            wait = min(self.options.backoff * 2.0 ** min(attempt, 60), cap)
            try:
                status, headers, payload = _post(self._request(body), self.options.timeout)
            except _TransportError as e:
                last = str(e)
            else:
                if 200 <= status < 300:
                    try:
                        return self.redact(_reply_text(payload))
                    except ValueError as e:
                        last = f"malformed reply body: {e} in {self._excerpt(payload)!r}"
                else:
                    last = f"HTTP {status}: {self._excerpt(payload)}"
                    if status != 429 and status < 500:
                        raise JudgeError(f"judge {self.judge_id}: {self.redact(last)} (not retried)")
                    wait = max(wait, min(_retry_after(headers), cap))
            if attempt < self.options.retries:
                time.sleep(wait)
        raise JudgeError(f"judge {self.judge_id}: gave up after {self.options.retries + 1} "
                         f"attempts; last error: {self.redact(last)}")


class _TransportError(LimaError):
    """The request got no complete HTTP reply (timeout, connection, protocol or size failure)."""


def _post(request: urllib.request.Request, timeout: float) -> tuple[int, object, bytes]:
    """(status, headers, body) of `request`, all of it within `timeout` seconds; a non-2xx status
    is a result, not an error. Anything short of a whole reply in time is a _TransportError."""
    deadline = _Deadline(timeout)
    error: BaseException | None = None
    try:
        opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), _NoRedirect())
        try:
            response = opener.open(request, timeout=deadline.remaining())
        except urllib.error.HTTPError as e:  # a non-2xx reply: its body still has to arrive in time
            response = e
        with response:
            status, headers = response.getcode(), response.headers
            payload = response.read(MAX_REPLY_BYTES + 1)
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError, timeouts, resets, ...
        error = e
    finally:
        expired = deadline.stop()
    if expired or isinstance(getattr(error, "reason", error), TimeoutError):
        # Whatever the watchdog's shutdown surfaced as (a reset, a short body, a closed file).
        raise _TransportError(f"timed out after {timeout:g} s (the whole request)")
    if error is not None:
        raise _TransportError(_describe(error))
    if len(payload) > MAX_REPLY_BYTES:
        raise _TransportError(f"reply body larger than {MAX_REPLY_BYTES} bytes")
    expected = headers.get("Content-Length", "") if headers is not None else ""
    if expected.isascii() and expected.isdigit() and len(payload) < int(expected):
        raise _TransportError(f"IncompleteRead: the reply body was cut short ({len(payload)} of "
                              f"{expected} bytes)")
    return status, headers, payload


def _describe(e: BaseException) -> str:
    """One line for a transport failure (urllib's URLError unwrapped to its cause)."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, BaseException):
        e = reason
    elif reason is not None:
        return f"{type(e).__name__}: {reason}"
    if isinstance(e, http.client.IncompleteRead):
        return f"IncompleteRead: the reply body was cut short ({len(e.partial)} bytes read)"
    if isinstance(e, http.client.RemoteDisconnected):
        return "RemoteDisconnected: the connection closed without a reply"
    if isinstance(e, http.client.BadStatusLine):
        return f"not an HTTP reply: {str(e)[:60]!r}"
    return f"{type(e).__name__}: {e}"


class _Deadline:
    """One request's deadline: the time left for each blocking step, and a watchdog timer that
    shuts down every connection `watch`ed for the request when the time is up, ending a read or
    write in progress in any thread. It holds its own duplicate of each socket's descriptor, so
    it acts on that connection even as the request closes it, never on a reused descriptor."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = False
        self._stopped = False
        self._handles: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(self.end - time.monotonic(), 1e-3)

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            if self._stopped:
                return sock
            handle = socket.fromfd(sock.fileno(), sock.family, sock.type)  # a plain socket, also for TLS
            self._handles.append(handle)
            if self.expired:
                _abort(handle)
        return sock

    def _expire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.expired = True
            for handle in self._handles:
                _abort(handle)

    def stop(self) -> bool:
        """Ends the watch and lets go of the duplicates; True if the time ran out."""
        self._timer.cancel()
        with self._lock:
            self._stopped = True
            for handle in self._handles:
                handle.close()
            self._handles.clear()
            return self.expired


def _abort(handle: socket.socket) -> None:
    try:
        handle.shutdown(socket.SHUT_RDWR)  # ends the connection for every descriptor of it
    except OSError:
        pass  # not connected any more: nothing to end


class _Watched:
    """A connection whose sockets get the request's remaining time and are `watch`ed."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

        def create_connection(address, timeout=None, source_address=None, **_):
            return deadline.watch(socket.create_connection(address, deadline.remaining(), source_address))

        self._create_connection = create_connection


class _HTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, http.client.HTTPSConnection):
    def connect(self):
        http.client.HTTPConnection.connect(self)  # TCP, and the CONNECT tunnel through a proxy
        self.sock.settimeout(self._deadline.remaining())
        self.sock = self._deadline.watch(self._context.wrap_socket(
            self.sock, server_hostname=self._tunnel_host or self.host, do_handshake_on_connect=False))
        self.sock.do_handshake()  # watched: a handshake that never finishes ends at the deadline


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(lambda *a, **k: _HTTPConnection(*a, deadline=self.deadline, **k), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(lambda *a, **k: _HTTPSConnection(*a, deadline=self.deadline, **k), req,
                            context=self._context)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the 3xx is returned as an HTTP error (not retried), the key stays here


def _retry_after(headers) -> float:
    """Seconds a Retry-After header (seconds or an HTTP date) asks for; 0 if none or unreadable."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return 0.0
        if when is None:
            return 0.0
        seconds = when.timestamp() - time.time()
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _reply_text(payload: bytes) -> str:
    """choices[0].message.content of a chat-completions body; ValueError if it is not one."""
    try:
        data = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as e:
        raise ValueError(type(e).__name__) from None
    if not isinstance(content, str):
        raise ValueError(f"message content is {type(content).__name__}, not a string")
    return content
