"""Comparisons run in a statistics worker process, never in the serving one.

Importing NumPy and SciPy, and the resampling loops of a big comparison, hold the GIL in long
C calls: in a thread of the serving process they held every request on the event loop for tens
of milliseconds. Here the statistics live in at most `processes` worker processes (`spawn`, one
started ahead, a second only when two comparisons overlap). A comparison is cancelled through
a shared flag that its job checks between rows and resampling batches.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, List, Optional, Tuple

from .storage.base import worker_context
from .storage.workers import shutdown_now

log = logging.getLogger("themis_daemon.compute")

SLOTS = 256  # comparisons in flight at once (queued or running), each with its cancel flag

_FLAGS: Any = None


def _init(flags: Any) -> None:
    global _FLAGS
    _FLAGS = flags
    from .storage.base import worker_process_setup

    worker_process_setup()


def _warm() -> int:
    importlib.import_module("themis_daemon.stats.compare")
    return os.getpid()


def _compare(runs: List[Tuple[str, Any]], kwargs: Dict[str, Any], slot: int) -> Dict[str, Any]:
    from .stats.compare import compare_runs

    return compare_runs(runs, **kwargs, cancelled=lambda: _FLAGS[slot] != 0)


class Busy(Exception):
    """Every comparison slot is taken."""


class WorkerLost(Exception):
    """The statistics process died during a comparison (it is replaced for the next one)."""


class StatsWorkers:
    """The statistics processes of one serving process."""

    def __init__(self, processes: int = 2):
        self.processes = max(1, processes)
        self._pool: Optional[ProcessPoolExecutor] = None
        self._flags: Any = None
        self._free = list(range(SLOTS))
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the first process and load the statistics stack in it, ahead of a comparison."""
        with self._lock:
            if self._pool is None and not self._closed:
                ctx = worker_context()
                self._flags = ctx.Array("b", SLOTS, lock=False)
                self._pool = ProcessPoolExecutor(self.processes, mp_context=ctx, initializer=_init,
                                                 initargs=(self._flags,))
                self._pool.submit(_warm)

    def submit(self, runs: List[Tuple[str, Any]], kwargs: Dict[str, Any]) -> Tuple[int, "Future[Dict[str, Any]]"]:
        """Queue a comparison; its slot is what `cancel` takes."""
        self.start()
        with self._lock:
            if self._closed or self._pool is None:
                raise WorkerLost("the daemon is stopping")
            if not self._free:
                raise Busy()
            slot = self._free.pop()
            self._flags[slot] = 0
            pool = self._pool
        try:
            future = pool.submit(_compare, runs, kwargs, slot)
        except (BrokenProcessPool, RuntimeError) as exc:
            self._release(slot)
            self._replace(pool)
            raise WorkerLost(str(exc)) from None
        future.add_done_callback(lambda _f: self._release(slot))
        return slot, future

    async def run(self, runs: List[Tuple[str, Any]], kwargs: Dict[str, Any], on_slot: Any = None) -> Dict[str, Any]:
        """The comparison's result; `on_slot(slot)` is told its slot as soon as it is queued."""
        slot, future = self.submit(runs, kwargs)
        if on_slot is not None:
            on_slot(slot)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            self._replace(None)
            raise WorkerLost(str(exc)) from None
        except asyncio.CancelledError:
            if future.cancelled():  # still queued when the daemon stopped
                from .stats.errors import Cancelled

                raise Cancelled() from None
            raise

    def cancel(self, slot: int) -> None:
        flags = self._flags
        if flags is not None:
            flags[slot] = 1

    def _release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def _replace(self, broken: Optional[ProcessPoolExecutor]) -> None:
        with self._lock:
            pool = self._pool
            if broken is not None and pool is not broken:
                return
            self._pool = None
        if pool is not None:
            log.warning("a statistics process died; starting a new one")
            shutdown_now(pool)

    def close(self) -> None:
        """Cancel every comparison (each stops at its next check) and let the processes go."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            if self._flags is not None:
                for slot in range(SLOTS):
                    self._flags[slot] = 1
        if pool is not None:
            shutdown_now(pool)
