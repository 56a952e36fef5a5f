"""Every configured store behind one interface: what the monitor, REST, compare and /ws use.

`open_source` recognises what a path or URL is (a Themis 1.x root, a Themis 4 SQLite file,
a Themis 4 JSONL root, a PostgreSQL URL); `Sources` merges several of them, so a team moving
from 1.x to 4.x sees both in one list.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..jsonutil import escape_text
from .base import STATUSES, NotAStore, RefreshResult, RunNotFound, settle_long_lived

log = logging.getLogger("themis_daemon.storage")

HEX_PREFIX = re.compile(r"^[0-9a-f]{8,64}$")
EXPECTED = ("a Themis 1.x storage root (experiments/), a Themis 4 SQLite file, a Themis 4 JSONL "
            "root (runs/*/snapshot.json) or a postgresql:// URL")


class AmbiguousRun(RunNotFound):
    def __init__(self, prefix: str, matches: int):
        super().__init__(prefix)
        self.prefix = prefix
        self.matches = matches


def is_url(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgres://"))


def detect(spec: str) -> str:
    """The kind of store at `spec`: themis1, sqlite, jsonl or postgres; NotAStore otherwise."""
    from .themis4.sqlite import looks_like_sqlite

    if is_url(spec):
        return "postgres"
    if "://" in spec:
        scheme = spec.split("://", 1)[0]
        hint = " (MongoDB stores are not supported yet)" if scheme.startswith("mongodb") else ""
        raise NotAStore(f"{spec.split('@')[-1]}: unsupported URL scheme {scheme!r}{hint}; expected {EXPECTED}")
    if not os.path.exists(spec):
        bare = spec.rstrip("/" + os.sep)
        if bare and bare != spec and os.path.isfile(bare):  # `afile/`: it exists, as a file
            raise NotAStore(f"{spec}: names a directory, but {bare} is a file; give an SQLite file "
                            f"without the trailing '/', or {EXPECTED}")
        raise NotAStore(f"{spec}: not found; expected {EXPECTED}")
    if os.path.isfile(spec):
        if looks_like_sqlite(spec):
            return "sqlite"
        raise NotAStore(f"{spec}: a file that is not an SQLite database; expected {EXPECTED}")
    if not os.path.isdir(spec):
        raise NotAStore(f"{spec}: neither a file nor a directory; expected {EXPECTED}")
    if os.path.isdir(os.path.join(spec, "experiments")):
        return "themis1"
    too_deep = themis1_inner_folder(spec)
    if too_deep:
        raise NotAStore(too_deep)
    if os.path.isdir(os.path.join(spec, "runs")):
        return "jsonl"
    try:
        empty = not any(not e.name.startswith(".") for e in os.scandir(spec))
    except OSError as exc:
        raise NotAStore(f"{spec}: cannot be listed ({exc.strerror}); expected {EXPECTED}") from None
    if empty:
        return "themis1"  # Themis 1.x creates experiments/ on first use
    if any(os.path.isfile(os.path.join(d, "snapshot.json")) for d in _subdirs(spec)):
        raise NotAStore(f"{spec}: the runs/ folder of a Themis 4 JSONL store, which would serve no runs; "
                        f"give the store root (the folder holding runs/) instead: --storage "
                        f"{os.path.dirname(os.path.abspath(spec))}")
    raise NotAStore(f"{spec}: a directory with neither experiments/ nor runs/; expected {EXPECTED}")


def _is_themis1_run(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "metadata.json")) and not os.path.exists(os.path.join(path, "snapshot.json"))


def _subdirs(path: str) -> List[str]:
    try:
        return [e.path for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []


def themis1_inner_folder(spec: str) -> Optional[str]:
    """Why `spec` is a folder inside a Themis 1.x storage root, naming the root to give; else None.

    `--storage` one level too deep (at `experiments/`, at one experiment or at its `runs/`)
    would otherwise be read as an empty store and serve no runs without a word."""
    spec_abs = os.path.abspath(spec)

    def has_runs(exp: str) -> bool:
        return any(_is_themis1_run(r) for r in _subdirs(os.path.join(exp, "runs")))

    if any(_is_themis1_run(r) for r in _subdirs(spec_abs)):  # .../experiments/<exp>/runs
        what, root = "the runs/ folder of one experiment", os.path.dirname(os.path.dirname(os.path.dirname(spec_abs)))
    elif has_runs(spec_abs):  # .../experiments/<exp>
        what, root = "one experiment", os.path.dirname(os.path.dirname(spec_abs))
    elif any(has_runs(e) for e in _subdirs(spec_abs)):  # .../experiments
        what, root = "the experiments/ folder", os.path.dirname(spec_abs)
    else:
        return None
    return (f"{spec}: {what} of a Themis 1.x storage root, which would serve no runs; "
            f"give the storage root (the folder holding experiments/) instead: --storage {root}")


def default_name(spec: str) -> str:
    if is_url(spec):
        from urllib.parse import urlsplit

        parts = urlsplit(spec)
        host = parts.hostname or "localhost"
        return f"{host}{':' + str(parts.port) if parts.port else ''}{parts.path or '/'}"
    return os.path.basename(os.path.normpath(spec)) or spec


def open_source(spec: str, name: Optional[str] = None, *, password_file: Optional[str] = None,
                clock: Callable[[], float] = time.time, validate: bool = True,
                cache_dir: Optional[str] = None, max_line_bytes: Optional[int] = None,
                extra_roots: Sequence[str] = (), serves_details: bool = True) -> Any:
    """A source for one configured path or URL; raises NotAStore (one line) if it is none.
    `cache_dir`: where a Themis 1.x store keeps its per-run state across restarts.
    `serves_details`: False for a process that only watches (no detail worker processes)."""
    kind = detect(spec)
    name = name or default_name(spec)
    if kind == "themis1":
        from .themis1 import Store

        store = Store(spec, clock=clock, cache_dir=cache_dir, max_line_bytes=max_line_bytes,
                      extra_roots=extra_roots, detail_workers=None if serves_details else 0)
        store.name = name
        return store
    from .themis4.source import Themis4Source

    from .themis4.readers import make_reader

    options = {"password_file": password_file} if kind == "postgres" else {}
    reader = make_reader(kind, spec, **options)
    if validate:
        reader.validate()
    return Themis4Source(reader, name, clock=clock, detail_workers=None if serves_details else 0)


class Sources:
    """Several sources as one store. Run ids are unique across sources; a run id seen in two
    sources (the same Themis 4 run in two backends) is served from the first and logged."""

    def __init__(self, sources: Sequence[Any]):
        if not sources:
            raise ValueError("at least one source is needed")
        self.sources = list(sources)
        self._index: Dict[str, Any] = {}
        self._wrapped: Dict[str, Tuple[Dict[str, Any], Dict[str, Any]]] = {}
        self._logged: set = set()
        self._failures: Dict[str, str] = {}  # source name -> why its last refresh raised
        # The last summaries() answer and the summary objects it was sorted from
        self._sorted: Tuple[List[Dict[str, Any]], List[Dict[str, Any]]] = ([], [])
        self._rebuild_index()

    # ------------------------------------------------------------------ properties

    @property
    def positional(self) -> bool:
        """True when store positions number events the same way in every process and replica
        (one Themis 4 SQLite or PostgreSQL store): the WebSocket `seq` is then derived from them."""
        if len(self.sources) != 1:
            return False
        reader = getattr(self.sources[0], "reader", None)
        return bool(reader is not None and reader.global_positions)

    @property
    def generation(self) -> int:
        return sum(s.generation for s in self.sources)

    @property
    def scanned(self) -> bool:
        return all(s.scanned for s in self.sources)

    @property
    def root(self) -> str:
        return ", ".join(s.root for s in self.sources)

    @property
    def root_error(self) -> Optional[str]:
        errors = [f"{s.name}: {s.root_error}" for s in self.sources if s.root_error]
        errors += [f"{name}: {why}" for name, why in self._failures.items()]
        return "; ".join(errors) or None

    def describe(self) -> List[Dict[str, Any]]:
        """Per source: name, format, location (no secrets), runs and error, for /readyz."""
        out = []
        for s in self.sources:
            kind = getattr(getattr(s, "reader", None), "kind", "files")
            out.append({"name": s.name, "format": getattr(s, "format", "themis-v1"), "backend": kind,
                        "location": s.root, "runs": len(s.run_ids()), "scanned": s.scanned,
                        "error": s.root_error or self._failures.get(s.name)})
        return out

    def readable(self) -> bool:
        for s in self.sources:
            if s.root_error or s.name in self._failures:
                return False
            if getattr(s, "format", "themis-v1") == "themis-v1" and not os.access(s.root, os.R_OK | os.X_OK):
                return False
        return True

    # ------------------------------------------------------------------ refresh

    def refresh(self) -> RefreshResult:
        start = time.perf_counter()
        total = RefreshResult()
        before = set(self._index)
        was_scanned = self.scanned
        for source in self.sources:
            try:
                total.merge(source.refresh())
                self._failures.pop(source.name, None)
            except Exception as exc:
                # One source's unexpected failure stops neither the others nor later polls.
                why = f"refresh failed: {type(exc).__name__}: {exc}"
                if self._failures.get(source.name) != why:
                    log.error("store %s: %s", source.name, why, exc_info=True)
                self._failures[source.name] = why
                total.merge(RefreshResult(error=f"{source.name}: {why}"))
        self._rebuild_index()
        if not was_scanned and self.scanned:
            settle_long_lived()
        after = set(self._index)
        # Report membership changes of the merged view (a duplicate id is one run).
        total.added = [r for r in dict.fromkeys(total.added) if r in after and r not in before]
        total.removed = [r for r in dict.fromkeys(total.removed) if r in before and r not in after]
        total.changed = [r for r in dict.fromkeys(total.changed) if r in after]
        total.duration = time.perf_counter() - start
        return total

    def _rebuild_index(self) -> None:
        index: Dict[str, Any] = {}
        for source in self.sources:
            for run_id in source.run_ids():
                owner = index.get(run_id)
                if owner is None:
                    index[run_id] = source
                elif owner is not source:
                    msg = f"run {run_id} is in sources {owner.name!r} and {source.name!r}; serving the first"
                    if msg not in self._logged:
                        self._logged.add(msg)
                        log.warning("%s", msg)
        self._index = index
        for run_id in [r for r in self._wrapped if r not in index]:
            del self._wrapped[run_id]  # a removed run's wrapped summary

    # ------------------------------------------------------------------ queries

    def run_ids(self) -> List[str]:
        return list(self._index)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._index

    def _owner(self, run_id: str) -> Any:
        try:
            return self._index[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None

    def resolve(self, ref: str) -> str:
        """A full run id for `ref`: the id itself, or a unique prefix of >= 8 hex characters."""
        if ref in self._index:
            return ref
        if HEX_PREFIX.match(ref):
            matches = [r for r in self._index if r.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise AmbiguousRun(ref, len(matches))
        if "%" in ref or "\ufffd" in ref:
            # A folder name that is not valid UTF-8 is served escaped (jsonutil.escape_text).
            for run_id in self._index:
                if not run_id.isascii() and escape_text(run_id) == ref:
                    return run_id
        raise RunNotFound(ref)

    def get(self, run_id: str) -> Any:
        return self._owner(run_id).get(run_id)

    def _wrap(self, source: Any, summary: Dict[str, Any]) -> Dict[str, Any]:
        if "format" in summary:
            return summary
        run_id = summary["run_id"]
        cached = self._wrapped.get(run_id)
        if cached is not None and cached[0] is summary:
            return cached[1]
        out = sane_summary({**summary, "native_status": None, "format": "themis-v1", "source": source.name})
        self._wrapped[run_id] = (summary, out)
        return out

    def _summary_of(self, source: Any, run_id: str) -> Dict[str, Any]:
        """A run's summary; whatever goes wrong building it stays in that run's `error`."""
        try:
            return self._wrap(source, source.summary(run_id))
        except Exception as exc:
            message = f"run {run_id!r} in source {source.name!r}: its summary cannot be built: {type(exc).__name__}: {exc}"
            if message not in self._logged:
                self._logged.add(message)
                log.error("%s", message, exc_info=True)
            return {"run_id": run_id, "experiment_id": None, "status": "unknown", "num_samples": 0, "metrics": {},
                    "created_at": None, "updated_at": None, "completed_at": None, "error_message": None,
                    "model": None, "expected_samples": None, "generated": 0, "evaluated": 0, "failed": 0,
                    "progress": None, "error": f"summary cannot be built: {type(exc).__name__}: {exc}",
                    "native_status": None, "format": getattr(source, "format", "themis-v1"), "source": source.name}

    def summaries(self) -> List[Dict[str, Any]]:
        """Summaries of every run, newest first (by created_at, then run id)."""
        items = [self._summary_of(source, run_id) for run_id, source in self._index.items()]
        last_items, last = self._sorted
        if len(items) == len(last_items) and all(a is b for a, b in zip(items, last_items)):
            return last  # nothing changed: the same list object (the monitor checks for that first)
        out = sorted(items, key=lambda s: (s.get("created_at") or "", s["run_id"]), reverse=True)
        self._sorted = (items, out)
        return out

    def summary(self, run_id: str) -> Dict[str, Any]:
        return self._summary_of(self._owner(run_id), run_id)

    def detail_versioned(self, run_id: str, offset: int = 0, limit: Optional[int] = None,
                         include_pending: bool = False, encoded: bool = False):
        """`encoded`: the caller encodes the detail with `jsonutil`, so its samples may come
        as one `jsonutil.Encoded`."""
        source = self._owner(run_id)
        detail, version = source.detail_versioned(run_id, offset, limit, include_pending, encoded=encoded)
        if "format" not in detail:
            detail.update(native_status=None, format="themis-v1", source=source.name)
        return detail, version

    def detail(self, run_id: str, offset: int = 0, limit: Optional[int] = None,
               include_pending: bool = False) -> Dict[str, Any]:
        return self.detail_versioned(run_id, offset, limit, include_pending)[0]

    def scores(self, run_id: str) -> Dict[str, Dict[Any, List[float]]]:
        return self._owner(run_id).scores(run_id)

    def sample_ids(self, run_id: str) -> List[Any]:
        """Ids of a run's scored samples, in detail order."""
        return self._owner(run_id).sample_ids(run_id)

    def samples(self, run_id: str, ids: List[Any]) -> List[Dict[str, Any]]:
        """Detail samples (prompt, response, reference, scores, ...) for these ids, in that
        order; ids the run does not have are skipped. Reads text for these samples only."""
        return self._owner(run_id).samples(run_id, ids)

    def counters(self) -> Dict[str, int]:
        """Counts for /metrics: events of unknown types, events of unknown runs."""
        return {
            "unknown_events": sum(getattr(s, "unknown_events", 0) for s in self.sources),
            "orphan_events": sum(getattr(s, "orphan_events", 0) for s in self.sources),
            "invalid_lines": sum(getattr(s, "invalid_lines", 0) for s in self.sources),
        }

    def close(self) -> None:
        for s in self.sources:
            close = getattr(s, "close", None)
            if close is not None:
                close()


_TEXT_FIELDS = ("experiment_id", "created_at", "updated_at", "completed_at", "error_message", "model")
_COUNT_FIELDS = ("num_samples", "generated", "evaluated", "failed")


def sane_summary(summary: Dict[str, Any]) -> Dict[str, Any]:
    """A summary whose fields have the documented types: values of the wrong type read from a
    run's own files (a number as `created_at`, a list as `status`) are replaced and named in the
    run's `error`, so they cannot break sorting, filtering, events or metrics for every run."""
    problems = []
    status = summary.get("status")
    if not isinstance(status, str) or status not in STATUSES + ("unknown",):
        problems.append(f"status {str(status)[:40]!r} is not a known status")
        summary["status"] = "unknown"
    for name in _TEXT_FIELDS:
        value = summary.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} is a {type(value).__name__}, not text")
            summary[name] = None
    for name in _COUNT_FIELDS:
        value = summary.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name} is not a count")
            summary[name] = 0
    if not isinstance(summary.get("metrics"), dict):
        summary["metrics"] = {}
    if problems:
        found = "unexpected values in the run's files: " + "; ".join(problems)
        summary["error"] = f"{summary['error']}; {found}" if summary.get("error") else found
    return summary


def open_configured(storage: Any, serves_details: bool = True) -> Sources:
    """The sources a `storage` settings section names, opened as the daemon serves them (the
    web workers and the event poller alike)."""
    return open_sources(storage.specs(), password_file=storage.password_file,
                        cache_dir=storage.resolved_cache_dir(), max_line_bytes=storage.max_line_bytes,
                        extra_roots=storage.extra_roots, serves_details=serves_details)


def open_sources(specs: Sequence[Union[str, Dict[str, Any]]], *, password_file: Optional[str] = None,
                 clock: Callable[[], float] = time.time, cache_dir: Optional[str] = None,
                 max_line_bytes: Optional[int] = None, extra_roots: Sequence[str] = (),
                 serves_details: bool = True) -> Sources:
    """Open every configured source; the first that is not a store raises NotAStore."""
    out = []
    names: Dict[str, int] = {}
    for spec in specs:
        if isinstance(spec, dict):
            location = spec.get("url") or spec.get("path")
            name = spec.get("name")
            pw = spec.get("password_file") or password_file
        else:
            location, name, pw = spec, None, password_file
        source = open_source(str(location), name, password_file=pw, clock=clock, cache_dir=cache_dir,
                             max_line_bytes=max_line_bytes, extra_roots=extra_roots,
                             serves_details=serves_details)
        count = names.get(source.name, 0)
        names[source.name] = count + 1
        if count:
            source.name = f"{source.name}#{count + 1}"
        out.append(source)
    return Sources(out)
