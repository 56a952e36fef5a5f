"""The process layer: sockets, workers, signals, systemd notifications, logging, demo mode."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any, List, Optional

import tornado.httpserver
import tornado.netutil
import tornado.process

from . import systemd
from .config import ConfigError, Settings, load_settings

log = logging.getLogger("themis_daemon")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if not os.environ.get("JOURNAL_STREAM"):
            out["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.json:
        handler.setFormatter(JsonFormatter())
    else:
        # journald stamps every line itself; do not print a second timestamp there.
        fmt = "%(levelname)s %(name)s: %(message)s"
        if not os.environ.get("JOURNAL_STREAM"):
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level.upper())
    logging.getLogger("tornado.access").setLevel(
        settings.logging.level.upper() if settings.logging.access_log else "WARNING")


def demo_root() -> str:
    """A temporary copy of the bundled stores, so the demo never touches package files."""
    from .demo import bundled_stores

    target = tempfile.mkdtemp(prefix="themis-demo-")
    for src in bundled_stores():
        shutil.copytree(os.path.join(src, "experiments"), os.path.join(target, "experiments"), dirs_exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(target):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return target


def bind(settings: Settings) -> List[socket.socket]:
    inherited = systemd.listen_sockets()
    if inherited:
        return inherited
    return tornado.netutil.bind_sockets(settings.server.port, settings.server.host, reuse_port=False)


def run(settings: Settings, *, reload: bool = False, demo: bool = False) -> int:
    setup_logging(settings)
    demo_dir = None
    if demo:
        demo_dir = demo_root()
        settings.storage.path = demo_dir
    root = settings.storage.path
    if not os.path.isdir(root):
        sys.stderr.write(f"themis-daemon: error: storage root not found: {root} "
                         "(pass --storage PATH or set storage.path)\n")
        return 2
    try:
        sockets = bind(settings)
    except OSError as exc:
        where = f"{settings.server.host}:{settings.server.port}"
        if exc.errno == errno.EADDRINUSE:
            msg = f"cannot listen on {where}: address already in use (try --port {settings.server.port + 1})"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            msg = f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
        else:
            msg = f"cannot listen on {where}: {exc.strerror or exc}"
        sys.stderr.write(f"themis-daemon: error: {msg}\n")
        return 1
    if settings.server.workers > 1 and not reload:
        # Each worker gets its own loop, store and monitor; the kernel spreads connections.
        tornado.process.fork_processes(settings.server.workers, max_restarts=100)
    writer = None
    if demo and (tornado.process.task_id() in (None, 0)):
        from .demo.live import DemoWriterThread

        writer = DemoWriterThread(demo_dir)
        writer.start()
    try:
        return asyncio.run(_serve(settings, sockets, reload=reload, demo_dir=demo_dir))
    finally:
        if writer is not None:
            writer.stop()
        if demo_dir and tornado.process.task_id() in (None, 0):
            shutil.rmtree(demo_dir, ignore_errors=True)


async def _serve(settings: Settings, sockets: List[socket.socket], *, reload: bool,
                 demo_dir: Optional[str]) -> int:
    from .web.app import create_app

    app = create_app(settings=settings, autoreload=reload)
    daemon = app.settings["daemon"]
    server = tornado.httpserver.HTTPServer(
        app, xheaders=settings.server.xheaders, max_body_size=settings.server.max_body_size,
        idle_connection_timeout=settings.server.idle_connection_timeout,
    )
    server.add_sockets(sockets)
    addrs = ", ".join("http://%s:%s" % s.getsockname()[:2] for s in sockets if s.family in (socket.AF_INET, socket.AF_INET6))
    log.info("themis-daemon serving %s on %s", settings.storage.path, addrs or "inherited sockets")
    if demo_dir:
        print(f"themis-daemon demo: serving {demo_dir} on {addrs}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def reload_config() -> None:
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}")
        try:
            new = load_settings(settings.config_file)
            # Sockets and the storage root are fixed for the life of the process.
            new.server, new.storage = daemon.settings.server, daemon.settings.storage
            new.api_keys()
            setup_logging(new)
            daemon.apply(new)
            log.info("configuration reloaded from %s", settings.config_file or "defaults/environment")
        except ConfigError as exc:
            log.error("reload failed, keeping the previous configuration: %s", exc)
        systemd.notify("READY=1", "STATUS=serving")

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_config)

    daemon.ensure_started()
    await daemon.monitor.refresh()
    systemd.notify("READY=1", f"STATUS=serving {len(daemon.store.run_ids())} runs", f"MAINPID={os.getpid()}")
    watchdog = systemd.watchdog_interval()
    watchdog_task = asyncio.ensure_future(_watchdog(watchdog)) if watchdog else None

    await stop.wait()
    log.info("shutting down")
    systemd.notify("STOPPING=1")
    server.stop()
    daemon.hub.close_all()
    deadline = time.monotonic() + settings.server.drain_timeout
    try:
        await asyncio.wait_for(server.close_all_connections(), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        log.warning("drain timeout: closing remaining connections")
    if watchdog_task:
        watchdog_task.cancel()
    daemon.close()
    return 0


async def _watchdog(interval: float) -> None:
    # Sent from the IOLoop on purpose: if the loop wedges, the pings stop and systemd restarts us.
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
