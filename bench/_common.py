"""Helpers shared by the bench/ scripts: the daemon as a subprocess, and the report table.

Every benchmark starts ``python -m themis_daemon serve`` on a free loopback port and ends with a
metric | target | measured | pass/fail table; keeping both here means a change to how the daemon
announces its port, or to the table, is made once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the report."""
    print("[bench] " + msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    """The 1/5/15-minute load averages, recorded beside figures taken on a shared machine."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def proc_cpu_times(pid: int) -> Optional[Tuple[float, float]]:
    """User and kernel CPU seconds of a process (all threads), from /proc/PID/stat."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        hz = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / hz, int(fields[12]) / hz
    except (OSError, IndexError, ValueError):
        return None


def _proc_status(pid: int) -> Dict[str, int]:
    out: Dict[str, int] = {}
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(rest.split()[0])
    except OSError:
        pass  # gone meanwhile
    return out


def _descendants(pid: int) -> List[int]:
    """Every process below `pid` (from /proc/PID/task/TID/children)."""
    out: List[int] = []
    todo = [pid]
    while todo and len(out) < 10_000:
        parent = todo.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % parent)
        except OSError:
            continue
        for tid in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (parent, tid)) as fh:
                    kids = [int(x) for x in fh.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


class DaemonProcess:
    """``python -m themis_daemon serve --host 127.0.0.1 --port 0`` as a child process.

    stderr goes to a temp file rather than a pipe: nobody has to drain it (a full pipe would block
    the daemon), the port is read from its ``on http://127.0.0.1:PORT`` line, and its tail explains
    a daemon that died.
    """

    PORT_RE = re.compile(r"on http://127\.0\.0\.1:(\d+)")
    STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL

    def __init__(self, storage: "str | Path", *, poll_interval: Optional[float] = None,
                 env: Optional[Mapping[str, str]] = None, python_args: Sequence[str] = (),
                 preexec_fn: Optional[Callable[[], None]] = None, log_prefix: str = "themis-bench-",
                 cwd: "str | Path | None" = None):
        """``python_args`` go before ``-m themis_daemon`` (e.g. ``-m cProfile -o FILE``);
        ``env`` is added to os.environ; ``preexec_fn`` runs in the child (e.g. to raise rlimits);
        ``cwd``: the checkout whose daemon runs (default this one)."""
        self.cmd = [sys.executable, *python_args, "-m", "themis_daemon", "serve",
                    "--host", HOST, "--port", "0", "--storage", str(storage)]
        if poll_interval is not None:
            self.cmd += ["--poll-interval", str(poll_interval)]
        self._env = {**os.environ, **(env or {})}
        self._preexec_fn = preexec_fn
        self._log_prefix = log_prefix
        self._cwd = str(cwd or REPO)
        self.proc: Optional[subprocess.Popen] = None
        self.log_file = None
        self.port: Optional[int] = None
        self.t_start: Optional[float] = None  # perf_counter() at spawn: cold starts are measured from it
        self.t_listen: Optional[float] = None  # seconds from spawn to the port line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> int:
        """Spawn the daemon and return its port; a daemon that does not listen in time is stopped."""
        self.log_file = tempfile.NamedTemporaryFile(prefix=self._log_prefix, suffix=".log", delete=False)
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log_file, cwd=self._cwd, env=self._env,
                                     preexec_fn=self._preexec_fn)
        try:
            return self._wait_port(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with open(self.log_file.name, "rb") as fh:
            buf = b""
            while time.monotonic() < deadline:
                buf += fh.read()
                m = self.PORT_RE.search(buf.decode("utf-8", "replace"))
                if m:
                    self.t_listen = time.perf_counter() - self.t_start
                    self.port = int(m.group(1))
                    return self.port
                if self.proc.poll() is not None:
                    raise RuntimeError("daemon exited with %s:\n%s" % (self.proc.returncode, self.log_text()))
                time.sleep(0.005)  # fine-grained: bench_rest reports the time to the listening socket
        raise RuntimeError("daemon did not log its port within %.0fs:\n%s" % (timeout, self.log_text()))

    def log_text(self, limit: int = 4000) -> str:
        """The last ``limit`` bytes of the daemon's stderr ('' once stopped)."""
        try:
            with open(self.log_file.name, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - limit))
                return fh.read().decode("utf-8", "replace")
        except (AttributeError, OSError):
            return ""

    def status(self) -> Dict[str, int]:
        """VmRSS and VmHWM (kB) and Threads from /proc/PID/status: the daemon's own memory;
        TreeRSS (kB): VmRSS of the daemon and every process it started (its worker processes)."""
        out = _proc_status(self.pid)
        out["TreeRSS"] = sum(_proc_status(pid).get("VmRSS", 0) for pid in _descendants(self.pid)) + out.get("VmRSS", 0)
        return out

    def stop(self) -> None:
        """SIGTERM (so a profiled daemon can write its stats), SIGKILL after STOP_GRACE; removes the log.
        Safe to call twice."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=self.STOP_GRACE)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            if self.log_file is not None:
                self.log_file.close()
                try:
                    os.unlink(self.log_file.name)
                except OSError:
                    pass


# --------------------------------------------------------------------------- report

def fmt(v: Optional[float], unit: str = "", nd: int = 1) -> str:
    """A measurement that may be missing (None -> 'n/a')."""
    return "n/a" if v is None else ("%.*f%s" % (nd, v, unit))


def verdict(ok: Optional[bool]) -> str:
    """None means 'informational, no target'."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def print_table(rows: List[Tuple[str, str, str, str]], title: str) -> None:
    """rows: (metric, target, measured, verdict) as text."""
    head = ("metric", "target", "measured", "pass/fail")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(4)]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    print(title)
    print(line)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print(line)
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    print(line)


def print_misses(misses: Sequence[str]) -> None:
    """The closing verdict: every missed target, or that all were met."""
    if misses:
        print("MISSED %d target(s):" % len(misses))
        for m in misses:
            print("  - " + m)
    else:
        print("All targets met.")
