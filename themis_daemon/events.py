"""One poller for `--workers N`: run events numbered once, handed to every worker alike.

With several workers each one would otherwise poll the storage and number events on its own,
so `seq` and `since` replay would depend on which worker a reconnect lands on. The supervisor
starts one poller process: it polls, diffs and numbers events exactly as a single process does,
and streams them (JSON lines) over a private Unix socket to every worker, which publishes them
with their `seq` unchanged. A worker that connects, or reconnects, first gets the poller's
replay buffer, so every worker holds the same events and answers `since` alike.

The poller's numbering starts at the wall clock in milliseconds (unless the store numbers events
itself, see monitor.positional_seq), so numbers keep growing across a restart of the poller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
from collections import deque
from typing import Any, Deque, Dict, Optional, Set

import tornado.iostream
import tornado.tcpserver

from . import jsonutil

log = logging.getLogger("themis_daemon.events")

MAX_LINE = 64 * 1024 * 1024


def _unix_socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)


def _abstract(name: str) -> str:
    return "\0" + name.lstrip("@")


class EventServer(tornado.tcpserver.TCPServer):
    """In the poller: keeps the newest events and streams them to every connected worker."""

    def __init__(self, buffer_size: int):
        super().__init__()
        self.buffer: Deque[bytes] = deque(maxlen=max(buffer_size, 1))
        self.streams: Set[tornado.iostream.IOStream] = set()

    def listen_on(self, name: str) -> None:
        sock = _unix_socket()
        sock.bind(_abstract(name))
        sock.listen(64)
        sock.setblocking(False)
        self.add_socket(sock)

    def broadcast(self, event: Dict[str, Any]) -> None:
        line = jsonutil.dumpb(event) + b"\n"
        self.buffer.append(line)
        for stream in list(self.streams):
            try:
                stream.write(line)
            except tornado.iostream.StreamClosedError:
                self.streams.discard(stream)

    async def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        backlog = b"".join(self.buffer)
        self.streams.add(stream)
        try:
            if backlog:
                stream.write(backlog)
            await stream.read_until_close()  # workers never send anything; wait for the close
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self.streams.discard(stream)


class EventFeed:
    """In a worker: follows the poller and publishes its events into the worker's hub."""

    def __init__(self, name: str, hub: Any):
        self.name = name
        self.hub = hub
        self.connected = False
        self.received = 0
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            stream = tornado.iostream.IOStream(_unix_socket(), max_buffer_size=MAX_LINE)
            try:
                await stream.connect(_abstract(self.name))
                self.connected = True
                delay = 0.05
                while True:
                    line = await stream.read_until(b"\n", max_bytes=MAX_LINE)
                    self._publish(json.loads(line))
            except (tornado.iostream.StreamClosedError, OSError, ValueError) as exc:
                if self.connected:
                    log.warning("lost the event stream of the poller (%s); reconnecting", exc)
            finally:
                self.connected = False
                stream.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _publish(self, event: Dict[str, Any]) -> None:
        seq = event.get("seq")
        if not isinstance(seq, int) or seq <= self.hub.seq:
            return  # replayed on a reconnect: this worker has it already
        self.received += 1
        self.hub.publish(event)


# ------------------------------------------------------------------------------ the poller process

def run_poller(settings: Any, name: str) -> int:
    """The poller process of `--workers N`: polls the storage, numbers events, streams them."""
    return asyncio.run(_poll(settings, name))


async def _poll(settings: Any, name: str) -> int:
    from .monitor import Monitor
    from .storage import open_configured
    from .web.ws import Hub

    store = open_configured(settings.storage, serves_details=False)  # it never builds a detail
    server = EventServer(settings.websocket.replay_buffer)
    hub = Hub(settings.websocket)
    if not store.positional:
        hub.seq = int(time.time() * 1000)

    def publish(event: Dict[str, Any]) -> None:
        server.broadcast(hub.publish(event))

    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(1, thread_name_prefix="themis-storage")
    monitor = Monitor.configured(store, executor, settings.monitor, publish=publish)
    server.listen_on(name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        from .config import ConfigError
        from .server import reload_settings

        try:
            new = reload_settings(settings, None)
        except ConfigError as exc:
            log.error("poller: reload failed, keeping the previous configuration: %s", exc)
            return
        monitor.stalled_after = new.monitor.stalled_after
        monitor.stuck_after_polls = new.monitor.stuck_after_polls
        if new.monitor.poll_interval != monitor.poll_interval:
            monitor.set_poll_interval(new.monitor.poll_interval)

    loop.add_signal_handler(signal.SIGHUP, reload)
    monitor.start()
    log.info("poller: polling %d store(s) for %s", len(store.sources), name)
    await stop.wait()
    monitor.stop()
    server.stop()
    executor.shutdown(wait=False, cancel_futures=True)
    store.close()
    return 0
