"""Worker processes that build and encode the shares of big detail pages.

A 10,000-sample detail means reading, inflating and decoding thousands of stored lines or
events and building as many dicts: work that holds the GIL the serving process's event loop
needs. A source hands each share of such a page (the inputs it needs, all picklable) to one of
these processes, which returns the share's samples already encoded as a JSON array; the shares
are spliced into one `jsonutil.Encoded`, so the body is the same, byte for byte, as one built
in the serving process (the tests hold them to that).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, List, Optional, Sequence

from ..jsonutil import Encoded
from .base import worker_context, worker_process_setup

log = logging.getLogger("themis_daemon.storage")

PAGE_MIN = 2_000  # samples in a detail page from which the workers build it


def _init(setup: Optional[Callable[..., None]], args: tuple) -> None:
    worker_process_setup()
    if setup is not None:
        setup(*args)


def default_count() -> int:
    return min(2, os.cpu_count() or 1)


class DetailWorkers:
    """The detail worker processes of one source: `count` of them (0: none, pages are built in
    the serving process), started on first use or ahead of it with `start()`."""

    def __init__(self, name: str, count: Optional[int] = None, setup: Optional[Callable[..., None]] = None,
                 setup_args: tuple = (), warm: Optional[Callable[[], Any]] = None):
        self.name = name
        self.count = default_count() if count is None else count
        self._setup, self._setup_args, self._warm = setup, setup_args, warm
        self.pool: Optional[ProcessPoolExecutor] = None
        self.wanted = False  # a run is big enough: start with the next refresh
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.count >= 2

    def note(self, summaries: Any) -> None:
        """Remember whether some run (of these summaries) is big enough for the workers; they
        are started by the next refresh (`start_if_wanted`), ahead of its first big page and
        after the first list is out."""
        if self.enabled and not self.wanted:
            self.wanted = any(max(s.get("num_samples") or 0, s.get("expected_samples") or 0) >= PAGE_MIN
                              for s in summaries)

    def start_if_wanted(self) -> None:
        if self.wanted and self.pool is None:
            self.start()

    def start(self) -> Optional[ProcessPoolExecutor]:
        with self._lock:
            if self.pool is None and self.enabled:
                try:
                    ctx = worker_context()
                    pool = ProcessPoolExecutor(self.count, mp_context=ctx, initializer=_init,
                                               initargs=(self._setup, self._setup_args))
                    if self._warm is not None:
                        for _ in range(self.count):
                            pool.submit(self._warm)
                except (OSError, RuntimeError) as exc:
                    log.warning("store %s: detail workers unavailable (%s); details are built in this process",
                                self.name, exc)
                    self.count = 0
                    return None
                self.pool = pool
            return self.pool

    def build(self, fn: Callable[..., bytes], shares: Sequence[tuple]) -> Optional[Encoded]:
        """`fn(*share)` for every share, in the workers; their JSON arrays as one. None when the
        workers cannot do it (the caller builds the page itself); errors of `fn` propagate."""
        pool = self.start()
        if pool is None:
            return None
        futures: List[Any] = []
        try:
            for share in shares:
                futures.append(pool.submit(fn, *share))
            bodies = [f.result() for f in futures]
        except (BrokenProcessPool, OSError, RuntimeError, EOFError) as exc:
            for f in futures:
                f.cancel()
            log.warning("store %s: a detail worker failed (%s); building details in this process", self.name, exc)
            self.stop()
            return None
        inner = b",".join(b[1:-1] for b in bodies if len(b) > 2)
        return Encoded(b"[" + inner + b"]")

    def stop(self) -> None:
        with self._lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            shutdown_now(pool)


def shutdown_now(pool: ProcessPoolExecutor) -> None:
    """Stop a pool without waiting for the work in its processes: the interpreter's exit would
    otherwise join them, and a stop would last as long as the longest job or import."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public way before 3.14
    for proc in processes:
        try:
            proc.kill()  # workers ignore SIGTERM (see worker_process_setup)
        except (OSError, AttributeError, ValueError):
            pass
    for proc in processes:
        try:
            proc.join(2.0)
        except (AssertionError, ValueError):
            pass
    pool.shutdown(wait=True, cancel_futures=True)  # quick now, and its queues are cleaned up


def split(items: Sequence[Any], parts: int) -> List[slice]:
    """Contiguous slices of `items` in `parts` shares of (nearly) equal size."""
    size = -(-len(items) // max(1, parts))
    return [slice(start, start + size) for start in range(0, len(items), size)] if items else []
