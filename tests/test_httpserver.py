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
