"""Replaying recorded answers to the hottest GETs without building a request handler.

Dashboards, probes and scripts ask for the same run list many times between two changes of
the store. Building a `RequestHandler` for each of them cost more than half of what such a
request takes, so a handler that serves a cached body may let its complete answer be
recorded: status, headers (after every transform) and body bytes, with a token naming the
state it showed. A later request with the same URI and the same headers that can change the
answer (Accept-Encoding's gzip, Origin, If-None-Match, HTTP version) is answered from that
record while the daemon's token is unchanged: identical bytes, a fresh Date and X-Request-Id,
the same API-key check, counters and access log. Anything else goes to the handlers.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from email.utils import formatdate
from typing import Any, Callable, Dict, List, Optional, Tuple

import tornado.http1connection
import tornado.httputil

from .base import REQUEST_ID, key_matches, new_request_id, request_key_from

PER_REQUEST = frozenset({"Date", "X-Request-Id"})  # made anew for every answer
SEPARATE_BODY = 64 * 1024


def _direct(conn: Any) -> bool:
    """Whether a replay may skip `write_headers`: Tornado's own HTTP/1.1 connection to a client
    that keeps it open (then `write_headers` adds nothing to the recorded headers). Reads
    HTTP1Connection's private state (as of Tornado 6.6); tests/test_replay.py exercises this path."""
    return (type(conn) is tornado.http1connection.HTTP1Connection and not conn._disconnect_on_finish
            and conn._request_start_line.version == "HTTP/1.1" and not conn.stream.closed())


class Recording:
    """One recorded answer and what it depends on."""

    __slots__ = ("start_line", "headers", "body", "token", "handler", "counter", "latency", "framed", "_parts")

    def head(self, date: str, rid: str) -> bytes:
        """The status line and header block as recorded, with this answer's Date and X-Request-Id."""
        parts = self._parts
        if parts is None:
            parts = self._parts = self._head_parts()
        if len(parts) == 5:  # both, in either order: the common case without a loop
            first = date if parts[1] == "Date" else rid
            second = rid if parts[1] == "Date" else date
            return b"".join((parts[0], first.encode("latin1"), parts[2], second.encode("latin1"), parts[4]))
        fresh = {"Date": date, "X-Request-Id": rid}
        return b"".join([p if type(p) is bytes else fresh[p].encode("latin1") for p in parts])

    def _head_parts(self) -> List[Any]:
        """Fixed byte segments with the names of the per-answer headers between them."""
        pre = [b"HTTP/1.1 %d %s" % (self.start_line.code, self.start_line.reason.encode("latin1"))]
        parts: List[Any] = []
        for name, value in self.headers:
            if name in PER_REQUEST:
                parts.append(b"\r\n".join(pre) + b"\r\n" + name.encode("latin1") + b": ")
                parts.append(name)
                pre = [b""]
            else:
                pre.append((name + ": " + value).encode("latin1"))
        parts.append(b"\r\n".join(pre) + b"\r\n\r\n")
        return parts

    def __init__(self, start_line: tornado.httputil.ResponseStartLine, headers: List[Tuple[str, str]],
                 body: bytes, token: Any, handler: str, counter: Any, latency: Any):
        self.start_line = start_line
        self.headers = headers
        self.body = body
        self.token = token
        self.handler = handler
        self.counter = counter
        self.latency = latency
        self._parts: Optional[List[Any]] = None
        # Its headers frame its body on their own (no chunked transfer to add)
        self.framed = (start_line.code == 304 and not body) or \
            any(n == "Content-Length" and v == str(len(body)) for n, v in headers)


class _Clock:
    """The Date header, formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def date(self, now: float) -> str:
        second = int(now)
        if second != self.second:
            self.text = formatdate(second, usegmt=True)
            self.second = second
        return self.text


class Replays:
    """Recorded answers by request key, a bounded LRU (query strings are the client's choice)."""

    MAX_ENTRIES = 128
    MAX_BYTES = 32 * 1024 * 1024

    def __init__(self, daemon: Any, tokens: Dict[str, Callable[[], Any]]):
        self.daemon = daemon
        self.tokens = tokens  # handler name -> the token of the state it would show now
        self._items: "OrderedDict[Tuple, Recording]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.clock = _Clock()
        self.replayed = 0

    @staticmethod
    def key(request: tornado.httputil.HTTPServerRequest) -> Tuple:
        headers = request.headers
        return (request.uri, request.version, "gzip" in headers.get("Accept-Encoding", ""),
                headers.get("Origin"), headers.get("If-None-Match"))

    def record(self, request: tornado.httputil.HTTPServerRequest, recording: Recording) -> None:
        key = self.key(request)
        with self._lock:
            # answers of the same handler that showed another state can never be replayed again
            for old_key in [k for k, r in self._items.items()
                            if k == key or (r.handler == recording.handler and r.token != recording.token)]:
                self._bytes -= len(self._items.pop(old_key).body)
            self._items[key] = recording
            self._bytes += len(recording.body)
            while len(self._items) > self.MAX_ENTRIES or self._bytes > self.MAX_BYTES:
                self._bytes -= len(self._items.popitem(last=False)[1].body)

    def lookup(self, request: tornado.httputil.HTTPServerRequest) -> Optional[Recording]:
        """The recorded answer this request may get, or None (then a handler answers it)."""
        if request.method != "GET" or not self._items:
            return None
        headers = request.headers
        if "Content-Length" in headers or "Transfer-Encoding" in headers:
            return None  # a GET with a body: let the handlers say what they say to that
        hit = self._items.get(self.key(request))
        if hit is None:
            return None
        token = self.tokens.get(hit.handler)
        if token is None or token() != hit.token:
            return None
        keys = self.daemon.api_keys
        if keys:
            given = request_key_from(headers)
            if given is None or not key_matches(given, keys):
                return None  # the handler answers 401/403
        return hit


class _Headers:
    """The recorded header lines of one answer, in order, as `HTTP1Connection.write_headers`
    reads and amends them (it may add Connection). Building a `HTTPHeaders` re-validated and
    re-normalised every line of every replayed answer: a tenth of what a replay costs."""

    __slots__ = ("lines",)

    def __init__(self, lines: List[Tuple[str, str]]):
        self.lines = lines  # names as HTTPHeaders normalised them when they were recorded

    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self.lines)

    def get(self, name: str, default: Any = None) -> Any:
        for n, v in self.lines:
            if n == name:
                return v
        return default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.lines = [(n, v) for n, v in self.lines if n != name] + [(name, value)]

    def get_all(self) -> List[Tuple[str, str]]:
        return self.lines


class ReplayDelegate(tornado.httputil.HTTPMessageDelegate):
    """Answers one request with a recording once its (empty) body has arrived."""

    def __init__(self, replays: Replays, recording: Recording, request: tornado.httputil.HTTPServerRequest,
                 access: Callable[..., None]):
        self.replays, self.recording, self.request, self.access = replays, recording, request, access

    def finish(self) -> None:
        rec, request = self.recording, self.request
        given = request.headers.get("X-Request-Id", "")
        rid = given if REQUEST_ID.match(given) else new_request_id()
        date = self.replays.clock.date(time.time())
        conn = request.connection
        if rec.framed and _direct(conn):
            self._write_direct(conn, date, rid)
        else:
            self._write(conn, date, rid)
        conn.finish()
        self.replays.replayed += 1
        duration = request.request_time()
        rec.counter.inc()
        rec.latency.observe(duration)
        self.access(rec.handler, rec.start_line.code, request, duration, rid)

    def _write_direct(self, conn: Any, date: str, rid: str) -> None:
        """The recorded header block straight to the stream, and the connection state that
        `finish()` reads set as `write_headers` sets it (see `_direct` for when)."""
        rec = self.recording
        head, body, stream = rec.head(date, rid), rec.body, conn.stream
        conn._response_start_line = rec.start_line
        conn._expected_content_remaining = 0
        if len(body) > SEPARATE_BODY:
            stream.write(head)
            conn._pending_write = stream.write(body)
        else:
            conn._pending_write = stream.write(head + body)

    def _write(self, conn: Any, date: str, rid: str) -> None:
        """Through the connection's `write_headers`, which adds what a closing or HTTP/1.0
        client must be told (Connection) and frames a body without a Content-Length."""
        rec = self.recording
        fresh = {"Date": date, "X-Request-Id": rid}
        headers = _Headers([(name, fresh.get(name, value)) for name, value in rec.headers])
        if len(rec.body) > SEPARATE_BODY:
            # Handed over on its own, a big body is sent from the recorded bytes: with the
            # headers, it would be copied into one new buffer for every answer.
            conn.write_headers(rec.start_line, headers)
            conn.write(rec.body)
        else:
            conn.write_headers(rec.start_line, headers, rec.body or None)

    def on_connection_close(self) -> None:
        pass


class Recorder:
    """Stands in for a request's connection while a handler answers it, and keeps a copy of
    what is written: the headers as they leave (after Tornado's transforms) and the body."""

    def __init__(self, conn: Any, on_done: Callable[["Recorder"], None]):
        self._conn = conn
        self._on_done = on_done
        self.start_line: Optional[tornado.httputil.ResponseStartLine] = None
        self.headers: List[Tuple[str, str]] = []
        self.chunks: List[bytes] = []
        self.complete = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def write_headers(self, start_line, headers, chunk=None):
        self.start_line = start_line
        self.headers = list(headers.get_all())  # Date and X-Request-Id are made anew on replay
        if chunk:
            self.chunks.append(chunk)
        return self._conn.write_headers(start_line, headers, chunk)

    def write(self, chunk, *args: Any, **kwargs: Any):
        if chunk:
            self.chunks.append(chunk)
        return self._conn.write(chunk, *args, **kwargs)

    def finish(self) -> None:
        self._conn.finish()
        self.complete = True
        self._on_done(self)
