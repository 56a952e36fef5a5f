"""Polls the storage on the IOLoop and turns what changed into run events.

The refresh itself, and taking the summaries it produced, run on a single storage thread (file
I/O and the storage's locks never block the loop); the loop keeps that snapshot, serves lists
and /metrics from it, and diffs old and new summaries into events for the hub. A poll that
hangs (a store that blocks a read) is noticed: /readyz says so and requests get the last known
state instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any, Callable, Dict, List, Optional

from tornado.ioloop import IOLoop, PeriodicCallback

from .storage import RefreshResult, Sources

log = logging.getLogger("themis_daemon.monitor")

FINAL_EVENTS = {"completed": "run_completed", "failed": "run_failed", "cancelled": "run_failed"}
PROGRESS_FIELDS = ("generated", "evaluated", "failed", "expected_samples", "num_samples", "progress")


def diff_events(old: Dict[str, Dict[str, Any]], new: Dict[str, Dict[str, Any]],
                added: List[str], removed: List[str]) -> List[Dict[str, Any]]:
    """Events that take a subscriber from the `old` summaries to the `new` ones.

    Pure, so the event rules can be tested without a loop: a new run yields run_started (and
    its final event if it already finished between two polls); a finished run whose files grow
    again was resumed; at most one run_progress per run per call.
    """
    events: List[Dict[str, Any]] = []
    for run_id, cur in new.items():
        prev = old.get(run_id)
        status = cur.get("status")
        if prev is None:
            if run_id not in added:
                continue
            events.append(_event("run_started", cur))
            if status in FINAL_EVENTS:
                events.append(_event(FINAL_EVENTS[status], cur))
            continue
        prev_status = prev.get("status")
        grew = any(cur.get(k) != prev.get(k) for k in ("generated", "evaluated"))
        if prev_status == "pending" and status not in ("pending", None):
            events.append(_event("run_started", cur))  # a submitted Themis 4 run began
        elif prev_status in FINAL_EVENTS and (status == "in_progress" or grew):
            events.append(_event("run_started", cur, resumed=True))
        if any(cur.get(k) != prev.get(k) for k in PROGRESS_FIELDS):
            ev = _event("run_progress", cur)
            ev["progress"] = cur.get("progress")
            events.append(ev)
        if status in FINAL_EVENTS and (status != prev_status or (grew and prev_status in FINAL_EVENTS)):
            events.append(_event(FINAL_EVENTS[status], cur))
    for run_id in removed:
        if run_id in old:
            events.append({"type": "run_removed", "run_id": run_id, "data": old[run_id]})
    return events


# Sub-positions of the events one store position can produce, in the order they are sent.
_SUB = {"run_started": 0, "run_progress": 1, "run_completed": 2, "run_failed": 2}


def positional_seq(events: List[Dict[str, Any]], positions: Dict[str, Dict[str, int]]) -> List[Dict[str, Any]]:
    """Give events derived from store positions a `seq` every process computes alike.

    With one Themis 4 SQLite or PostgreSQL store, event ids are global and never reused, so
    `4 * id + kind` numbers "run X reached event id N" the same way in every worker and every
    replica: a client can resume with `since` on any of them. Events without a position (a
    pending run appearing, run_stalled, run_removed) are numbered by the hub.
    """
    out = []
    for ev in events:
        pos = positions.get(ev.get("run_id") or "")
        kind = ev.get("type")
        if pos and kind in _SUB:
            at = pos["started"] if kind == "run_started" and not ev.get("resumed") else \
                pos["final"] if kind in ("run_completed", "run_failed") else pos["last"]
            if at:
                ev = dict(ev, seq=4 * at + _SUB[kind])
        out.append(ev)
    numbered = sorted((e for e in out if "seq" in e), key=lambda e: e["seq"])
    return numbered + [e for e in out if "seq" not in e]


def _event(kind: str, summary: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    ev: Dict[str, Any] = {"type": kind, "run_id": summary["run_id"], "data": summary}
    if summary.get("resumed"):
        ev["resumed"] = True  # a Themis 4 run that went on after a final event
    if kind == "run_failed":
        ev["error_message"] = summary.get("error_message")
    ev.update(extra)
    return ev


class Monitor:
    """Owns the storage refresh: periodic polls, on-demand freshness for requests, diffing."""

    @classmethod
    def configured(cls, store: Sources, executor: Executor, monitor: Any, **kwargs: Any) -> "Monitor":
        """A monitor set up from a `monitor` settings section (web workers and the event poller)."""
        return cls(store, executor, poll_interval=monitor.poll_interval, stalled_after=monitor.stalled_after,
                   stuck_after_polls=monitor.stuck_after_polls, **kwargs)

    def __init__(self, store: Sources, executor: Executor, *, poll_interval: float = 1.0,
                 stalled_after: Optional[float] = None,
                 publish: Optional[Callable[[Dict[str, Any]], None]] = None,
                 clock: Callable[[], float] = time.monotonic, stuck_after_polls: int = 30):
        self.store = store
        self.stuck_after_polls = stuck_after_polls
        self.executor = executor
        self.poll_interval = poll_interval
        self.stalled_after = stalled_after
        self.publish = publish
        self.clock = clock
        self._pc: Optional[PeriodicCallback] = None
        self._inflight: Optional[asyncio.Future] = None
        self._snapshot: Dict[str, Dict[str, Any]] = {}
        # Storage summaries as of the last finished poll (newest first), taken on the storage
        # thread, and the store generation they belong to (a cache key for REST).
        self._plain: List[Dict[str, Any]] = []
        self._plain_by_id: Dict[str, Dict[str, Any]] = {}
        self.generation = 0
        self._poll_started: Optional[float] = None  # clock of the poll in flight, if any
        self._stuck_logged = False
        self.stalled: set = set()  # in-progress runs whose files stopped moving
        self.stall_generation = 0  # bumps whenever that set changes (a cache key for REST)
        self._last_ok: Optional[float] = None
        self.ticks = 0
        self.last_tick_duration = 0.0
        self.listeners: List[Callable[[RefreshResult], None]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._pc is None:
            self._pc = PeriodicCallback(self._tick, self.poll_interval * 1000)
            self._pc.start()
            IOLoop.current().add_callback(self._tick)

    def stop(self) -> None:
        if self._pc is not None:
            self._pc.stop()
            self._pc = None

    def set_poll_interval(self, seconds: float) -> None:
        self.poll_interval = seconds
        if self._pc is not None:
            self.stop()
            self.start()

    @property
    def running(self) -> bool:
        return self._pc is not None

    # ------------------------------------------------------------------ refresh

    async def _tick(self) -> None:
        running = self.poll_running_for()
        if running is not None:
            # Still in flight: let it finish, and say so once it has taken too long.
            if running > self.stuck_after and not self._stuck_logged:
                self._stuck_logged = True
                log.error("storage poll has been running for %.1f s (more than %d poll intervals): a store "
                          "blocks a read; serving the last known state, /readyz answers 503", running,
                          self.stuck_after_polls)
            return
        # Not awaited: the periodic callback waits for its tick, and these checks must go on
        # while a read hangs.
        self.refresh().add_done_callback(self._poll_done)

    @staticmethod
    def _poll_done(future: "asyncio.Future[RefreshResult]") -> None:
        if not future.cancelled() and future.exception() is not None:
            # The monitor must survive anything the storage throws at it.
            log.error("storage poll failed", exc_info=future.exception())

    @property
    def stuck_after(self) -> float:
        return self.stuck_after_polls * self.poll_interval

    def poll_running_for(self) -> Optional[float]:
        """Seconds the poll in flight has been running, None when none is."""
        started = self._poll_started
        return None if started is None else self.clock() - started

    def stuck(self) -> Optional[str]:
        """Why the monitor is not keeping up (a poll running for too long), else None."""
        running = self.poll_running_for()
        if running is not None and running > self.stuck_after and self.ticks:
            return (f"storage poll running for {running:.1f} s (more than {self.stuck_after_polls} poll "
                    f"intervals of {self.poll_interval:g} s); answers show the last known state")
        return None

    def refresh(self, after_now: bool = False) -> "asyncio.Future[RefreshResult]":
        """Start a refresh, or join the one already running, so polls never pile up.

        With `after_now`, the result reflects the disk as it is at call time: a refresh that
        was already running may have scanned too early, so one more is chained after it.
        """
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._refresh())
        elif after_now:
            previous = self._inflight

            async def chained() -> RefreshResult:
                try:
                    await previous
                except Exception:
                    pass
                return await self._refresh()

            self._inflight = asyncio.ensure_future(chained())
        return self._inflight

    def is_fresh(self) -> bool:
        """Whether the state is recent enough to answer from without waiting for a refresh."""
        last = self._last_ok
        return last is not None and self.clock() - last <= max(self.poll_interval * 2, 0.05)

    async def ensure_fresh(self) -> None:
        """Wait for a refresh if the cached state is older than one poll interval; once a first
        scan is done, never longer than `stuck_after` (then the last known state is served)."""
        last = self._last_ok
        if not self.is_fresh():
            pending = self.refresh()
            if last is None:
                await pending
                return
            try:
                await asyncio.wait_for(asyncio.shield(pending), self.stuck_after)
            except asyncio.TimeoutError:
                pass

    def _poll(self):
        """On the storage thread: refresh, then take the summaries (themis 1.x runs lock)."""
        result = self.store.refresh()
        generation = self.store.generation
        return result, self.store.summaries(), generation

    async def _refresh(self) -> RefreshResult:
        started = self.clock()
        loop = asyncio.get_running_loop()
        self._poll_started = started
        try:
            result, plain, generation = await loop.run_in_executor(self.executor, self._poll)
        finally:
            self._poll_started = None
        if self._stuck_logged:
            self._stuck_logged = False
            log.warning("storage poll finished after %.1f s; serving current state again", self.clock() - started)
        self.ticks += 1
        self.last_tick_duration = result.duration
        self._last_ok = started
        first = not self._snapshot and self.ticks == 1
        # A poll of a quiet store hands back the very list of the last one (Sources keeps it
        # while no run's summary changed): then nothing below can differ but the stalled flags,
        # and the loop skips rebuilding and diffing an annotated copy of every run (a
        # millisecond and more per second with 1,000 runs, taken from the requests).
        same = not first and not result.added and not result.removed and plain is self._plain
        if not same:
            self._plain = plain
            self._plain_by_id = {s["run_id"]: s for s in plain}
        self.generation = generation
        stall_generation = self.stall_generation
        stalled = self._stall_events(self._plain_by_id)
        if same and stall_generation == self.stall_generation:
            new, events = self._snapshot, []
        else:
            new = {s["run_id"]: self.annotate(s) for s in self._plain}
            events = [] if first else diff_events(self._snapshot, new, result.added, result.removed)
        if not first:  # runs already stalled at start-up are state, not news
            events.extend(stalled)
        if getattr(self.store, "positional", False):
            events = positional_seq(events, result.positions)
        self._snapshot = new
        for listener in list(self.listeners):
            try:
                listener(result)
            except Exception:
                log.exception("refresh listener failed")
        if self.publish is not None:
            for ev in events:
                self.publish(ev)
        return result

    def annotate(self, summary: Dict[str, Any]) -> Dict[str, Any]:
        """A storage summary plus the monitor's `stalled` flag: what REST and /ws both show."""
        return {**summary, "stalled": summary["run_id"] in self.stalled}

    def summaries(self) -> List[Dict[str, Any]]:
        """Annotated summaries as of the last finished poll (never waits on the storage)."""
        return [self.annotate(s) for s in self._plain]

    def plain_summaries(self) -> List[Dict[str, Any]]:
        return self._plain

    def summary(self, run_id: str) -> Optional[Dict[str, Any]]:
        plain = self._plain_by_id.get(run_id)
        return None if plain is None else self.annotate(plain)

    def _stall_events(self, summaries: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
        before = set(self.stalled)
        events = []
        now = time.time()
        for run_id, summary in summaries.items():
            if not self.stalled_after or summary.get("status") != "in_progress":
                self.stalled.discard(run_id)
                continue
            try:
                idle = now - self.store.get(run_id).last_change
            except KeyError:
                continue
            if idle >= self.stalled_after:
                if run_id not in self.stalled:
                    self.stalled.add(run_id)
                    events.append({**_event("run_stalled", {**summary, "stalled": True}),
                                   "idle_seconds": round(idle, 1)})
            else:
                self.stalled.discard(run_id)
        self.stalled &= set(summaries)
        if self.stalled != before:
            self.stall_generation += 1
        return events
