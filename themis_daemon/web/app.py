"""The application factory: wires settings, store, monitor, hub and handlers together.

Collaborators are injected so tests (and other embedders) can hand in their own store, clock
or executor and get a real `tornado.web.Application` back.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

import tornado.httputil
import tornado.web

from .. import jsonutil
from ..compute import StatsWorkers
from ..config import Settings, settings_from_kwargs
from ..monitor import Monitor
from ..storage import Sources, open_configured
from . import health, metrics, runs
from .base import NotFoundHandler, Tickets, problem
from .replay import ReplayDelegate, Replays

log = logging.getLogger("themis_daemon")


class BodyCache:
    """A small LRU of encoded response bodies, bounded by total bytes.

    Entries may belong to a group with a version (a run and its version, the list and the
    store generation): a new version drops the group's older entries at once, so bodies nobody
    can ask for again do not sit in memory until the byte bound pushes them out.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._items: "OrderedDict[Any, Tuple]" = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._groups: Dict[Any, Tuple[Any, set]] = {}  # group -> (version, keys)
        self._group_of: Dict[Any, Any] = {}

    def _drop(self, key: Any) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._size -= len(old[0])
        group = self._group_of.pop(key, None)
        if group is not None and group in self._groups:
            self._groups[group][1].discard(key)
            if not self._groups[group][1]:
                del self._groups[group]

    def drop_group(self, group: Any) -> None:
        with self._lock:
            for key in list(self._groups.get(group, (None, ()))[1]):
                self._drop(key)

    def get(self, key: Any) -> Optional[Tuple]:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Any, value: Tuple, group: Any = None, version: Any = None) -> None:
        size = len(value[0])
        if size > self.max_bytes // 4:
            return
        with self._lock:
            if group is not None:
                current = self._groups.get(group)
                if current is not None and current[0] != version:
                    for stale in list(current[1]):
                        self._drop(stale)
                    current = None
                if current is None:
                    self._groups[group] = current = (version, set())
            self._drop(key)
            self._items[key] = value
            self._size += size
            if group is not None:
                current[1].add(key)
                self._group_of[key] = group
            while self._size > self.max_bytes and self._items:
                self._drop(next(iter(self._items)))


class Daemon:
    """Everything a handler needs, in one object stored in the application settings."""

    def __init__(self, settings: Settings, *, store: Optional[Any] = None,
                 executor: Optional[ThreadPoolExecutor] = None, hub: Any = None,
                 clock: Optional[Callable[[], float]] = None):
        self.settings = settings
        if store is None:
            store = open_configured(settings.storage)
        elif not isinstance(store, Sources):
            store = Sources([store])  # a single injected source (tests, embedders)
        self.store: Sources = store
        # One thread for storage refreshes keeps them strictly sequential.
        self.storage_executor = ThreadPoolExecutor(1, thread_name_prefix="themis-storage")
        # Detail rendering and comparisons run here, off the IOLoop.
        self.executor = executor or ThreadPoolExecutor(2, thread_name_prefix="themis-work")
        self.hub = hub
        monitor_kwargs = {"clock": clock} if clock else {}
        self.monitor = Monitor.configured(self.store, self.storage_executor, settings.monitor,
                                          publish=hub.publish if hub is not None else None, **monitor_kwargs)
        self.cache = BodyCache()
        self.stats = StatsWorkers()  # comparisons run there (started with serving, or on first use)
        # A removed run's cached bodies can never be asked for again.
        self.monitor.listeners.append(lambda result: [self.cache.drop_group(("run", r)) for r in result.removed])
        self.api_keys: List[str] = settings.api_keys()
        self.settings_version = 0  # bumps with every reload (answers recorded before are void)
        self.tickets = Tickets()
        self._started = False
        # Set once a stop begins: long jobs (comparisons) check it and give up.
        self.stopping = False
        self.jobs = {"compare_running": 0, "compare_cancelled": 0}

    def ensure_started(self) -> None:
        """Start polling on the running IOLoop; idempotent, called by serve and first requests."""
        if not self._started:
            self._started = True
            self.monitor.start()

    def apply(self, settings: Settings) -> None:
        """Take over reloadable settings (SIGHUP) without dropping connections."""
        keys = settings.api_keys()
        if self.api_keys and not keys:
            log.warning("configuration reload removed every API key: /api and /ws are now open to anyone "
                        "who can reach this daemon")
        self.api_keys = keys
        self.settings = settings
        self.settings_version += 1
        if self.hub is not None:
            self.hub.settings = settings.websocket
        if settings.monitor.poll_interval != self.monitor.poll_interval:
            self.monitor.set_poll_interval(settings.monitor.poll_interval)
        self.monitor.stalled_after = settings.monitor.stalled_after
        self.monitor.stuck_after_polls = settings.monitor.stuck_after_polls

    def close(self) -> None:
        self.stopping = True
        self.stats.close()
        self.monitor.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.storage_executor.shutdown(wait=False, cancel_futures=True)
        self.store.close()


def route_modules() -> List[Any]:
    from . import compare, dashboard, docs, samples, ws

    return [health, runs, compare, samples, ws, metrics, docs, dashboard]


class _BodyLimit(tornado.httputil.HTTPMessageDelegate):
    """Answers 413 as JSON for a body over `server.max_body_size`, so it is never buffered.

    A declared Content-Length is refused from the headers alone; a chunked body is counted as
    it arrives and refused once it passes the limit (the HTTP server's own limit is set far
    above, as it answers a bare 400). After the 413 Tornado closes the connection instead of
    reading the rest of the body.
    """

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate, conn: Any, app: "ThemisApplication"):
        self.inner, self.conn, self.app = inner, conn, app
        self.rejected = False
        self.started = False
        self.received = 0
        self.limit = 0

    def _reject(self, detail: str) -> None:
        self.rejected = True
        body = jsonutil.dumpb(problem(413, detail))
        self.conn.write_headers(
            tornado.httputil.ResponseStartLine("HTTP/1.1", 413, "Payload Too Large"),
            tornado.httputil.HTTPHeaders({"Content-Type": "application/problem+json",
                                          "Content-Length": str(len(body)), "Connection": "close"}),
            body)
        self.conn.finish()

    def headers_received(self, start_line, headers):
        self.limit = limit = self.app.settings["daemon"].settings.server.max_body_size
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            self._reject(f"Request body too large: {length} bytes, the limit is {limit}")
            return None
        self.started = True
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk):
        if self.rejected:
            return None
        self.received += len(chunk)
        if self.received > self.limit:
            self._reject(f"Request body too large: more than {self.limit} bytes (chunked), the limit is {self.limit}")
            return None
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        if not self.rejected:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if self.started:
            self.inner.on_connection_close()


class ThemisApplication(tornado.web.Application):
    def start_request(self, server_conn: object, request_conn: tornado.httputil.HTTPConnection):
        return _BodyLimit(super().start_request(server_conn, request_conn), request_conn, self)

    def find_handler(self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any):
        daemon = self.settings["daemon"]
        hit = daemon.replays.lookup(request)
        if hit is not None:
            return ReplayDelegate(daemon.replays, hit, request, daemon.metrics.access)
        return super().find_handler(request, **kwargs)


def create_app(storage_path: Optional[str] = None, *, store: Optional[Any] = None,
               executor: Optional[ThreadPoolExecutor] = None, clock: Optional[Callable[[], float]] = None,
               **settings: Any) -> tornado.web.Application:
    """A configured Application; `settings` takes a `settings=Settings` object or overrides."""
    tornado_settings = {k: settings.pop(k) for k in ("debug", "autoreload") if k in settings}
    conf = settings_from_kwargs(storage_path, **settings)
    from .ws import Hub

    hub = Hub(conf.websocket)
    daemon = Daemon(conf, store=store, executor=executor, hub=hub, clock=clock)
    daemon.metrics = metrics.Metrics(daemon)
    daemon.replays = Replays(daemon, {"RunsHandler": lambda: runs.RunsHandler.current_token(daemon)})
    handlers: List[Tuple] = []
    for module in route_modules():
        handlers.extend(module.default_handlers)
    app = ThemisApplication(
        handlers,
        daemon=daemon,
        log_function=daemon.metrics.log_request,
        default_handler_class=NotFoundHandler,
        compress_response=True,
        websocket_ping_interval=conf.websocket.ping_interval or None,
        websocket_ping_timeout=conf.websocket.ping_timeout,
        websocket_max_message_size=conf.websocket.max_message_size,
        **tornado_settings,
    )
    return app
