"""The storage root as a whole: discovery of run folders and a cached view of every run.

Runs are discovered from the file tree (a folder is a run iff it holds metadata.json), so the
SQLite index is never needed and never opened. Nothing here writes to the root.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence

import msgspec

from ... import jsonutil
from ..base import RefreshResult, RunNotFound, bulk_allocation, worker_context, worker_process_setup
from ..workers import PAGE_MIN, DetailWorkers, split
from .cache import RunCache
from .jsonl import Limits
from .run import PageInputs, RunState, View, build_page, mark_scan_worker

log = logging.getLogger("themis_daemon.storage")


FULL_PASS_EVERY = 10  # a quiet finished run is fully re-checked every n-th refresh
PARALLEL_MIN_RUNS = 16  # below this, starting worker processes costs more than it saves
SCAN_BATCHES_PER_WORKER = 8
# ... or when the runs hold at least this much to decode (a few runs of 10,000 samples), which
# in this process would hold the GIL away from the event loop for seconds.
PARALLEL_MIN_BYTES = 8 * 1024 * 1024
SAVE_EVERY_S = 300.0  # the persistent cache is rewritten at most this often (and at close)


def _scan_worker_init(max_line_bytes: int, roots: Dict[str, tuple]) -> None:
    """A scan worker lives for one scan and builds only acyclic state: no garbage collection."""
    gc.disable()
    worker_process_setup(background=False)  # everything waits for a first scan: full CPU share
    mark_scan_worker()
    Limits.max_line_bytes = max_line_bytes
    Limits.roots = roots


_PER_SAMPLE = ("positions", "ids", "scores", "evals", "task_units", "rec_units")  # PageInputs' lists


def _encode_page(limits: tuple, page: PageInputs) -> bytes:
    """A share of a big detail page, built and encoded in a detail worker (module level)."""
    Limits.max_line_bytes, Limits.roots = limits
    with bulk_allocation():
        return jsonutil.dumpb(build_page(page))


def _scan_runs(items: List[tuple]) -> Dict[str, RunState]:
    """First read of some runs (module level so worker processes can run it)."""
    out = {}
    for run_id, path, exp_id in items:
        state = RunState(path, run_id, exp_id)
        state.refresh()
        state.summary()
        out[run_id] = state
    return out


def _bytes_to_read(new: List[tuple]) -> int:
    """Size of the record and evaluation files of some run folders (what a scan decodes)."""
    total = 0
    for _run_id, path, _exp_id in new:
        files = [os.path.join(path, "generation", "records.jsonl")]
        try:
            files += [e.path + "/evaluation.jsonl" for e in os.scandir(os.path.join(path, "evaluations"))]
        except OSError:
            pass
        for base in files:
            for name in (base + ".gz", base):
                try:
                    total += os.stat(name).st_size
                    break
                except OSError:
                    continue
    return total


class Store:
    """Thread-safe cached reader of one Themis storage root.

    `refresh()` is meant to run on one background thread at a time; readers on other threads
    only see fully built, immutable views.
    """

    def __init__(self, root: str, *, clock: Callable[[], float] = time.time, max_views: int = 16,
                 scan_workers: Optional[int] = None, cache_dir: Optional[str] = None,
                 max_line_bytes: Optional[int] = None, extra_roots: Sequence[str] = (),
                 detail_workers: Optional[int] = None):
        self.root = os.path.abspath(root)
        if max_line_bytes:
            Limits.max_line_bytes = max_line_bytes  # process-wide, like the setting
        # Symlinks in the store may lead only into the store itself or these directories.
        self.allowed = (os.path.realpath(self.root), *(os.path.realpath(r) for r in extra_roots))
        Limits.roots[self.root] = self.allowed
        self.name = os.path.basename(os.path.normpath(self.root)) or self.root  # shown as `source`
        self.scan_workers = scan_workers if scan_workers is not None else (os.cpu_count() or 1)
        self.max_views = max_views
        self._views: "OrderedDict[str, RunState]" = OrderedDict()
        self._views_lock = threading.Lock()
        self.clock = clock
        self._runs: Dict[str, RunState] = {}  # replaced, never mutated, so readers need no lock
        self._refresh_lock = threading.Lock()
        self._passes = 0
        self.generation = 0  # bumps whenever any run changes, appears or vanishes
        self.scanned = False  # True once the first complete scan finished
        self.last_refresh: Optional[float] = None
        self.root_error: Optional[str] = None
        self._logged: set = set()
        # Per-run state kept across restarts (cache.py); None: no persistent cache.
        self.cache = RunCache(cache_dir, self.root) if cache_dir else None
        self._cached: Optional[Dict[str, Dict[str, Any]]] = None  # entries not yet used
        self._saved_generation: Optional[int] = None
        self._saved_at = 0.0
        self.restored = 0  # runs taken from the persistent cache at start-up
        self._retired: Dict[str, int] = {}  # last version of each run that went away
        self._restored_changed = False
        # Big detail pages are built by these worker processes (`detail_workers`, 0: here),
        # started once a run is that big: inflating and decoding thousands of lines holds the GIL.
        self.details = DetailWorkers(self.name, detail_workers)

    # ------------------------------------------------------------------ discovery

    def _discover(self) -> Dict[str, tuple]:
        found: Dict[str, tuple] = {}
        exp_root = os.path.join(self.root, "experiments")
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"storage root not found: {self.root}")
        try:
            experiments = [e for e in os.scandir(exp_root) if e.is_dir() and (not e.is_symlink() or self._inside(e.path))]
        except FileNotFoundError:
            return found  # an empty root: Themis creates experiments/ on first use
        for exp in sorted(experiments, key=lambda e: e.name):
            try:
                entries = sorted(os.scandir(os.path.join(exp.path, "runs")), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                if entry.is_symlink() and not self._inside(entry.path):
                    continue
                known = self._runs.get(entry.name)
                if (known is None or known.dir != entry.path) and \
                        not os.path.isfile(os.path.join(entry.path, "metadata.json")):
                    continue  # lock-only folders left by runs started elsewhere
                if entry.name in found:
                    self._log_once(f"duplicate run id {entry.name!r} in experiments "
                                   f"{found[entry.name][1]!r} and {exp.name!r}; serving the first")
                    continue
                found[entry.name] = (entry.path, exp.name)
        return found

    def refresh(self) -> RefreshResult:
        """Rescan the root and re-read what moved; safe to call from any one thread at a time."""
        start = time.perf_counter()
        res = RefreshResult()
        with self._refresh_lock:
            self.details.start_if_wanted()
            try:
                found = self._discover()
                self.root_error = None
            except OSError as exc:
                # Root unmounted or unreadable: keep serving the last known state.
                res.error = self.root_error = f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or self.root}"
                self._log_once(res.error)
                res.duration = time.perf_counter() - start
                self.last_refresh = self.clock()
                return res
            runs = dict(self._runs)
            for run_id in list(runs):
                if run_id not in found or found[run_id][0] != runs[run_id].dir:
                    self._retired[run_id] = runs.pop(run_id).version
                    res.removed.append(run_id)
            new = [(run_id, path, exp_id) for run_id, (path, exp_id) in found.items() if run_id not in runs]
            fresh = self._restore(new)
            scanned = [item for item in new if item[0] not in fresh]
            fresh.update(self._scan_new(scanned))
            self._passes += 1
            # Each pass re-reads a different tenth of the quiet runs in full, so every tick
            # costs about the same and each run is fully checked every FULL_PASS_EVERY passes.
            turn = self._passes % FULL_PASS_EVERY
            for index, (run_id, (path, exp_id)) in enumerate(found.items()):
                full = index % FULL_PASS_EVERY == turn
                state = runs.get(run_id)
                if state is None:
                    state = fresh[run_id]
                    if state.gone or (state.meta is None and state.error is None):
                        continue  # metadata.json is being written or just went; look again next time
                    if run_id in self._retired:  # back again: carry on above its old versions,
                        state.continue_after(self._retired.pop(run_id))  # which caches still hold
                    runs[run_id] = state
                    res.added.append(run_id)
                    state.summary()  # build the summary here, off the caller's event loop
                elif state.refresh(full=full):
                    res.changed.append(run_id)
                    state.summary()
                if state.gone:
                    self._retired[run_id] = runs.pop(run_id).version
                    res.removed.append(run_id)
                    res.changed = [r for r in res.changed if r != run_id]
            with self._views_lock:
                in_use = set(self._views)
            for run_id in res.added + res.changed:
                if run_id not in in_use and run_id in runs:
                    runs[run_id].freeze()  # nobody looks at it: keep its tables packed
            if res.added or res.removed or res.changed:
                self.generation += 1
            if self._saved_generation is None and self.cache is not None and not scanned \
                    and not res.changed and not res.removed and not self._restored_changed:
                self._saved_generation = self.generation  # the cache is as it was read
                self._saved_at = time.monotonic()
            self._runs = runs
            self.scanned = True
            self.last_refresh = self.clock()
            self._maybe_save()
            self.details.note(runs[r].summary() for r in res.added + res.changed if r in runs)
        res.duration = time.perf_counter() - start
        return res

    def _restore(self, new: List[tuple]) -> Dict[str, RunState]:
        """Runs taken from the persistent cache (first refresh only), brought up to date."""
        if self.cache is None or not new:
            return {}
        if self._cached is None:
            self._cached = self.cache.load()
        out: Dict[str, RunState] = {}
        with bulk_allocation():
            for run_id, path, exp_id in new:
                entry = self._cached.pop(run_id, None)
                if entry is None:
                    continue
                try:
                    state = RunState.from_cache(entry, path, run_id, exp_id)
                except (KeyError, TypeError, ValueError, IndexError, msgspec.MsgspecError) as exc:
                    self._log_once(f"storage cache entry of run {run_id!r} unusable ({exc}); reading the run again")
                    state = None
                if state is None:
                    continue
                if state.refresh():  # metadata again, and whatever the files gained since
                    self._restored_changed = True
                out[run_id] = state
        self._cached = {}  # whatever was not used is stale
        self.restored += len(out)
        return out

    def _maybe_save(self) -> None:
        """Write the persistent cache after the first scan, then at most every SAVE_EVERY_S."""
        if self.cache is None or self._saved_generation == self.generation:
            return
        if self._saved_generation is not None and time.monotonic() - self._saved_at < SAVE_EVERY_S:
            return
        self.save_cache()

    def save_cache(self) -> None:
        if self.cache is None:
            return
        entries = []
        for state in list(self._runs.values()):
            entry = state.to_cache()
            if entry is not None:
                entries.append(entry)
        self.cache.save(entries)
        self._saved_generation = self.generation
        self._saved_at = time.monotonic()

    def close(self) -> None:
        """Keep the newest state for the next start (unless a poll still runs: a stop never
        waits for storage that does not answer)."""
        self.details.stop()
        if self.cache is not None and self.scanned and self._refresh_lock.acquire(timeout=1.0):
            try:
                if self._saved_generation != self.generation:
                    self.save_cache()
            finally:
                self._refresh_lock.release()

    def _scan_new(self, new: List[tuple]) -> Dict[str, RunState]:
        """Read runs seen for the first time; a large batch (the cold start) uses every core."""
        workers = min(self.scan_workers, len(new) // PARALLEL_MIN_RUNS)
        if workers < 2 and len(new) >= 2 and _bytes_to_read(new) >= PARALLEL_MIN_BYTES:
            workers = min(self.scan_workers, len(new))  # a few big runs: decoding holds the GIL
        if workers >= 2:
            try:
                ctx = worker_context()
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_scan_worker_init,
                                         initargs=(Limits.max_line_bytes, Limits.roots)) as pool, \
                        bulk_allocation():  # results unpickle here
                    # Small batches: results come back (and unpickle here) while workers go on.
                    parts = workers * SCAN_BATCHES_PER_WORKER
                    chunks = [c for c in (new[i::parts] for i in range(parts)) if c]
                    out: Dict[str, RunState] = {}
                    for part in pool.map(_scan_runs, chunks):
                        out.update(part)
                    for state in out.values():
                        state.log_pending()
                    return out
            except (OSError, RuntimeError) as exc:  # e.g. no /dev/shm: fall back to one core
                self._log_once(f"parallel scan unavailable ({exc}); scanning on one core")
        return _scan_runs(new)

    def _inside(self, path: str) -> bool:
        """A symlinked folder counts only if it leads into the store or an allowed root."""
        real = os.path.realpath(path)
        if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.allowed):
            return True
        self._log_once(f"{path} leads outside the storage root (to {real}); not followed "
                       "(storage.extra_roots allows more)")
        return False

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s", message)

    # ------------------------------------------------------------------ queries

    @property
    def invalid_lines(self) -> int:
        """Lines skipped as invalid JSON across every run (for /metrics)."""
        return sum(state.invalid_lines for state in list(self._runs.values()))

    def run_ids(self) -> List[str]:
        return list(self._runs)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs

    def get(self, run_id: str) -> RunState:
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None

    def view(self, run_id: str) -> View:
        """Per-sample data of a run; only the most recently used few are kept in memory."""
        state = self.get(run_id)
        with self._views_lock:
            self._views.pop(run_id, None)
            self._views[run_id] = state
            while len(self._views) > self.max_views:
                _, old = self._views.popitem(last=False)
                old.drop_view()
        return state.view()

    def summaries(self) -> List[Dict[str, Any]]:
        """Summaries of every run, newest first (string order of created_at, as Themis sorts)."""
        items = [state.summary() for state in self._runs.values()]
        items.sort(key=lambda s: (s.get("created_at") or "", s["run_id"]), reverse=True)
        return items

    def summary(self, run_id: str) -> Dict[str, Any]:
        return self.get(run_id).summary()

    def detail(self, run_id: str, offset: int = 0, limit: Optional[int] = None,
               include_pending: bool = False) -> Dict[str, Any]:
        """The run detail; sample text is loaded from disk for the requested page only."""
        return self.detail_versioned(run_id, offset, limit, include_pending)[0]

    def detail_versioned(self, run_id: str, offset: int = 0, limit: Optional[int] = None,
                         include_pending: bool = False, encoded: bool = False):
        """The detail and the run version it shows, so callers can cache it under that version.
        `encoded`: the samples of a big page may come as one `jsonutil.Encoded`, built and
        encoded by the detail workers."""
        state = self.get(run_id)
        with bulk_allocation():  # thousands of objects: no collection walking the store meanwhile
            state.want_tasks()
            view = self.view(run_id)
            everything = len(view.samples) + (len(view.pending) if include_pending else 0)
            positions = range(everything)[offset:None if limit is None else offset + limit]
            page = state.page_inputs(view, positions, include_pending)
            samples: Any = None
            if encoded and len(positions) >= PAGE_MIN and self.details.enabled:
                limits = (Limits.max_line_bytes, dict(Limits.roots))
                samples = self.details.build(_encode_page, [
                    (limits, page._replace(**{f: getattr(page, f)[part] for f in _PER_SAMPLE}))
                    for part in split(page.positions, self.details.count)])
            if samples is None:
                samples = build_page(page)
        out = dict(state.summary())
        out["samples"] = samples
        out["samples_total"] = everything
        meta = state.meta or {}
        out["metadata"] = {
            "created_at": meta.get("created_at"),
            "updated_at": meta.get("updated_at"),
            "completed_at": meta.get("completed_at"),
            "config_snapshot": meta.get("config_snapshot"),
        }
        return out, view.version

    def scores(self, run_id: str) -> Dict[str, Dict[Any, List[float]]]:
        """Per metric, per sample id, the score values (one per evaluation line)."""
        with bulk_allocation():
            return self.view(run_id).scores

    def sample_ids(self, run_id: str) -> List[Any]:
        """Ids of the evaluated samples, in detail order."""
        with bulk_allocation():
            return [s.id for s in self.view(run_id).samples]

    def samples(self, run_id: str, ids: List[Any]) -> List[Dict[str, Any]]:
        """Detail samples for these ids (unknown ids are skipped), in the order given."""
        state = self.get(run_id)
        with bulk_allocation():
            state.want_tasks()
            view = self.view(run_id)
            where = state.positions_by_id(view)
            positions = [where[k] for k in ((type(i).__name__, i) for i in ids) if k in where]
            return state.load_positions(view, positions)
