"""The process layer: sockets, workers, signals, systemd notifications, logging, demo mode.

One process (`--workers 1`, the default) binds its sockets (or takes them from systemd socket
activation), starts serving, scans the storage once and then tells systemd `READY=1`.

With `--workers N` the main process binds the sockets, forks N workers that share them and
supervises them: it forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that dies, and is the only
process that talks to systemd (`NotifyAccess=main`). Workers report to the main process with
the same sd_notify datagrams, on a private socket: the main process says `READY=1` once every
worker is ready, and `READY=1` again after a reload once every worker has reloaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Set

import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.process

from . import systemd
from .config import ConfigError, Settings, load_settings

log = logging.getLogger("themis_daemon")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# --------------------------------------------------------------------------------------- logging

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


# ------------------------------------------------------------------------------------ demo mode

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


def reload_settings(current: Settings, overrides: Optional[Dict[str, Any]]) -> Settings:
    """Settings re-read from the config file and environment; raises ConfigError."""
    new = load_settings(current.config_file, overrides=overrides or None)
    # Sockets, workers and the storage root are fixed for the life of the process.
    new.server = dataclasses.replace(current.server)
    new.storage = dataclasses.replace(current.storage)
    new.api_keys()  # unreadable key files are a configuration error too
    return new


# ------------------------------------------------------------------------ draining HTTP server

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
        self.conns: Set[object] = set()
        self.busy: Set[object] = set()
        self.draining = False

    def start_request(self, server_conn, request_conn):
        self.conns.add(server_conn)
        self.busy.discard(server_conn)  # the previous response on it is complete
        if self.draining:
            # No further keep-alive requests once the drain started: close before reading.
            request_conn.close()
        return _TrackingDelegate(super().start_request(server_conn, request_conn), self, server_conn)

    def on_close(self, server_conn) -> None:
        self.conns.discard(server_conn)
        self.busy.discard(server_conn)
        super().on_close(server_conn)

    async def drain(self, timeout: float, extra_busy=lambda: 0) -> int:
        """Stop accepting, finish in-flight requests within `timeout`; the number cut off."""
        self.stop()
        self.draining = True
        for conn in list(self.conns - self.busy):
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


# ------------------------------------------------------------------------------ one process

def run(settings: Settings, *, reload: bool = False, demo: bool = False,
        overrides: Optional[Dict[str, Any]] = None) -> int:
    """Serve until SIGTERM/SIGINT; the process exit status.

    `overrides` are the command-line settings, re-applied over the config file on SIGHUP.
    """
    setup_logging(settings)
    try:  # until the handlers are installed, a reload request must not kill the process
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    except ValueError:  # not the main thread: the embedding program owns signals
        pass
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
        sys.stderr.write(f"themis-daemon: error: {_bind_error(settings, exc)}\n")
        return 1
    if overrides is None:
        overrides = cli_overrides(settings)
    try:
        if settings.server.workers > 1 and not reload:
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
                writer: bool = False) -> int:
    demo_writer = None
    if writer and demo_dir:
        from .demo.live import DemoWriterThread

        demo_writer = DemoWriterThread(demo_dir)
        demo_writer.start()
    try:
        return asyncio.run(_serve(settings, sockets, reload=reload, demo_dir=demo_dir, overrides=overrides))
    finally:
        if demo_writer is not None:
            demo_writer.stop()


async def _serve(settings: Settings, sockets: List[socket.socket], *, reload: bool,
                 demo_dir: Optional[str], overrides: Optional[Dict[str, Any]] = None) -> int:
    from .web.app import create_app

    app = create_app(settings=settings, autoreload=reload)
    daemon = app.settings["daemon"]
    server = DrainingHTTPServer(
        app, xheaders=settings.server.xheaders, max_body_size=settings.server.max_body_size,
        idle_connection_timeout=settings.server.idle_connection_timeout,
    )
    addrs = describe_sockets(sockets)
    worker = tornado.process.task_id()
    who = "" if worker is None else f"worker {worker}: "

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def status_line() -> str:
        return f"serving {len(daemon.store.run_ids())} runs from {settings.storage.path} on {addrs}"

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

    # Serve (and say so) only once the signal handlers are in place.
    server.add_sockets(sockets)
    log.info("themis-daemon %sserving %s on %s", "" if worker is None else f"worker {worker} ",
             settings.storage.path, addrs)
    if demo_dir and worker in (None, 0):
        print(f"themis-daemon demo: serving {demo_dir} on {addrs}", flush=True)

    # READY=1 only once the sockets listen and the first storage scan is done; a big store may
    # take long to scan, so keep extending systemd's start timeout meanwhile.
    systemd.notify(f"STATUS=scanning {settings.storage.path}")
    daemon.ensure_started()
    first_scan = asyncio.ensure_future(daemon.monitor.refresh())
    stopped = asyncio.ensure_future(stop.wait())
    while not first_scan.done() and not stop.is_set():
        await asyncio.wait([first_scan, stopped], timeout=10.0, return_when=asyncio.FIRST_COMPLETED)
        if not first_scan.done():
            systemd.notify("EXTEND_TIMEOUT_USEC=30000000")
    if first_scan.done() and first_scan.exception() is not None:
        log.error("%sfirst storage scan failed: %s", who, first_scan.exception())
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
    daemon.close()
    log.info("%sstopped", who)
    return 0


async def _watchdog(interval: float) -> None:
    # Sent from the IOLoop on purpose: if the loop wedges, the pings stop and systemd restarts us.
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


# -------------------------------------------------------------------------------- supervisor

def _set_parent_death_signal(sig: int) -> None:
    """Best effort (Linux): this worker gets `sig` if the main process dies without stopping it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclasses.dataclass
class _Worker:
    index: int
    pid: int
    started: float
    ready: bool = False
    last_ping: float = 0.0
    reloading: bool = False


class Supervisor:
    """The main process of `--workers N`: forks, watches and stops the workers.

    Workers send their sd_notify lines (READY=1, WATCHDOG=1, STATUS=...) to a private datagram
    socket of the main process, identified by their pid (SO_PASSCRED); the main process alone
    speaks to systemd, which fits `NotifyAccess=main`.
    """

    MAX_RESTARTS = 5        # restarts within RESTART_WINDOW seconds before giving up
    RESTART_WINDOW = 30.0
    RELOAD_TIMEOUT = 30.0

    def __init__(self, settings: Settings, sockets: List[socket.socket], *,
                 overrides: Optional[Dict[str, Any]] = None, demo_dir: Optional[str] = None):
        self.settings = settings
        self.sockets = sockets
        self.overrides = overrides
        self.demo_dir = demo_dir
        self.count = settings.server.workers
        self.workers: Dict[int, _Worker] = {}
        self.stopping = False
        self.stop_started = 0.0
        self.stop_deadline = 0.0
        self.ready_sent = False
        self.reload_started: Optional[float] = None
        self.restarts: List[float] = []
        self.failed = False
        self.pending_signals: List[int] = []
        self.addrs = describe_sockets(sockets)
        self.watchdog = systemd.watchdog_interval()
        self.last_watchdog = 0.0

    # ---------------------------------------------------------------- worker side

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid:
            self.workers[pid] = _Worker(index, pid, time.monotonic())
            return
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in STOP_SIGNALS + (signal.SIGCHLD,):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
            self.selector.close()
            self.channel.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            _set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != self.main_pid:  # the main process died before prctl
                os._exit(1)
            os.environ["NOTIFY_SOCKET"] = self.channel_name
            os.environ.pop("WATCHDOG_PID", None)
            if not self.watchdog:
                os.environ.pop("WATCHDOG_USEC", None)
            for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(key, None)
            tornado.process._task_id = index  # so tornado.process.task_id() names the worker
            code = _run_worker(self.settings, self.sockets, demo_dir=self.demo_dir,
                               overrides=self.overrides, writer=index == 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d crashed", index)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    # ------------------------------------------------------------------ main side

    def run(self) -> int:
        self.main_pid = os.getpid()
        self.channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.channel_name = f"@themis-daemon-{self.main_pid}-{secrets.token_hex(8)}"
        self.channel.bind("\0" + self.channel_name[1:])
        self.channel.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.channel.setblocking(False)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.channel, selectors.EVENT_READ, "notify")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        old_wakeup = signal.set_wakeup_fd(self.wake_w)
        handled = STOP_SIGNALS + (signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        log.info("themis-daemon main process %d starting %d workers on %s", self.main_pid, self.count, self.addrs)
        systemd.notify(f"STATUS=starting {self.count} workers")
        try:
            self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.selector.close()
            self.channel.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            for sock in self.sockets:
                sock.close()
        log.info("all workers stopped")
        return 1 if self.failed else 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.pending_signals.append(signum)

    def _loop(self) -> None:
        while True:
            self._handle_signals()
            self._reap()
            if self.stopping:
                if not self.workers:
                    return
                if time.monotonic() > self.stop_deadline:
                    for pid in list(self.workers):
                        log.error("worker pid %d did not stop in time; killing it", pid)
                        self._kill(pid, signal.SIGKILL)
                    self.stop_deadline = time.monotonic() + 5.0
            else:
                running = {w.index for w in self.workers.values()}
                for index in range(self.count):
                    if index not in running:
                        self._spawn(index)
            self._check_ready()
            self._tick_watchdog()
            for key, _ in self.selector.select(min(0.25, self.watchdog or 0.25)):
                if key.data == "wake":
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                else:
                    self._read_channel()

    def _handle_signals(self) -> None:
        while self.pending_signals:
            sig = self.pending_signals.pop(0)
            if sig in STOP_SIGNALS:
                now = time.monotonic()
                if not self.stopping:
                    log.info("shutting down: stopping %d workers", len(self.workers))
                    systemd.notify("STOPPING=1", "STATUS=stopping workers")
                    self.stopping = True
                    self.stop_started = now
                    self.stop_deadline = now + self.settings.server.drain_timeout + 5.0
                    for sock in self.sockets:  # connections now get refused, not queued
                        sock.close()
                    for pid in list(self.workers):
                        self._kill(pid, signal.SIGTERM)
                elif now - self.stop_started > 1.0:
                    # Asked again (a second Ctrl-C): do not wait for the drain.
                    log.warning("stopping now: killing %d workers", len(self.workers))
                    self.failed = True
                    for pid in list(self.workers):
                        self._kill(pid, signal.SIGKILL)
            elif sig == signal.SIGHUP and not self.stopping:
                self._reload()

    def _reload(self) -> None:
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={systemd.monotonic_usec()}", "STATUS=reloading configuration")
        try:
            new = reload_settings(self.settings, self.overrides)
        except ConfigError as exc:
            # Checked once here, so N workers do not log the same error N times.
            log.error("reload failed, keeping the previous configuration: %s", exc)
            systemd.notify("READY=1", f"STATUS={self._status()} (last reload failed)")
            return
        setup_logging(new)
        self.settings = new
        log.info("configuration reloaded from %s; reloading %d workers", new.config_file or "the environment",
                 len(self.workers))
        self.reload_started = time.monotonic()
        for pid, worker in list(self.workers.items()):
            worker.reloading = True
            self._kill(pid, signal.SIGHUP)

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            what = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
            if self.stopping:
                if code != 0:
                    log.warning("worker %d (pid %d) stopped with %s", worker.index, pid, what)
                continue
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < self.RESTART_WINDOW] + [now]
            if len(self.restarts) > self.MAX_RESTARTS:
                log.error("worker %d (pid %d) exited with %s; %d restarts in %.0f s, giving up",
                          worker.index, pid, what, len(self.restarts) - 1, self.RESTART_WINDOW)
                self.failed = True
                self.pending_signals.append(signal.SIGTERM)
                continue
            log.error("worker %d (pid %d) exited with %s; restarting it", worker.index, pid, what)

    def _read_channel(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self.channel.recvmsg(4096, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    pid = struct.unpack("iII", payload[:12])[0]
            worker = self.workers.get(pid) if pid is not None else None
            if worker is None:
                continue  # only our own workers may speak here
            fields = dict(line.split("=", 1) for line in data.decode("utf-8", "replace").splitlines() if "=" in line)
            now = time.monotonic()
            if fields.get("WATCHDOG") == "1":
                worker.last_ping = now
            if fields.get("READY") == "1":
                worker.ready = True
                worker.reloading = False
                worker.last_ping = now
            if fields.get("STATUS"):
                log.debug("worker %d: %s", worker.index, fields["STATUS"])

    def _status(self) -> str:
        ready = sum(1 for w in self.workers.values() if w.ready)
        return f"serving {self.settings.storage.path} on {self.addrs} with {ready}/{self.count} workers ready"

    def _check_ready(self) -> None:
        if self.stopping:
            return
        workers = list(self.workers.values())
        if not self.ready_sent:
            if len(workers) == self.count and all(w.ready for w in workers):
                self.ready_sent = True
                log.info("all %d workers ready", self.count)
                systemd.notify("READY=1", f"STATUS={self._status()}")
        elif self.reload_started is not None:
            late = time.monotonic() - self.reload_started > self.RELOAD_TIMEOUT
            if late or not any(w.reloading for w in workers):
                if late:
                    log.warning("workers did not confirm the reload within %.0f s", self.RELOAD_TIMEOUT)
                self.reload_started = None
                systemd.notify("READY=1", f"STATUS={self._status()}")

    def _tick_watchdog(self) -> None:
        if not self.watchdog:
            return
        now = time.monotonic()
        if now - self.last_watchdog >= self.watchdog:
            self.last_watchdog = now
            systemd.notify("WATCHDOG=1")
        if self.stopping:
            return
        # A worker whose IOLoop stopped pinging for a whole watchdog period is wedged: replace
        # it, rather than letting systemd restart every worker.
        for pid, worker in list(self.workers.items()):
            if worker.ready and now - worker.last_ping > 2 * self.watchdog:
                log.error("worker %d (pid %d) missed its watchdog pings; killing it", worker.index, pid)
                worker.ready = False
                self._kill(pid, signal.SIGKILL)
