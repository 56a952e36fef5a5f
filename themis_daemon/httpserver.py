"""An HTTPServer that can drain: finish in-flight requests on shutdown, cut idle connections."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Dict, Optional, Set

import tornado.httpserver
import tornado.httputil
import tornado.ioloop


class _TrackingDelegate(tornado.httputil.HTTPMessageDelegate):
    """Marks its connection busy from the request headers until the response is done."""

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate, server: "DrainingHTTPServer",
                 server_conn: object):
        self.inner, self.server, self.server_conn = inner, server, server_conn

    def headers_received(self, start_line, headers):
        self.server.busy.add(self.server_conn)
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk):
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.server.busy.discard(self.server_conn)
        self.inner.on_connection_close()


def _nodelay_stays_on(value: bool) -> None:
    """Stands in for a connection's `set_nodelay`: see `DrainingHTTPServer.handle_stream`."""


class DrainingHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTPServer that knows which connections have a request in flight.

    Tornado asks for a new request delegate (`start_request`) only once the previous response
    on that connection is completely written, and calls `on_close` when a connection ends
    (also after a WebSocket upgrade took the stream over). So a connection is busy from the
    headers of a request until its next `start_request` or `on_close`; `drain()` waits for
    exactly those and closes idle keep-alive connections at once.
    """

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        # Open connections -> when each last began to wait for a request (monotonic)
        self.conns: Dict[object, float] = {}
        self.busy: Set[object] = set()
        self.draining = False
        # Idle keep-alive connections are closed by one sweep: Tornado's own timeout (the
        # same setting, as `header_timeout`) armed and cancelled a timer for every request,
        # a measurable share of a cached answer's cost.
        self.idle_timeout: float = self.conn_params.header_timeout or 3600.0
        self.conn_params.header_timeout = None
        self._sweeper: Optional[tornado.ioloop.PeriodicCallback] = None

    def handle_stream(self, stream, address):
        # TCP_NODELAY for the whole connection, as nginx, Go and Node.js keep it. Tornado sets it
        # for the end of each response and clears it after; with a big cached body (a 1,000-run
        # list) that toggling cost a measurable share of the answers per second.
        stream.set_nodelay(True)
        stream.set_nodelay = _nodelay_stays_on
        return super().handle_stream(stream, address)

    def start_request(self, server_conn, request_conn):
        self.conns[server_conn] = time.monotonic()  # waiting for its next request
        self.busy.discard(server_conn)  # the previous response on it is complete
        if self._sweeper is None:
            interval = min(max(self.idle_timeout / 4, 0.05), 5.0)
            self._sweeper = tornado.ioloop.PeriodicCallback(self._sweep, interval * 1000)
            self._sweeper.start()
        if self.draining:
            # No further keep-alive requests once the drain started: close before reading.
            request_conn.close()
        return _TrackingDelegate(super().start_request(server_conn, request_conn), self, server_conn)

    def on_close(self, server_conn) -> None:
        self.conns.pop(server_conn, None)
        self.busy.discard(server_conn)
        super().on_close(server_conn)

    def _sweep(self) -> None:
        """Close connections that waited longer than the idle timeout for (the rest of) a request's
        headers; one whose request is in flight is busy, not idle."""
        cutoff = time.monotonic() - self.idle_timeout
        for conn, since in list(self.conns.items()):
            if since <= cutoff and conn not in self.busy:
                self.conns[conn] = math.inf  # closing: on_close removes it
                asyncio.ensure_future(conn.close())

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
        super().stop()

    async def drain(self, timeout: float, extra_busy=lambda: 0) -> int:
        """Stop accepting, finish in-flight requests within `timeout`; the number cut off."""
        self.stop()
        self.draining = True
        for conn in list(self.conns.keys() - self.busy):
            asyncio.ensure_future(conn.close())
        deadline = time.monotonic() + max(timeout, 0.0)
        while (self.busy or extra_busy()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cut = len(self.busy)
        try:
            await asyncio.wait_for(self.close_all_connections(), 2.0)
        except asyncio.TimeoutError:
            pass
        return cut

