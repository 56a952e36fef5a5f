"""The process layer: sockets, signals, systemd notifications, demo mode.

One process (`--workers 1`, the default) binds its sockets (or takes them from systemd socket
activation), starts serving, scans the storage once and then tells systemd `READY=1`. With
`--workers N` the main process binds the sockets and hands them to the Supervisor
(supervisor.py), whose workers each run `_run_worker`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.process

from . import systemd
from .config import ConfigError, Settings, load_settings, unknown_environment
from .httpserver import DrainingHTTPServer
from .logs import setup_logging

log = logging.getLogger("themis_daemon")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SWITCH_INTERVAL = 0.0005  # seconds
BODY_LIMIT_BACKSTOP = 1 << 40  # the HTTP server's own limit; the real one is checked by the application


# ------------------------------------------------------------------------------------ demo mode

def demo_root() -> str:
    """A temporary copy of the bundled stores, so the demo never touches package files:
    `themis1/` (Themis 1.x runs) and `themis4/themis.sqlite3` (Themis 4 runs)."""
    from .demo import bundled_stores, bundled_v4_sqlite

    target = tempfile.mkdtemp(prefix="themis-demo-")
    v1 = os.path.join(target, "themis1")
    for src in bundled_stores():
        shutil.copytree(os.path.join(src, "experiments"), os.path.join(v1, "experiments"), dirs_exist_ok=True)
    os.makedirs(os.path.join(target, "themis4"))
    shutil.copyfile(bundled_v4_sqlite(), demo_v4_store(target))
    for dirpath, dirnames, filenames in os.walk(target):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return target


def demo_v4_store(demo_dir: str) -> str:
    return os.path.join(demo_dir, "themis4", "themis.sqlite3")


def demo_sources(demo_dir: str) -> List[Any]:
    return [{"path": os.path.join(demo_dir, "themis1"), "name": "demo-themis1"},
            {"path": demo_v4_store(demo_dir), "name": "demo-themis4"}]


# -------------------------------------------------------------------------------------- sockets

def bind(settings: Settings) -> List[socket.socket]:
    inherited = systemd.listen_sockets()
    if inherited:
        return inherited
    return tornado.netutil.bind_sockets(settings.server.port, settings.server.host, reuse_port=False)


def describe_sockets(sockets: List[socket.socket]) -> str:
    out = []
    for s in sockets:
        if s.family == socket.AF_INET:
            out.append("http://%s:%s" % s.getsockname()[:2])
        elif s.family == socket.AF_INET6:
            out.append("http://[%s]:%s" % s.getsockname()[:2])
        elif s.family == socket.AF_UNIX:
            out.append("unix:%s" % (s.getsockname() or "?"))
    return ", ".join(out) or "inherited sockets"


def dashboard_url(sockets: List[socket.socket]) -> Optional[str]:
    """Where a browser finds the dashboard: the first TCP socket (a wildcard address as loopback)."""
    for s in sockets:
        if s.family in (socket.AF_INET, socket.AF_INET6):
            host, port = s.getsockname()[:2]
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1" if s.family == socket.AF_INET else "::1"
            return f"http://{'[%s]' % host if ':' in host else host}:{port}/dashboard/"
    return None


def _bind_error(settings: Settings, exc: OSError) -> str:
    where = f"{settings.server.host}:{settings.server.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use (try --port {settings.server.port + 1})"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: address not available on this machine"
    return f"cannot listen on {where}: {exc.strerror or exc}"


# ---------------------------------------------------------------------------------- reloading

def cli_overrides(settings: Settings) -> Dict[str, Any]:
    """What the command line changed, recovered as the difference to the file+env layers.

    Used when the caller did not hand the overrides in, so a SIGHUP reload keeps flags such as
    `--log-level` or `--poll-interval` instead of silently falling back to the file's values.
    """
    try:
        base = load_settings(settings.config_file).as_dict()
    except ConfigError:
        return {}
    out: Dict[str, Any] = {}
    for section, values in settings.as_dict().items():
        if isinstance(values, dict):
            for key, value in values.items():
                if base.get(section, {}).get(key) != value:
                    out.setdefault(section, {})[key] = value
        elif base.get(section) != values:
            out[section] = values
    return out


_early_reload = threading.Event()


def _remember_reload(signum: int, frame: Any) -> None:
    """SIGHUP before the event loop handles it (the sockets may already accept): keep it."""
    _early_reload.set()


def storage_label(settings: Settings) -> str:
    """The configured stores as they may be logged: URLs without passwords."""
    from .storage.themis4.reader import redact_url

    out = []
    for spec in settings.storage.specs():
        location = spec.get("url") or spec.get("path") if isinstance(spec, dict) else spec
        out.append(redact_url(str(location)))
    return ", ".join(out)


def check_storage(settings: Settings) -> Optional[str]:
    """Open every configured store once; the one-line reason the first one is unusable."""
    from .storage import NotAStore, open_sources

    try:
        sources = open_sources(settings.storage.specs(), password_file=settings.storage.password_file)
    except NotAStore as exc:
        return str(exc)
    sources.close()
    return None


def reload_settings(current: Settings, overrides: Optional[Dict[str, Any]]) -> Settings:
    """Settings re-read from the config file and environment; raises ConfigError."""
    new = load_settings(current.config_file, overrides=overrides or None)
    # Sockets, workers and the storage root are fixed for the life of the process.
    new.server = dataclasses.replace(current.server)
    new.storage = dataclasses.replace(current.storage)
    new.api_keys()  # unreadable key files are a configuration error too
    return new


# ------------------------------------------------------------------------------ one process

def run(settings: Settings, *, reload: bool = False, demo: bool = False,
        overrides: Optional[Dict[str, Any]] = None) -> int:
    """Serve until SIGTERM/SIGINT; the process exit status.

    `overrides` are the command-line settings, re-applied over the config file on SIGHUP.
    """
    setup_logging(settings)
    try:  # until the handlers are installed, a reload request must not kill the process
        signal.signal(signal.SIGHUP, _remember_reload)
    except ValueError:  # not the main thread: the embedding program owns signals
        pass
    for warning in unknown_environment(os.environ):
        log.warning("%s", warning)
    demo_dir = None
    try:  # the demo's temporary copy goes away however start-up ends
        if demo:
            demo_dir = demo_root()
            settings.storage.path = None
            settings.storage.url = None
            settings.storage.sources = demo_sources(demo_dir)
        problem = check_storage(settings)
        if problem:
            sys.stderr.write(f"themis-daemon: error: {problem}\n")
            return 2
        try:
            sockets = bind(settings)
        except OSError as exc:
            sys.stderr.write(f"themis-daemon: error: {_bind_error(settings, exc)}\n")
            return 1
        if overrides is None:
            overrides = cli_overrides(settings)
        if settings.server.workers > 1 and not reload:
            from .supervisor import Supervisor

            return Supervisor(settings, sockets, overrides=overrides, demo_dir=demo_dir).run()
        if settings.server.workers > 1:
            log.warning("--reload runs a single process; ignoring workers=%d", settings.server.workers)
        return _run_worker(settings, sockets, reload=reload, demo_dir=demo_dir, overrides=overrides,
                           writer=demo)
    finally:
        if demo_dir:
            shutil.rmtree(demo_dir, ignore_errors=True)


def _run_worker(settings: Settings, sockets: List[socket.socket], *, reload: bool = False,
                demo_dir: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
                writer: bool = False, events: Optional[str] = None) -> int:
    demo_writers: List[Any] = []
    if writer and demo_dir:
        from .demo.live import DemoWriterThread
        from .demo.live4 import Themis4DemoThread

        demo_writers = [DemoWriterThread(os.path.join(demo_dir, "themis1")), Themis4DemoThread(demo_v4_store(demo_dir))]

    def start_writers() -> None:  # once the first log line has said where the dashboard is
        for thread in demo_writers:
            thread.start()

    try:
        code = asyncio.run(_serve(settings, sockets, reload=reload, demo_dir=demo_dir, overrides=overrides,
                                  on_serving=start_writers, events=events))
    finally:
        for thread in demo_writers:
            if thread.is_alive():
                thread.stop()
    _abandon_running_work(code)
    return code


def _abandon_running_work(code: int) -> None:
    """Exit now if work threads (a long comparison, a big detail) outlived the drain.

    Their clients are gone with the drain, and threads cannot be interrupted: waiting for them
    (as the interpreter's exit would) made a stop take as long as the longest job, beyond
    `drain_timeout` and the unit's TimeoutStopSec."""
    deadline = time.monotonic() + 0.5  # idle pool threads are just finishing: let them
    busy = [t for t in threading.enumerate()
            if t is not threading.main_thread() and not t.daemon and t.name.startswith(("themis-work", "themis-storage"))]
    for thread in busy:
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in busy if t.is_alive()]
    if not busy:
        return
    log.warning("exiting with %d job(s) still running after the drain; their answers were cut off", len(busy))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _serve(settings: Settings, sockets: List[socket.socket], *, reload: bool,
                 demo_dir: Optional[str], overrides: Optional[Dict[str, Any]] = None,
                 on_serving: Optional[Any] = None, events: Optional[str] = None) -> int:
    from .web.app import create_app

    # Work threads (details, comparisons, storage polls) hand the GIL over at this interval:
    # the default 5 ms, times a few busy threads, made each request on the loop wait tens of
    # milliseconds whenever they were busy.
    sys.setswitchinterval(SWITCH_INTERVAL)
    app = create_app(settings=settings, autoreload=reload)
    daemon = app.settings["daemon"]
    feed = None
    if events:
        # Under a supervisor: run events come from its one poller, numbered once for every
        # worker; this worker's own polls only keep its state for REST current.
        from .events import EventFeed

        daemon.monitor.publish = None
        feed = EventFeed(events, daemon.hub)
        feed.start()
    server = DrainingHTTPServer(
        # The body limit is the application's (a JSON 413, also for chunked bodies; app.py).
        app, xheaders=settings.server.xheaders, max_body_size=BODY_LIMIT_BACKSTOP,
        idle_connection_timeout=settings.server.idle_connection_timeout,
    )
    addrs = describe_sockets(sockets)
    worker = tornado.process.task_id()
    who = "" if worker is None else f"worker {worker}: "

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def status_line() -> str:
        return f"serving {len(daemon.store.run_ids())} runs from {storage_label(settings)} on {addrs}"

    def reload_config() -> None:
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}", "STATUS=reloading configuration")
        status = status_line()
        try:
            new = reload_settings(daemon.settings, overrides)
            setup_logging(new)
            daemon.apply(new)
            log.info("%sconfiguration reloaded from %s", who, new.config_file or "the environment")
        except ConfigError as exc:
            log.error("%sreload failed, keeping the previous configuration: %s", who, exc)
            status += " (last reload failed)"
        except Exception as exc:  # never let a reload take the daemon down
            log.error("%sreload failed, keeping the previous configuration: %s: %s", who, type(exc).__name__, exc)
            status += " (last reload failed)"
        systemd.notify("READY=1", f"STATUS={status}")

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_config)
    if _early_reload.is_set():  # asked for while starting up: do it now rather than drop it
        _early_reload.clear()
        loop.call_soon(reload_config)

    # Serve (and say so) only once the signal handlers are in place.
    server.add_sockets(sockets)
    dashboard = dashboard_url(sockets)
    if demo_dir:
        log.info("themis-daemon %sdemo: open %s (demo stores on %s, a temporary copy in %s)",
                 "" if worker is None else f"worker {worker} ", dashboard or "the dashboard", addrs, demo_dir)
    else:
        log.info("themis-daemon %sserving %s on %s%s", "" if worker is None else f"worker {worker} ",
                 storage_label(settings), addrs, f"; dashboard: {dashboard}" if dashboard else "")
    if demo_dir and worker in (None, 0):
        print(f"themis-daemon demo: open {dashboard or addrs} in a browser", flush=True)
    if on_serving is not None:
        on_serving()

    # READY=1 only once the sockets listen and the first storage scan is done; a big store may
    # take long to scan, so keep extending systemd's start timeout meanwhile.
    systemd.notify(f"STATUS=scanning {storage_label(settings)}")
    daemon.ensure_started()
    first_scan = asyncio.ensure_future(daemon.monitor.refresh())
    stopped = asyncio.ensure_future(stop.wait())
    while not first_scan.done() and not stop.is_set():
        await asyncio.wait([first_scan, stopped], timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
        if not first_scan.done():
            systemd.notify("EXTEND_TIMEOUT_USEC=30000000")
    if first_scan.done() and first_scan.exception() is not None:
        log.error("%sfirst storage scan failed: %s", who, first_scan.exception())
    # The statistics stack takes seconds to load: its process loads it now, rather than inside
    # the first comparison (and never in this process).
    daemon.stats.start()
    watchdog_task = None
    if not stop.is_set():
        systemd.notify("READY=1", f"STATUS={status_line()}")
        interval = systemd.watchdog_interval()
        if interval:
            watchdog_task = asyncio.ensure_future(_watchdog(interval))

    await stop.wait()
    log.info("%sshutting down: draining connections (up to %.1f s)", who, settings.server.drain_timeout)
    systemd.notify("STOPPING=1", "STATUS=draining connections")
    # Handlers are replaced, never removed: a removed one would fall back to the default
    # action (terminate) for a signal arriving a moment later.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # no reloads while draining
    for sig in STOP_SIGNALS:
        if worker is None:
            # A second SIGINT/SIGTERM during the drain means "now". Workers ignore repeats:
            # Ctrl-C reaches them directly and via the main process, which alone may force.
            loop.add_signal_handler(sig, lambda: os._exit(1))
        else:
            loop.add_signal_handler(sig, lambda: None)
    # WebSocket clients get close code 1001 (going away); their close handshakes and the
    # in-flight HTTP requests share the drain time.
    daemon.hub.close_all()
    cut = await server.drain(settings.server.drain_timeout, extra_busy=lambda: len(daemon.hub.clients))
    if cut:
        log.warning("%sdrain timeout: %d request(s) cut off", who, cut)
    if watchdog_task:
        watchdog_task.cancel()
    if not first_scan.done():
        first_scan.cancel()
    stopped.cancel()
    if feed is not None:
        feed.stop()
    daemon.close()
    log.info("%sstopped", who)
    return 0


async def _watchdog(interval: float) -> None:
    # Sent from the IOLoop on purpose: if the loop wedges, the pings stop and systemd restarts us.
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)

