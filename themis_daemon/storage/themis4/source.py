"""A Themis 4 store as a source: a backend reader's rows folded into run state.

The reader moves rows (and owns the cursor); this class decodes them, feeds the pure fold and
serves summaries, details and scores through the same interface as the Themis 1.x store.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..base import RefreshResult, RunNotFound
from .fold import RunFold, summary_fields
from .reader import EventReader, Unavailable

try:  # orjson is a dependency; the fallback keeps the pure parts importable without it
    import orjson

    def _loads_fast(data: Any) -> Any:
        return orjson.loads(data)
except ImportError:  # pragma: no cover
    orjson = None

    def _loads_fast(data: Any) -> Any:
        return json.loads(data)

log = logging.getLogger("themis_daemon.storage")

MAX_POLLS_PER_REFRESH = 100_000  # a bound on the cold-start loop (rows come in batches)


def decode(data: Any) -> Any:
    """Decode stored JSON; SQLite and JSONL may hold bare NaN/Infinity, which orjson refuses."""
    if data is None:
        raise ValueError("empty")
    if isinstance(data, (dict, list)):
        return data  # already decoded by the driver
    try:
        return _loads_fast(data)
    except ValueError:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8")
        return json.loads(data)


def _epoch(stamp: Optional[str]) -> Optional[float]:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _Undecodable:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


class V4Run:
    """One run: its fold plus what the API needs around it (version, errors, a cached summary)."""

    def __init__(self, run_id: str, snapshot: Dict[str, Any], token: Any, source: "Themis4Source"):
        self.run_id = run_id
        self.token = token
        self.fold = RunFold(run_id, snapshot)
        self.source = source
        self.version = 0
        self.error: Optional[str] = None       # events that could not be read
        self.read_error: Optional[str] = None  # the run's files could not be read (JSONL)
        self.last_change = time.time()
        self._summary: Optional[Tuple[int, Dict[str, Any]]] = None

    def decode(self, pos: int, data: Any) -> Any:
        """The decoded event, or an `_Undecodable` marker the fold counts as a bad event."""
        try:
            return decode(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return _Undecodable(f"event at position {pos} is not valid JSON: {exc}")

    def apply(self, pos: int, event: Any) -> None:
        self.fold.apply(pos, None if isinstance(event, _Undecodable) else event)
        if isinstance(event, _Undecodable):
            self.fold.last_bad = event.message
        if self.fold.bad_events:
            self.error = f"{self.fold.bad_events} unreadable event(s); last: {self.fold.last_bad}"

    def touched(self) -> None:
        self.version += 1
        self.last_change = _epoch(self.fold.updated_at) or time.time()

    def summary(self) -> Dict[str, Any]:
        cached = self._summary
        if cached is not None and cached[0] == self.version:
            return cached[1]
        fields = summary_fields(self.fold)
        out = {"run_id": self.run_id, **fields, "format": "themis-v4", "source": self.source.name,
               "error": "; ".join(e for e in (self.source.error, self.read_error, self.error) if e) or None}
        self._summary = (self.version, out)
        return out


class Themis4Source:
    """Thread-safe cached view of one Themis 4 store. `refresh()` runs on one thread at a time."""

    format = "themis-v4"

    def __init__(self, reader: EventReader, name: Optional[str] = None, *,
                 clock: Callable[[], float] = time.time):
        self.reader = reader
        self.name = name or reader.describe()
        self.root = reader.describe()
        self.clock = clock
        self._runs: Dict[str, V4Run] = {}
        self._lock = threading.Lock()          # one reader call at a time (its connection)
        self._refresh_lock = threading.Lock()
        self.generation = 0
        self.scanned = False
        self.error: Optional[str] = None       # the store is unavailable right now (shown in summaries)
        self.root_error: Optional[str] = None
        self.last_refresh: Optional[float] = None
        self.unknown_events = 0
        self.orphan_events = 0
        self.polls = 0
        self.lock_grace = 5.0  # seconds a lock may last before the store is reported as unavailable
        self._locked_since: Optional[float] = None
        self._logged: set = set()

    # ------------------------------------------------------------------ refresh

    def refresh(self) -> RefreshResult:
        start = time.perf_counter()
        res = RefreshResult()
        with self._refresh_lock:
            try:
                self._refresh(res)
                self._locked_since = None
                self._set_error(None, res)
            except Unavailable as exc:
                message = str(exc)
                if getattr(exc, "transient", False):
                    # A writer's commit holds the lock for a moment: only a lock that lasts is news.
                    now = time.monotonic()
                    self._locked_since = self._locked_since or now
                    if now - self._locked_since < self.lock_grace:
                        message = None
                if message is not None:
                    res.error = message
                    self._set_error(message, res)
            self.last_refresh = self.clock()
        res.duration = time.perf_counter() - start
        return res

    def _set_error(self, message: Optional[str], res: RefreshResult) -> None:
        if message == self.error:
            return
        if message is None:
            log.info("store %s is readable again", self.name)
        elif message not in self._logged:
            self._logged.add(message)
            log.warning("store %s: %s", self.name, message)
        self.error = self.root_error = message
        self.generation += 1
        for run_id, run in self._runs.items():
            run._summary = None  # every summary carries the store's error
            if run_id not in res.changed:
                res.changed.append(run_id)

    def _refresh(self, res: RefreshResult) -> None:
        with self._lock:
            if self.scanned and not self.reader.changed():
                return
        runs = dict(self._runs)
        touched: Dict[str, V4Run] = {}
        for _ in range(MAX_POLLS_PER_REFRESH):
            with self._lock:
                poll = self.reader.poll()
            self.polls += 1
            for run_id in list(runs):
                if run_id not in poll.runs:
                    del runs[run_id]
                    touched.pop(run_id, None)
            for run_id, raw in poll.snapshots.items():
                try:
                    snapshot = decode(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    snapshot = {}
                    bad = f"snapshot is not valid JSON: {exc}"
                else:
                    bad = None if isinstance(snapshot, dict) else "snapshot is not a JSON object"
                run = V4Run(run_id, snapshot if isinstance(snapshot, dict) else {}, poll.runs.get(run_id), self)
                run.error = bad
                old = runs.get(run_id) or self._runs.get(run_id)
                if old is not None:
                    run.version = old.version + 1  # a re-created run keeps moving its version forward
                runs[run_id] = touched[run_id] = run
            for run_id in poll.reset:
                if run_id in runs and run_id not in poll.snapshots:
                    old = runs[run_id]
                    fresh = V4Run(run_id, old.fold.snapshot, poll.runs.get(run_id), self)
                    fresh.version = old.version + 1
                    runs[run_id] = touched[run_id] = fresh
            for row in poll.rows:
                run = runs.get(row.run_id)
                if run is None:
                    self.orphan_events += 1
                    continue
                event = run.decode(row.pos, row.data)
                if run.fold.started_pos is not None and isinstance(event, dict) \
                        and event.get("event_type") == "run_started":
                    # Themis writes run_started once per run; a second one means the run was
                    # deleted and written again (existing_run_policy=rerun): start over.
                    fresh = V4Run(row.run_id, run.fold.snapshot, run.token, self)
                    fresh.version = run.version + 1
                    runs[row.run_id] = run = fresh
                before = run.fold.unknown_events
                run.apply(row.pos, event)
                self.unknown_events += run.fold.unknown_events - before
                touched[row.run_id] = run
            if not poll.more:
                break
        file_errors = getattr(self.reader, "errors", None)  # per-run read problems (JSONL)
        if file_errors is not None:
            for run_id, run in runs.items():
                message = file_errors.get(run_id)
                if message != run.read_error:
                    run.read_error = message
                    touched[run_id] = run
        before = self._runs
        res.added = [r for r in runs if r not in before]
        res.removed = [r for r in before if r not in runs]
        for run_id, run in touched.items():
            run.touched()
            if run_id in before:
                res.changed.append(run_id)
            res.positions[run_id] = {"started": run.fold.started_pos or 0, "last": run.fold.last_pos or 0,
                                     "final": run.fold.final_pos or 0}
        for run in touched.values():
            run.summary()  # built here, off the event loop
        if res.added or res.removed or res.changed:
            self.generation += 1
        self._runs = runs
        self.scanned = True

    # ------------------------------------------------------------------ queries

    def run_ids(self) -> List[str]:
        return list(self._runs)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs

    def get(self, run_id: str) -> V4Run:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None

    def summaries(self) -> List[Dict[str, Any]]:
        return [run.summary() for run in self._runs.values()]

    def summary(self, run_id: str) -> Dict[str, Any]:
        return self.get(run_id).summary()

    def detail_versioned(self, run_id: str, offset: int = 0, limit: Optional[int] = None,
                         include_pending: bool = False):
        run = self.get(run_id)
        version = run.version
        fold = run.fold
        order = fold.sample_order(include_pending)
        scored = len(fold.sample_order(False)) if include_pending else len(order)
        stop = None if limit is None else offset + limit
        page = order[offset:stop]
        with self._lock:
            raw = self.reader.fetch(run_id, fold.positions_for(page)) if page else {}
        events: Dict[int, Any] = {}
        for pos, data in raw.items():
            try:
                events[pos] = decode(data)
            except (ValueError, UnicodeDecodeError):
                continue
        samples = [fold.sample(cid, events, pending=include_pending and index >= scored)
                   for index, cid in enumerate(order[offset:stop], offset)]
        if include_pending:
            for item in samples:
                item.setdefault("pending", False)
        out = dict(run.summary())
        out["samples"] = samples
        out["samples_total"] = len(order)
        out["metadata"] = {
            "created_at": fold.created_at,
            "updated_at": fold.updated_at,
            "completed_at": fold.completed_at,
            "config_snapshot": None,
            "native_status": fold.status,
            "completed_through_stage": fold.completed_through_stage,
            "events": fold.events,
            "snapshot": _snapshot_meta(fold.snapshot),
        }
        return out, version

    def scores(self, run_id: str) -> Dict[str, Dict[Any, List[float]]]:
        return self.get(run_id).fold.paired_scores()

    def close(self) -> None:
        with self._lock:
            self.reader.close()


def _snapshot_meta(snapshot: Dict[str, Any]) -> Dict[str, Any]:
    """The identity parts of a snapshot worth showing, without the (large) datasets."""
    identity = snapshot.get("identity") if isinstance(snapshot.get("identity"), dict) else {}
    prov = snapshot.get("provenance") if isinstance(snapshot.get("provenance"), dict) else {}
    return {
        "component_refs": snapshot.get("component_refs"),
        "metric_kinds": snapshot.get("metric_kinds"),
        "dataset_refs": identity.get("dataset_refs"),
        "candidate_policy": identity.get("candidate_policy"),
        "themis_version": prov.get("themis_version"),
        "environment_metadata": prov.get("environment_metadata"),
    }
