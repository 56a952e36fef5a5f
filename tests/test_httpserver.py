"""The daemon's HTTP server class, in process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

import tornado.netutil
import tornado.web

from themis_daemon.httpserver import DrainingHTTPServer


class Hello(tornado.web.RequestHandler):
    def get(self):
        self.finish(b"x" * 200_000)


async def _nodelay_after_responses():
    server = DrainingHTTPServer(tornado.web.Application([(r"/", Hello)]))
    sock, = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server.add_sockets([sock])
    port = sock.getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # keep-alive: several answers on one connection
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await asyncio.wait_for(reader.readexactly(length), 30)
        conns = list(server.conns)
        flags = [c.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in conns]
        writer.close()
        return flags
    finally:
        server.stop()
        await server.close_all_connections()


def test_tcp_nodelay_stays_on_between_responses():
    # Tornado turns TCP_NODELAY off after each response; the daemon keeps it on for the
    # connection's lifetime (more big list answers per second).
    flags = asyncio.run(_nodelay_after_responses())
    assert flags and all(flags)


class Slow(tornado.web.RequestHandler):
    async def get(self):
        await asyncio.sleep(float(self.get_argument("s")))
        self.finish(b"done")


async def _idle_timeouts(timeout: float):
    """(seconds until an idle keep-alive connection is closed, until a connection that sends
    half its headers is closed, whether a request slower than the timeout was answered)."""
    server = DrainingHTTPServer(tornado.web.Application([(r"/", Hello), (r"/slow", Slow)]),
                                idle_connection_timeout=timeout)
    sock, = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server.add_sockets([sock])
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()

    async def closed_after(reader) -> float:
        start = loop.time()
        assert await asyncio.wait_for(reader.read(), 60) == b""  # EOF: the server closed it
        return loop.time() - start

    try:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        idle_w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(idle_r.readuntil(b"\r\n\r\n"), 30)
        await asyncio.wait_for(idle_r.readexactly(200_000), 30)
        assert b"Connection: close" not in head
        half_r, half_w = await asyncio.open_connection("127.0.0.1", port)
        half_w.write(b"GET / HTTP/1.1\r\nHost: 127")
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        slow_w.write(b"GET /slow?s=%.2f HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (timeout * 2))
        idle_s, half_s = await asyncio.gather(closed_after(idle_r), closed_after(half_r))
        slow_head = await asyncio.wait_for(slow_r.readuntil(b"\r\n\r\n"), 60)
        slow_body = await asyncio.wait_for(slow_r.readexactly(4), 30)
        for w in (idle_w, half_w, slow_w):
            w.close()
        return idle_s, half_s, slow_head.startswith(b"HTTP/1.1 200") and slow_body == b"done"
    finally:
        server.stop()
        await server.close_all_connections()


def test_idle_connections_are_closed_after_the_idle_timeout_and_busy_ones_are_not():
    # One sweep closes idle keep-alive connections (Tornado armed a timer for every request).
    idle_s, half_s, slow_answered = asyncio.run(_idle_timeouts(1.0))
    assert 0.5 <= idle_s and 0.5 <= half_s  # not long before the timeout (a sweep runs every 0.25 s)
    assert idle_s < 30 and half_s < 30
    assert slow_answered  # a request in flight is never cut, however long it takes
