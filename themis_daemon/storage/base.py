"""What every storage source shares: the result of a refresh, errors and the status vocabulary.

A *source* is one configured store (a Themis 1.x root, or a Themis 4 SQLite file, JSONL root
or PostgreSQL database). The monitor, REST, compare and WebSocket code only use the interface
of :class:`themis_daemon.storage.sources.Sources`, never a source's format.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing.context
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

# `pending` only occurs for Themis 4 runs (a snapshot without events).
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
FINAL_STATUSES = ("completed", "failed", "cancelled")


class _GcPause:
    """Counts the threads inside `bulk_allocation`: collection resumes when the last leaves
    (and only if it was on before the first came in)."""

    lock = threading.Lock()
    holders = 0
    resume = False


WORKER_NICENESS = 5


def worker_process_setup(background: bool = True) -> None:
    """First thing in a worker process: end with the process that started it (Linux), since a
    pool's processes outlive a killed parent, holding its memory and its log pipe. Workers that
    run beside serving (`background`: big details, statistics) also yield the CPU to the serving
    process's event loop when the cores are all busy; a first scan, which everything waits
    for, keeps its full share."""
    # Ctrl-C reaches the whole process group, and systemd's stop the whole cgroup: the process
    # that started this one decides when it ends (it drains first, then kills it). Started by
    # `worker_context`, the process had both blocked until here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if background:
        try:
            os.nice(WORKER_NICENESS)
        except OSError:
            pass
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that starts with SIGINT and SIGTERM blocked: a Ctrl-C that reaches the
    process group while the interpreter starts and imports would otherwise end it before
    `worker_process_setup` ignores them (a compare in flight got "statistics process lost").
    The signal mask is inherited through fork and kept through exec."""

    def start(self) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


def worker_context() -> multiprocessing.context.SpawnContext:
    """The multiprocessing context of every worker pool: spawn (no fork from a threaded
    process), with the stop signals blocked until the worker ignores them."""
    return _WorkerContext()


@contextlib.contextmanager
def bulk_allocation() -> Iterator[None]:
    """No cyclic garbage collection while a burst of objects is made (decoding thousands of
    events): with millions of long-lived objects in a big store's state, collections set off by
    the burst cost more than the work itself (3x on a 10,000-case detail). Nothing made here is
    cyclic, and collection resumes afterwards."""
    with _GcPause.lock:
        if _GcPause.holders == 0:
            _GcPause.resume = gc.isenabled()
            gc.disable()
        _GcPause.holders += 1
    try:
        yield
    finally:
        with _GcPause.lock:
            _GcPause.holders -= 1
            if _GcPause.holders == 0 and _GcPause.resume:
                gc.enable()


def settle_long_lived() -> None:
    """After a first scan: move what was built (the runs' state) out of the collector's view,
    so later full collections, which pause every thread, do not walk millions of objects."""
    gc.freeze()


def stable_mean(values: List[float]) -> float:
    """The mean of finite values even where their sum overflows (scores near 1e308): the sum is
    taken at a scale given by the largest magnitude. Non-finite inputs propagate as in sum()."""
    try:
        return math.fsum(values) / len(values)
    except OverflowError:
        pass
    except ValueError:  # fsum of inf and -inf
        return math.nan
    exponent = math.frexp(max(abs(v) for v in values))[1]
    return math.ldexp(math.fsum(math.ldexp(v, -exponent) for v in values) / len(values), exponent)


def finite_mean(values: List[float]) -> Optional[float]:
    """Mean of the finite values, None if there are none (what summaries show per metric)."""
    vals = [v for v in values if math.isfinite(v)]
    return stable_mean(vals) if vals else None


class RunNotFound(KeyError):
    pass


class NotAStore(Exception):
    """A configured path or URL is not a store this daemon can read (fatal at start-up)."""


class Unavailable(Exception):
    """A transient condition (database locked, hot journal, server down): keep the last known
    state, report the message, and try again at a later poll. `transient` marks conditions
    that normally clear within a poll or two (a writer holding its lock)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass
class RefreshResult:
    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    changed: List[str] = field(default_factory=list)
    error: Optional[str] = None
    duration: float = 0.0
    # Store positions (Themis 4 event ids) of what a refresh saw, per run: lets every worker
    # and every replica number the same event the same way (see Monitor).
    positions: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def merge(self, other: "RefreshResult") -> None:
        self.added.extend(other.added)
        self.removed.extend(other.removed)
        self.changed.extend(other.changed)
        self.positions.update(other.positions)
        if other.error:
            self.error = f"{self.error}; {other.error}" if self.error else other.error


def scan_worker_setup() -> None:
    """`worker_process_setup` for the processes of a first scan (module level: picklable)."""
    worker_process_setup(background=False)
