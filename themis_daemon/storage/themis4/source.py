"""A Themis 4 store as a source: a backend reader's rows folded into run state.

The reader moves rows (and owns the cursor); this class decodes them, feeds the pure fold and
serves summaries, details and scores through the same interface as the Themis 1.x store.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Tuple

import orjson

from ..base import RefreshResult, RunNotFound, bulk_allocation, scan_worker_setup, worker_context
from ..workers import PAGE_MIN, DetailWorkers, split
from .fold import PageFold, RunFold, describe_snapshot, summary_fields
from .reader import EventReader, NoExtraction, Unavailable
from .slim import dataset_share, slim_event

log = logging.getLogger("themis_daemon.storage")

MAX_POLLS_PER_REFRESH = 100_000  # a bound on the cold-start loop (rows come in batches)


def decode(data: Any) -> Any:
    """Decode stored JSON; SQLite and JSONL may hold bare NaN/Infinity, which orjson refuses."""
    if data is None:
        raise ValueError("empty")
    if isinstance(data, (dict, list)):
        return data  # already decoded by the driver
    try:
        return orjson.loads(data)
    except ValueError:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8")
        return json.loads(data)


def _json_or_none(text: Any) -> Any:
    if text is None:
        return None
    try:
        return decode(text)
    except (ValueError, UnicodeDecodeError):
        return None


def _epoch(stamp: Optional[str]) -> Optional[float]:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


_DONE = object()
SIDE_READY = object()  # what a `_Prefetched` iteration yields when its side future is done


class _Prefetched:
    """Iterate `batches` with the next ones produced on a helper thread meanwhile: a database
    extracting fields (without the GIL) overlaps the decoding of what it gave before. The thread
    starts at once, so the caller may do other work before it iterates. The caller holds the
    reader's lock throughout, so the reader is used by one thread at a time; `close()` (also
    at the end of the iteration) stops and joins the thread.

    `side`: a future whose completion is yielded as `SIDE_READY` among the batches, in the
    order things arrive, so the caller turns to it when it is there and not before."""

    AHEAD = 2  # batches produced ahead of the consumer

    def __init__(self, batches: Any, side: Any = None):
        self._handoff: "queue.Queue[Any]" = queue.Queue()  # bounded by `_slots`, not by size
        self._slots = threading.Semaphore(self.AHEAD)
        self._stop = threading.Event()
        if side is not None:  # (first: a side future already done comes before any batch)
            side.add_done_callback(lambda _f: self._handoff.put((SIDE_READY, None)))
        self._worker = threading.Thread(target=self._produce, args=(batches,), name="themis4-prefetch",
                                        daemon=True)
        self._worker.start()

    def _produce(self, batches: Any) -> None:
        try:
            for batch in batches:
                self._slots.acquire()
                if self._stop.is_set():
                    break
                self._handoff.put((batch, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._handoff.put((None, exc))
            return
        self._handoff.put((_DONE, None))

    def __iter__(self) -> Any:
        try:
            while True:
                batch, exc = self._handoff.get()
                if exc is not None:
                    raise exc
                if batch is _DONE:
                    return
                if batch is not SIDE_READY:
                    self._slots.release()
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._slots.release()  # a producer waiting for a slot wakes, sees the stop and ends
        self._worker.join()


class _Undecodable:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


class V4Run:
    """One run: its fold plus what the API needs around it (version, errors, a cached summary)."""

    def __init__(self, run_id: str, fold: RunFold, token: Any, source: Optional["Themis4Source"] = None):
        self.run_id = run_id
        self.token = token
        self.fold = fold
        self.source = source
        self.version = 0
        self.error: Optional[str] = None       # events that could not be read
        self.read_error: Optional[str] = None  # the run's files could not be read (JSONL)
        self.last_change = time.time()
        self._summary: Optional[Tuple[Any, Dict[str, Any]]] = None
        self._fields: Optional[Tuple[int, Dict[str, Any]]] = None

    @classmethod
    def from_snapshot(cls, run_id: str, raw: Any, token: Any, source: Optional["Themis4Source"] = None) -> "V4Run":
        try:
            snapshot = decode(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            snapshot, bad = {}, f"snapshot is not valid JSON: {exc}"
        else:
            bad = None if isinstance(snapshot, dict) else "snapshot is not a JSON object"
        run = cls(run_id, RunFold(run_id, snapshot if isinstance(snapshot, dict) else {}), token, source)
        run.error = bad
        return run

    def restarted(self) -> "V4Run":
        """The same run folded again from nothing (it was deleted and written again)."""
        fresh = V4Run(self.run_id, RunFold(self.run_id, info=self.fold.info), self.token, self.source)
        fresh.version = self.version + 1
        return fresh

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["source"] = None  # sent back from a scan process; the source is set on arrival
        state["_summary"] = None  # `_fields`, the costly part, travels along
        return state

    def decode(self, pos: int, data: Any) -> Any:
        """The decoded event, or an `_Undecodable` marker the fold counts as a bad event."""
        try:
            return decode(data)
        except (ValueError, UnicodeDecodeError) as exc:
            return _Undecodable(f"event at position {pos} is not valid JSON: {exc}")

    def touched(self) -> None:
        self.version += 1
        self.last_change = _epoch(self.fold.updated_at) or time.time()

    def summary(self) -> Dict[str, Any]:
        """Cached per version; the store's own error is added without refolding anything."""
        source_error = self.source.error if self.source is not None else None
        key = (self.version, source_error, self.read_error, self.error)
        cached = self._summary
        if cached is not None and cached[0] == key:
            return cached[1]
        fields = self._fields
        if fields is None or fields[0] != self.version:
            fields = self._fields = (self.version, summary_fields(self.fold))
        out = {"run_id": self.run_id, **fields[1], "format": "themis-v4",
               "source": self.source.name if self.source is not None else None,
               "error": "; ".join(e for e in (source_error, self.read_error, self.error) if e) or None}
        self._summary = (key, out)
        return out


def apply_rows(runs: Dict[str, V4Run], rows: Any, touched: Dict[str, V4Run]) -> Tuple[int, int]:
    """Fold rows `(pos, run_id, data)` into `runs`; (unknown-type events, events of no run).

    Shared by polls and the cold-scan processes, and the hottest loop of a first scan, so it
    decodes the hot event types only as far as the fold reads them (`slim_event`; the rest in
    full) and looks a run up only when the run changes from one row to the next
    (a run's events mostly come in long stretches). A second `run_started` for a run means
    Themis deleted it and wrote it again (existing_run_policy=rerun): that run starts over.
    """
    orphans = 0
    slim = slim_event
    current: Optional[str] = None
    run: Optional[V4Run] = None
    fold: Any = None
    apply: Any = None
    # Unknown and bad events are tallied per run once the rows are folded (not per row):
    # the fold counts them itself. `seen`: run -> (its fold, that fold's count before these rows).
    seen: Dict[int, Tuple[V4Run, Any, int]] = {}
    for pos, run_id, data in rows:
        if run_id != current:
            current = run_id
            run = runs.get(run_id)
            if run is not None:
                fold, apply = run.fold, run.fold.apply
                touched[run_id] = run
                if id(fold) not in seen:
                    seen[id(fold)] = (run, fold, fold.unknown_events)
        if run is None:
            orphans += 1
            continue
        event = slim(data)  # the hot event types, decoded only as far as the fold reads them
        if event is None:
            event = run.decode(pos, data)  # in full: bare NaN/Infinity too, or why it cannot be
        if type(event) is dict:
            if fold.started_pos is not None and event.get("event_type") == "run_started":
                runs[run_id] = touched[run_id] = run = run.restarted()
                fold, apply = run.fold, run.fold.apply
                seen[id(fold)] = (run, fold, 0)
            apply(pos, event)
        elif type(event) is _Undecodable:
            apply(pos, None)  # counted as a bad event, with the decoder's reason below
            fold.last_bad = event.message
        else:
            apply(pos, event)
    unknown = 0
    for run, fold, before in seen.values():
        unknown += fold.unknown_events - before
        if fold.bad_events and run.fold is fold:
            run.error = f"{fold.bad_events} unreadable event(s); last: {fold.last_bad}"
    return unknown, orphans


def _scan_part(kind: str, location: str, options: Dict[str, Any], mark: Any, part: int, parts: int):
    """Cold scan of one partition of the runs, in a worker process (module level: picklable).
    Returns the folded runs; decoding and folding is most of a cold start, so it uses every core."""
    from .readers import make_reader

    if kind == "sqlite":
        # Scan workers retry a locked statement themselves (briefly, in a loop): waiting inside
        # SQLite for a committing writer only lengthens each statement.
        options = dict(options, busy_timeout=0.005)
    reader = make_reader(kind, location, **options)
    try:
        runs = {run_id: V4Run.from_snapshot(run_id, raw, token)
                for run_id, (raw, token) in reader.partition_snapshots(mark, part, parts).items()}
        touched: Dict[str, V4Run] = {}
        counts = [0, 0]
        for batch in reader.partition_rows(mark, part, parts):
            with bulk_allocation():
                unknown, orphans = apply_rows(runs, batch, touched)
            counts[0] += unknown
            counts[1] += orphans
        for run in runs.values():
            run.touched()
            run.summary()  # the fold figures are computed here, in the worker, and travel with the run
        return runs, counts
    finally:
        reader.close()


def build_samples(reader: EventReader, run_id: str, fold: Any, page: List[str], pending: List[bool],
                  dataset: Any, lock: Any, include_pending: bool = False, arrival: Any = None) -> List[Dict[str, Any]]:
    """Detail samples of these cases of a run: the events they need are read through `reader`
    (under `lock`, which guards its connection) and decoded while the next batch is read.
    `dataset`: the run's `describe_snapshot(...)`, or a function that makes it (called while
    the first batches are read). With `arrival`, the future of the snapshot that function
    needs (read on another connection), it is called once that is done, and batches are decoded
    meanwhile: a PostgreSQL snapshot takes tens of milliseconds to arrive. Runs in this process or in a
    detail worker, whose reader is its own."""
    positions = fold.positions_for(page) if page else []
    events: Dict[int, Any] = {}
    extracted = True
    with lock, bulk_allocation():
        try:
            batches = _Prefetched(reader.output_batches(run_id, positions), arrival) if positions else None
            try:
                if callable(dataset) and arrival is None:
                    dataset = dataset()  # while the database extracts the first batches
                for batch in batches or ():
                    if batch is SIDE_READY:
                        dataset = dataset()  # its snapshot is there: between two batches
                        continue
                    for pos, (output, conversation) in batch.items():
                        events[pos] = {"result": {"final_output": _json_or_none(output),
                                                  "conversation": _json_or_none(conversation)}}
            finally:
                if batches is not None:
                    batches.close()
        except NoExtraction:
            extracted = False
    if callable(dataset):
        dataset = dataset()
    if not extracted:
        events = {}
        with bulk_allocation():
            with lock:
                raw = reader.fetch(run_id, positions)
            for pos, data in raw.items():
                try:
                    events[pos] = decode(data)
                except (ValueError, UnicodeDecodeError):
                    continue
    with bulk_allocation():  # 10,000 samples' dicts must not set off collections of the whole state
        samples = [fold.sample(cid, events, pending=p, dataset=dataset) for cid, p in zip(page, pending)]
    if include_pending:
        for item in samples:
            item.setdefault("pending", False)
    details = _score_details(reader, run_id, fold, page, lock)
    if details:
        for item in samples:
            got = details.get(item["id"])
            if got:
                item["details"] = {m: d for m, d in got.items() if m in item["scores"]}
    return samples


def _score_details(reader: EventReader, run_id: str, fold: Any, page: List[str], lock: Any) -> Dict[str, Dict[str, Any]]:
    """Per case, per metric, the `details` its score_completed stored (only metrics that
    stored some are looked up)."""
    wanted = fold.detail_positions(page) if page else {}
    if not wanted:
        return {}
    with lock:
        raw = reader.fetch(run_id, list(wanted))
    out: Dict[str, Dict[str, Any]] = {}
    for pos, data in raw.items():
        try:
            event = decode(data)
        except (ValueError, UnicodeDecodeError):
            continue
        score = event.get("score") if isinstance(event, dict) else None
        det = score.get("details") if isinstance(score, dict) else None
        if isinstance(det, dict) and det and pos in wanted:
            case_id, metric = wanted[pos]
            out.setdefault(case_id, {})[metric] = det
    return out


def _warm_detail_worker(kind: str, location: str, options: Dict[str, Any]) -> int:
    """Run once in each new detail worker: the imports a share of a page needs, done ahead, and
    for PostgreSQL its two connections (the driver's import and a connection, with its server
    process and password exchange, cost a first big page over 100 ms)."""
    from . import readers, sqlite  # noqa: F401
    from ... import jsonutil  # noqa: F401

    if kind == "postgres":
        try:
            for role in _SHARE_READERS:
                with _share_reader(role, kind, location, options) as reader:
                    reader.open()
        except Exception:  # noqa: BLE001 - unreachable now: the share's reader reports it then
            pass
    return os.getpid()


# A detail worker's PostgreSQL readers, kept open between shares: (role, location, options) ->
# reader. Other stores are opened per share (an SQLite file may be replaced meanwhile).
_KEPT_READERS: Dict[Tuple[Any, ...], Any] = {}
_SHARE_READERS = ("events", "snapshot")  # a share reads its snapshot while its events are read


@contextlib.contextmanager
def _share_reader(role: str, kind: str, location: str, options: Dict[str, Any]):
    """A reader for one share: a kept one for PostgreSQL, else one opened and closed here."""
    from .readers import make_reader

    if kind == "postgres":
        key = (role, location, tuple(sorted(options.items())))
        reader = _KEPT_READERS.get(key)
        if reader is None:
            reader = _KEPT_READERS[key] = make_reader(kind, location, **options)
        yield reader
        return
    reader = make_reader(kind, location, **options)
    try:
        yield reader
    finally:
        reader.close()


def _detail_part(kind: str, location: str, options: Dict[str, Any], run_id: str, fold: Any,
                 page: List[str], pending: List[bool], include_pending: bool) -> bytes:
    """A share of a big detail page, built and encoded in a worker process (module level:
    picklable); the page's owner splices the encoded shares into one body."""
    from ... import jsonutil

    with _share_reader("events", kind, location, options) as reader:
        # The run's snapshot (its dataset's references and inputs) is read on a connection of
        # its own while the events are extracted: from PostgreSQL it takes tens of milliseconds.
        with ThreadPoolExecutor(1, thread_name_prefix="themis4-snapshot") as side:
            snapshot = side.submit(_read_snapshot, kind, location, options, run_id)

            def dataset() -> Optional[Dict[str, Any]]:
                raw = snapshot.result()
                try:
                    if raw is None:
                        return None
                    return dataset_share(raw, page) or _dataset_share(describe_snapshot(decode(raw)), page)
                except (ValueError, UnicodeDecodeError):
                    return None

            samples = build_samples(reader, run_id, fold, page, pending, dataset, contextlib.nullcontext(),
                                    include_pending, arrival=snapshot)
    return jsonutil.dumpb(samples)


def _read_snapshot(kind: str, location: str, options: Dict[str, Any], run_id: str) -> Any:
    with _share_reader("snapshot", kind, location, options) as reader:
        return reader.snapshot(run_id)


def _dataset_share(dataset: Optional[Dict[str, Any]], page: List[str]) -> Optional[Dict[str, Any]]:
    if dataset is None:
        return None
    refs, inputs = dataset.get("references") or {}, dataset.get("inputs") or {}
    return {"references": {c: refs[c] for c in page if c in refs},
            "inputs": {c: inputs[c] for c in page if c in inputs}}


PARALLEL_MIN_EVENTS = 200_000  # below this, starting worker processes costs more than it saves


class Themis4Source:
    """Thread-safe cached view of one Themis 4 store. `refresh()` runs on one thread at a time."""

    format = "themis-v4"

    def __init__(self, reader: EventReader, name: Optional[str] = None, *,
                 clock: Callable[[], float] = time.time, scan_workers: Optional[int] = None,
                 detail_workers: Optional[int] = None):
        self.reader = reader
        self.scan_workers = scan_workers if scan_workers is not None else (os.cpu_count() or 1)
        self.name = name or reader.describe()
        # Big detail pages are built by these worker processes (`detail_workers` of them, 0:
        # here), started once a run is that big: decoding thousands of events holds the GIL.
        self.details = DetailWorkers(self.name, detail_workers,
                                     warm=functools.partial(_warm_detail_worker, reader.kind, reader.location,
                                                            reader.options()))
        self.root = reader.describe()
        self.clock = clock
        self._runs: Dict[str, V4Run] = {}
        self._lock = threading.Lock()          # one reader call at a time (its connection)
        self._datasets: Dict[Tuple[str, Any], Dict[str, Any]] = {}
        self._datasets_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.generation = 0
        self.scanned = False
        self.error: Optional[str] = None       # the store is unavailable right now (shown in summaries)

        self.unknown_events = 0
        self.orphan_events = 0
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
        self.error = message
        self.generation += 1
        listed = set(res.changed)  # every run is listed once: a membership test per run, not a scan
        res.changed += [run_id for run_id in self._runs if run_id not in listed]

    def _refresh(self, res: RefreshResult) -> None:
        if self.scanned:
            self.details.start_if_wanted()
        if not self.scanned and self._cold_scan(res):
            return
        with self._lock:
            if self.scanned and not self.reader.changed():
                return
        runs = dict(self._runs)
        touched: Dict[str, V4Run] = {}
        try:
            self._poll_loop(runs, touched)
        except BaseException:
            # What the reader has handed over is folded already and its cursor has moved on:
            # keep it even when a later poll of this refresh failed (a lock, a lost server).
            self._commit(runs, touched, res)
            raise
        self._commit(runs, touched, res)
        self.scanned = True  # a first scan is complete only once every poll of it succeeded

    def _poll_loop(self, runs: Dict[str, V4Run], touched: Dict[str, V4Run]) -> None:
        for _ in range(MAX_POLLS_PER_REFRESH):
            with self._lock:
                poll = self.reader.poll()
            for run_id in list(runs):
                if run_id not in poll.runs:
                    del runs[run_id]
                    touched.pop(run_id, None)
            for run_id, raw in poll.snapshots.items():
                run = V4Run.from_snapshot(run_id, raw, poll.runs.get(run_id), self)
                old = runs.get(run_id) or self._runs.get(run_id)
                if old is not None:
                    run.version = old.version + 1  # a re-created run keeps moving its version forward
                runs[run_id] = touched[run_id] = run
            for run_id in poll.reset:
                if run_id in runs and run_id not in poll.snapshots:
                    runs[run_id] = touched[run_id] = runs[run_id].restarted()
            with bulk_allocation():
                unknown, orphans = apply_rows(runs, ((r[0], r[1], r[3]) for r in poll.rows), touched)
            self.unknown_events += unknown
            self.orphan_events += orphans
            if not poll.more:
                break

    def _cold_scan(self, res: RefreshResult) -> bool:
        """The first scan of a big store, decoded and folded in worker processes; False when
        the reader cannot partition its store or the store is small (then polls do it)."""
        reader = self.reader
        if self.scan_workers < 2 or not hasattr(reader, "cold_mark"):
            return False
        with self._lock:
            mark = reader.cold_mark()
        if mark is None or mark.get("events", 0) < PARALLEL_MIN_EVENTS:
            return False
        parts = self.scan_workers
        try:
            ctx = worker_context()
            with ProcessPoolExecutor(parts, mp_context=ctx, initializer=scan_worker_setup) as pool, \
                    bulk_allocation():  # results unpickle here
                futures = [pool.submit(_scan_part, reader.kind, reader.location, reader.options(), mark, i, parts)
                           for i in range(parts)]
                results = [f.result() for f in futures]
        except (OSError, RuntimeError, EOFError) as exc:  # no /dev/shm, a worker died: poll instead
            log.warning("store %s: parallel first scan unavailable (%s); scanning in this process", self.name, exc)
            return False
        runs: Dict[str, V4Run] = {}
        for part_runs, (unknown, orphans) in results:
            runs.update(part_runs)
            self.unknown_events += unknown
            self.orphan_events += orphans
        for run in runs.values():
            run.source = self
        with self._lock:
            reader.adopt(mark, {r: run.fold.last_pos for r, run in runs.items() if run.fold.last_pos is not None})
        self._commit(runs, {}, res)  # folded and summarised in the workers already
        self.details.note(run.summary() for run in runs.values())
        self.scanned = True
        return True

    def _commit(self, runs: Dict[str, V4Run], touched: Dict[str, V4Run], res: RefreshResult) -> None:
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
            if run.source is None:
                run.source = self
            run.touched()
            if run_id in before:
                res.changed.append(run_id)
            res.positions[run_id] = {"started": run.fold.started_pos or 0, "last": run.fold.last_pos or 0,
                                     "final": run.fold.final_pos or 0}
        for run in touched.values():
            run.summary()  # built here, off the event loop
        self.details.note(run.summary() for run in touched.values())
        if res.added or res.removed or res.changed:
            self.generation += 1
        self._runs = runs

    # ------------------------------------------------------------------ queries

    @property
    def root_error(self) -> Optional[str]:
        """What `Sources` reports per store: here the same as `error`."""
        return self.error

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
                         include_pending: bool = False, encoded: bool = False):
        """A run's detail page and the version it shows. `encoded`: the samples may come as one
        `jsonutil.Encoded` (a big page's shares, encoded by the workers that built them)."""
        run = self.get(run_id)
        version = run.version
        fold = run.fold
        order = fold.sample_order(include_pending)
        scored = len(fold.sample_order(False)) if include_pending else len(order)
        stop = None if limit is None else offset + limit
        page = order[offset:stop]
        pending = [offset + k >= scored for k in range(len(page))] if include_pending else [False] * len(page)
        samples: Any = None
        if encoded and len(page) >= PAGE_MIN and self.details.enabled:
            samples = self._samples_in_workers(run, page, pending, include_pending)
        if samples is None:
            samples = self._samples(run, page, pending, include_pending)
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
            "snapshot": fold.info.get("meta"),
        }
        return out, version

    def sample_ids(self, run_id: str) -> List[str]:
        """Case ids of the scored cases, in detail order."""
        return list(self.get(run_id).fold.sample_order(False))

    def samples(self, run_id: str, ids: List[Any]) -> List[Dict[str, Any]]:
        """Detail samples for these case ids (unknown ids are skipped), in the order given."""
        run = self.get(run_id)
        cases = run.fold.cases
        page = [i for i in ids if i in cases]
        return self._samples(run, page, [False] * len(page), False)

    def _samples(self, run: V4Run, page: List[str], pending: List[bool], include_pending: bool) -> List[Dict[str, Any]]:
        dataset = self._dataset(run) if page else None
        return build_samples(self.reader, run.run_id, run.fold, page, pending, dataset, self._lock, include_pending)

    # ------------------------------------------------------------------ detail workers

    def _samples_in_workers(self, run: V4Run, page: List[str], pending: List[bool], include_pending: bool) -> Any:
        """A big page built in shares by the detail workers (None: they cannot, build it here)."""
        reader = self.reader
        head = (reader.kind, reader.location, reader.options(), run.run_id)
        return self.details.build(_detail_part, [
            head + (PageFold(run.fold, page[part]), page[part], pending[part], include_pending)
            for part in split(page, self.details.count)])

    def _dataset(self, run: V4Run) -> Optional[Dict[str, Any]]:
        """References and inputs of a run's dataset, read from its snapshot on demand; a few
        are kept (a snapshot never changes while its run keeps its token)."""
        key = (run.run_id, run.token)
        with self._datasets_lock:
            hit = self._datasets.pop(key, None)
            if hit is not None:
                self._datasets[key] = hit
                return hit
        with self._lock:
            raw = self.reader.snapshot(run.run_id)
        try:
            dataset = describe_snapshot(decode(raw)) if raw is not None else None
        except (ValueError, UnicodeDecodeError):
            dataset = None
        if dataset is not None:
            with self._datasets_lock:
                self._datasets[key] = dataset
                while len(self._datasets) > 8:
                    self._datasets.pop(next(iter(self._datasets)))
        return dataset

    def scores(self, run_id: str) -> Dict[str, Dict[Any, List[float]]]:
        return self.get(run_id).fold.paired_scores()

    def close(self) -> None:
        self.details.stop()
        with self._lock:
            self.reader.close()
