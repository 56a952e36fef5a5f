"""The main process of `--workers N`: forks workers sharing the sockets and supervises them.

It forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that dies, and is the only process that
talks to systemd (`NotifyAccess=main`). Workers report to it with the same sd_notify datagrams
on a private socket: it says `READY=1` once every worker is ready, and again after a reload
once every worker has reloaded.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any, Dict, List, Optional

import tornado.process

from . import systemd
from .config import ConfigError, Settings
from .logs import setup_logging
from .server import STOP_SIGNALS, _remember_reload, _run_worker, describe_sockets, reload_settings

log = logging.getLogger("themis_daemon")


def _set_process_name(name: bytes) -> None:
    """Best effort (Linux): the name `ps` and /proc/PID/comm show, so the poller stands out."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


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
        self.poller_pid: Optional[int] = None
        self.events_name = ""

    # ---------------------------------------------------------------- worker side

    def _child_setup(self) -> None:
        """In a freshly forked child: default signals, none of the main process' descriptors."""
        signal.set_wakeup_fd(-1)
        for sig in STOP_SIGNALS + (signal.SIGCHLD,):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, _remember_reload)
        self.selector.close()
        self.channel.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != self.main_pid:  # the main process died before prctl
            os._exit(1)

    def _spawn_poller(self) -> None:
        """The one process that polls the storage and numbers run events for every worker."""
        pid = os.fork()
        if pid:
            self.poller_pid = pid
            return
        code = 1
        try:
            self._child_setup()
            _set_process_name(b"themis-poller")
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its loop handles reloads
            for sock in self.sockets:
                sock.close()
            from .events import run_poller

            code = run_poller(self.settings, self.events_name)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("the event poller crashed")
        finally:
            _exit_child(code)

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid:
            self.workers[pid] = _Worker(index, pid, time.monotonic())
            return
        code = 1
        try:
            self._child_setup()  # SIGHUP is remembered, and applied once the worker's loop handles it
            os.environ["NOTIFY_SOCKET"] = self.channel_name
            os.environ.pop("WATCHDOG_PID", None)
            if not self.watchdog:
                os.environ.pop("WATCHDOG_USEC", None)
            for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(key, None)
            tornado.process._task_id = index  # so tornado.process.task_id() names the worker
            code = _run_worker(self.settings, self.sockets, demo_dir=self.demo_dir,
                               overrides=self.overrides, writer=index == 0, events=self.events_name)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d crashed", index)
        finally:
            _exit_child(code)

    # ------------------------------------------------------------------ main side

    def run(self) -> int:
        self.main_pid = os.getpid()
        self.channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.channel_name = f"@themis-daemon-{self.main_pid}-{secrets.token_hex(8)}"
        self.channel.bind("\0" + self.channel_name[1:])
        self.channel.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.channel.setblocking(False)
        self.events_name = f"@themis-daemon-{self.main_pid}-events-{secrets.token_hex(8)}"
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
                if not self.workers and self.poller_pid is None:
                    return
                if time.monotonic() > self.stop_deadline:
                    for pid in list(self.workers) + ([self.poller_pid] if self.poller_pid else []):
                        log.error("process %d did not stop in time; killing it", pid)
                        self._kill(pid, signal.SIGKILL)
                    self.stop_deadline = time.monotonic() + 5.0
            else:
                if self.poller_pid is None:
                    self._spawn_poller()
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
                    for pid in list(self.workers) + ([self.poller_pid] if self.poller_pid else []):
                        self._kill(pid, signal.SIGTERM)
                elif now - self.stop_started > 1.0:
                    # Asked again (a second Ctrl-C): do not wait for the drain.
                    log.warning("stopping now: killing %d workers", len(self.workers))
                    self.failed = True
                    for pid in list(self.workers) + ([self.poller_pid] if self.poller_pid else []):
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
        if self.poller_pid is not None:
            self._kill(self.poller_pid, signal.SIGHUP)
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
            if pid == self.poller_pid:
                self.poller_pid = None
                if not self.stopping:
                    code = os.waitstatus_to_exitcode(status)
                    log.error("the event poller (pid %d) exited with status %d; restarting it", pid, code)
                    now = time.monotonic()
                    self.restarts = [t for t in self.restarts if now - t < self.RESTART_WINDOW] + [now]
                    if len(self.restarts) > self.MAX_RESTARTS:
                        log.error("%d restarts in %.0f s, giving up", len(self.restarts) - 1, self.RESTART_WINDOW)
                        self.failed = True
                        self.pending_signals.append(signal.SIGTERM)
                continue
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


def _exit_child(code: int) -> None:
    """End a forked child here: its copy of the parent's state must run no exit handlers."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
