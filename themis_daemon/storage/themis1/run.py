"""One Themis run folder, read incrementally and summarised.

The files of a run only grow (metadata.json and dataset.jsonl are rewritten in place), so the
state is updated from appended units only; derived views are rebuilt lazily per version.
"""

from __future__ import annotations

import hashlib
import json

import msgspec
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ..base import FINAL_STATUSES, finite_mean, stable_mean
from .jsonl import CorruptFile, JsonlTail, Unit, count_data_lines, open_checked, read_units
from .lines import parse_evaluation, parse_record, parse_task
from .tables import pack, unpack

log = logging.getLogger("themis_daemon.storage")

EVAL_SUFFIX = re.compile(r"::eval:[0-9a-f]{12}$")
STATUSES = ("in_progress", "completed", "failed", "cancelled")  # what Themis 1.x writes
# A metadata.json that never parsed is only reported as broken once it is this old: before
# that it is most likely being written right now.
METADATA_GRACE_S = 5.0


MANIFEST_SUFFIX = re.compile(r"::[0-9a-f]{64}$")


def sample_key(key: str) -> str:
    """A generation key without its manifest hash (§5 of the storage spec): Themis generates a
    sample again when the manifest changes (say, a re-evaluation with other metrics), and the
    later generation stands for the same sample."""
    if key[-66:-64] == "::":
        m = MANIFEST_SUFFIX.search(key)
        if m:
            return key[: m.start()]
    return key


def generation_key(eval_key: str) -> str:
    """The generation cache key an evaluation key was derived from (§5 of the storage spec)."""
    m = EVAL_SUFFIX.search(eval_key)
    return eval_key[: m.start()] if m else eval_key


QUIET_AFTER_S = 60.0  # a finished run untouched this long gets the cheap check between full passes
RESOLVE_EVERY = 30  # full passes between re-checks of which of X.jsonl / X.jsonl.gz to read


def _resolve(path_base: str) -> Tuple[str, bool]:
    """Themis reads X.jsonl.gz when it exists, else X.jsonl."""
    gz = path_base + ".gz"
    if os.path.exists(gz):
        return gz, True
    return path_base, False


_IN_WORKER = False  # set in the scan worker processes, whose log lines would be lost


def mark_scan_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True


def digest(key: str) -> bytes:
    """A compact dictionary key for a long cache key (collisions at 2**-64 are not a concern)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()


# Compact per-line state, as plain tuples (a store holds hundreds of thousands of them):
#   generation: digest(cache key) -> (offset, length, index, ok)
#   task:       digest(task key)  -> (offset, length, index, dataset id or None)
#   evaluation: digest(eval key)  -> (generation digest, sample id or None, metric names, values,
#                                     generation key if it is needed as the sample id else None,
#                                     packed position of the line, see pack_unit)
_NAMES: Dict[Tuple[str, ...], Tuple[str, ...]] = {}


def _shared_names(names: Tuple[str, ...]) -> Tuple[str, ...]:
    """One tuple object per distinct metric-name list, shared by every evaluation line."""
    got = _NAMES.get(names)
    if got is None:
        if len(_NAMES) > 10_000:
            _NAMES.clear()
        got = _NAMES[names] = tuple(sys.intern(n) for n in names)
    return got


@dataclass
class Sample:
    """A sample as users see it: one dataset row, whatever number of evaluation lines it has."""

    id: Any
    gen: Optional[bytes] = None  # digest of the linked generation record
    scores: Dict[str, List[float]] = field(default_factory=dict)
    evals: List[Tuple[str, int]] = field(default_factory=list)  # (eval id, packed line position)


def pack_unit(offset: int, length: int, index: int) -> Any:
    """One int for where an evaluation line lives (a tuple only when it does not fit), so the
    per-line state grows by one slot rather than a tuple of three."""
    if length < 1 << 28 and index < 1 << 12:
        return (offset << 40) | (length << 12) | index
    return (offset, length, index)


def unpack_unit(packed: Any) -> Unit:
    if isinstance(packed, tuple):
        return Unit(*packed)
    return Unit(packed >> 40, (packed >> 12) & ((1 << 28) - 1), packed & 0xFFF)


@dataclass(frozen=True)
class View:
    """An immutable snapshot of a run's samples, built on demand and safe to share."""

    version: int
    samples: List[Sample]
    scores: Dict[str, Dict[Any, List[float]]]
    per_sample: List[Dict[str, float]]
    pending: List[Sample] = field(default_factory=list)  # generated, not evaluated yet


class RunState:
    """Cached state of one run folder; `refresh()` reads only files whose size or mtime moved."""

    # During a refresh: digest of each generation key read in it (see _refresh_records).
    _new_gen_digests: Optional[Dict[str, bytes]] = None

    def __init__(self, run_dir: str, run_id: str, experiment_id: str):
        self.dir = run_dir
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.lock = threading.RLock()
        self.version = 0
        self.meta: Optional[Dict[str, Any]] = None
        self._meta_sig: Optional[Tuple[int, int]] = None
        self.meta_error: Optional[str] = None
        self.meta_warning: Optional[str] = None
        self.warnings: List[str] = []  # what was skipped (invalid lines, a stale metadata.json)
        self.error: Optional[str] = None  # storage read error, reported to users
        self._logged_errors: set = set()
        self._dataset_sig: Optional[Tuple[int, int, int]] = None
        self.expected: Optional[int] = None
        self._records: Optional[JsonlTail] = None
        self._tasks: Optional[JsonlTail] = None
        self._evals: Dict[str, JsonlTail] = {}
        self.gen: Dict[bytes, tuple] = {}
        self.tasks: Dict[bytes, tuple] = {}
        self._tasks_wanted = False
        self.evals: Dict[str, Dict[bytes, tuple]] = {}
        # The three tables packed (tables.py); while set and the tables are not in use they
        # are dropped, and `_thaw` brings them back before anything reads or changes them.
        self._packed: Optional[bytes] = None
        self._thawed = True
        self.last_change = time.time()  # wall clock of the newest file change seen
        self._summary: Optional[Tuple[int, Dict[str, Any]]] = None
        self._view: Optional[View] = None
        self._positions: Optional[Tuple[View, Dict[Tuple[str, Any], int]]] = None
        self._meta_path = os.path.join(run_dir, "metadata.json")
        self._dataset_path: Optional[str] = None
        self._dataset_edges: Tuple[bytes, bytes] = (b"", b"")  # first and last bytes counted
        self._resolved: Dict[str, Tuple[str, bool]] = {}  # path base -> (path, gz), cached
        self._evals_dir_sig: Optional[int] = None
        self._eval_ids: List[str] = []
        self._full_passes = 0
        self.gone = False  # metadata.json vanished: the folder is no longer a run

    # ------------------------------------------------------------------ reading

    def quiet(self, now: float) -> bool:
        """Finished and untouched for a while: such runs are checked cheaply between full polls."""
        status = (self.meta or {}).get("status")
        return status in FINAL_STATUSES and self.error is None and now - self.last_change > QUIET_AFTER_S

    def _light_check(self) -> bool:
        """One stat of metadata.json, rewritten at every status change; True when a full
        refresh is needed. (A resume first shows in the dataset file, which full passes see.)"""
        try:
            st = os.stat(self._meta_path)
        except OSError:
            return True
        return (st.st_size, st.st_mtime_ns) != self._meta_sig

    def refresh(self, full: bool = True) -> bool:
        """Bring the state up to date with the folder; True when anything changed.

        With `full=False` a quiet finished run costs one stat call, which keeps a poll of a
        store with thousands of old runs cheap; the caller still asks for a full pass now and
        then, so nothing is missed for long.
        """
        with self.lock:
            if not full and self.quiet(time.time()) and not self._light_check():
                return False
            self._full_passes += 1
            if self._full_passes % RESOLVE_EVERY == 0:
                self._resolved.clear()  # notice a .gz appearing next to a plain file
            changed = False
            errors: List[str] = []
            self._new_gen_digests = {}
            try:
                for step in (self._refresh_metadata, self._refresh_dataset, self._refresh_records,
                             self._refresh_evaluations, self._refresh_tasks):
                    try:
                        changed |= step()
                    except CorruptFile as exc:
                        errors.append(str(exc))
                    except OSError as exc:
                        errors.append(f"{exc.strerror or exc} ({os.path.relpath(exc.filename or self.dir, self.dir)})")
                    except Exception as exc:  # noqa: BLE001 - whatever one run holds stays in that run's error
                        log.exception("run %r: unexpected error reading it", self.run_id)
                        errors.append(f"cannot read this run: {type(exc).__name__}: {exc}")
            finally:
                self._new_gen_digests = None
            if self.meta_error:
                errors.append(self.meta_error)
            error = "; ".join(errors) or None
            if error != self.error:
                self.error = error
                changed = True
                self.log_pending()
            warnings = self._warnings()
            if warnings != self.warnings:
                for warning in warnings:
                    if warning not in self.warnings and not _IN_WORKER:
                        log.warning("run %r: %s", self.run_id, warning)
                self.warnings = warnings
                changed = True
            if changed:
                self.version += 1
                self.last_change = self._newest_mtime() or time.time()
            return changed

    def _warnings(self) -> List[str]:
        out = [self.meta_warning] if self.meta_warning else []
        for tail in (self._records, *self._evals.values(), self._tasks):
            if tail is not None and tail.bad_lines:
                n = tail.bad_lines
                out.append(f"{os.path.relpath(tail.path, self.dir)}: {n} invalid line{'s' if n > 1 else ''} skipped")
        return out

    @property
    def invalid_lines(self) -> int:
        return sum(t.bad_lines for t in (self._records, self._tasks, *self._evals.values()) if t is not None)

    def continue_after(self, version: int) -> None:
        """Number this state's versions above `version` (an earlier state of the same run), so
        that nothing cached under an old version is taken for the new state."""
        with self.lock:
            if self.version <= version:
                self.version = version + 1

    def log_pending(self) -> None:
        """Log the current read error once (a worker process's log would be lost)."""
        if self.error and self.error not in self._logged_errors and not _IN_WORKER:
            self._logged_errors.add(self.error)
            log.warning("run %r: %s", self.run_id, self.error)

    def __getstate__(self) -> Dict[str, Any]:
        with self.lock:
            self.freeze()  # a scan worker sends one bytes object instead of every tuple
            state = dict(self.__dict__)
        del state["lock"]
        state["_view"] = None
        state["_positions"] = None
        return state

    # ------------------------------------------------------------------ persistent cache

    def to_cache(self) -> Optional[Dict[str, Any]]:
        """What the persistent cache keeps of this run (None: nothing worth keeping yet)."""
        with self.lock:
            if self.meta is None:
                return None
            self.summary()
            if self._packed is None:
                try:
                    self._packed = pack(self.gen, self.tasks, self.evals)
                except (OverflowError, TypeError, msgspec.EncodeError):
                    return None
            return {
                "run_id": self.run_id, "dir": self.dir, "experiment_id": self.experiment_id,
                "version": self.version, "meta": self.meta, "expected": self.expected,
                "dataset": None if self._dataset_sig is None or self._dataset_path is None else
                [self._dataset_path, *self._dataset_sig, *self._dataset_edges],
                "records": _tail_state(self._records), "tasks": _tail_state(self._tasks),
                "evals": {k: _tail_state(t) for k, t in self._evals.items()},
                "tasks_wanted": self._tasks_wanted, "tables": self._packed,
                "eval_dirs": [self._evals_dir_sig, self._eval_ids],
                "summary": self._summary[1], "last_change": self.last_change,
            }

    @classmethod
    def from_cache(cls, entry: Dict[str, Any], run_dir: str, run_id: str, experiment_id: str) -> Optional["RunState"]:
        """A run restored from its cache entry, or None if any file it was built from no longer
        matches (then the run is read from scratch). Appended bytes are read by the next refresh."""
        if entry.get("dir") != run_dir or entry.get("experiment_id") != experiment_id:
            return None
        state = cls(run_dir, run_id, experiment_id)
        tails = [_restore_tail(entry["records"]), _restore_tail(entry["tasks"])]
        evals = {k: _restore_tail(v) for k, v in entry["evals"].items() if v is not None}
        for tail in tails + list(evals.values()):
            if tail is not None and not tail.matches_file():
                return None
        state._records, state._tasks = tails
        state._evals_dir_sig, state._eval_ids = entry["eval_dirs"][0], list(entry["eval_dirs"][1])
        state._evals = evals
        state._tasks_wanted = bool(entry["tasks_wanted"])
        state._packed, state._thawed = entry["tables"], False
        state.gen, state.tasks, state.evals = {}, {}, {}
        state.version = int(entry["version"])
        state.meta = entry["meta"]  # metadata.json itself is read again by the first refresh
        state.expected = entry["expected"]
        dataset = entry["dataset"]
        if dataset is not None and _edges_match(dataset[0], dataset[1:4], dataset[4], dataset[5]):
            state._dataset_path = dataset[0]
            state._dataset_sig = tuple(dataset[1:4])
            state._dataset_edges = (dataset[4], dataset[5])
        state._summary = (state.version, entry["summary"])
        state.last_change = float(entry["last_change"])
        return state

    # ------------------------------------------------------------------ packed tables

    def freeze(self) -> None:
        """Keep the tables packed only (a run nobody is looking at)."""
        with self.lock:
            if not self._thawed:
                return
            if self._packed is None:
                try:
                    self._packed = pack(self.gen, self.tasks, self.evals)
                except (OverflowError, TypeError, msgspec.EncodeError):
                    return  # e.g. an integer id beyond 64 bits: stays unpacked
            self.gen, self.tasks, self.evals = {}, {}, {}
            self._thawed = False
            self._view = None
            self._positions = None

    def _thaw(self, changing: bool = False) -> None:
        """Unpack the tables before use; `changing` also drops the packed copy."""
        if not self._thawed:
            self.gen, self.tasks, self.evals = unpack(self._packed, _shared_names)
            self._thawed = True
        if changing:
            self._packed = None

    @property
    def frozen(self) -> bool:
        return not self._thawed

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    def _newest_mtime(self) -> Optional[float]:
        """Newest modification among the files read: a killed writer shows as an old value."""
        stamps = [t.sig[2] for t in (self._records, self._tasks, *self._evals.values()) if t is not None and t.sig]
        if self._meta_sig:
            stamps.append(self._meta_sig[1])
        if self._dataset_sig:
            stamps.append(self._dataset_sig[2])
        return max(stamps) / 1e9 if stamps else None

    def _refresh_metadata(self) -> bool:
        path = self._meta_path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.gone = True
            raise
        self.gone = False
        sig = (st.st_size, st.st_mtime_ns)
        if sig == self._meta_sig:
            return False
        with open_checked(path) as fh:
            raw = fh.read()
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            # Rewritten in place (truncate + write): keep the last good value and retry later.
            # A file nobody has written to for a while is broken, and that is reported: as the
            # run's error when there is no good value, else as a warning next to the last one.
            if time.time() - st.st_mtime >= METADATA_GRACE_S:
                if self.meta is None:
                    self.meta_error = f"metadata.json unreadable: {exc}"
                else:
                    self.meta_warning = f"metadata.json unreadable ({exc}); showing its last readable content"
            return False
        self._meta_sig = sig
        self.meta_error = self.meta_warning = None
        if meta != self.meta:
            self.meta = meta
            return True
        return False

    def _refresh_dataset(self) -> bool:
        path, gz = self._resolve_cached(os.path.join(self.dir, "generation", "dataset.jsonl"))
        try:
            st = os.stat(path)
            self._dataset_path = path
        except FileNotFoundError:
            self._resolved.clear()
            self._dataset_path = None
            if self.expected is not None:
                self.expected, self._dataset_sig = None, None
                return True
            return False
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self._dataset_sig:
            return False
        rows, complete, edges = count_data_lines(path, gz)
        if not complete and self.expected is not None:
            return False  # being rewritten on resume: keep the previous count
        self._dataset_sig = sig
        self._dataset_edges = edges
        if rows != self.expected:
            self.expected = rows
            return True
        return False

    def _resolve_cached(self, base: str) -> Tuple[str, bool]:
        got = self._resolved.get(base)
        if got is None:
            got = _resolve(base)
            if os.path.exists(got[0]):
                self._resolved[base] = got  # only existing files are remembered
        return got

    def _tail(self, current: Optional[JsonlTail], base: str) -> Optional[JsonlTail]:
        path, gz = self._resolve_cached(base)
        if current is not None and current.path == path:
            return current
        if not os.path.exists(path):
            return current if current is not None and os.path.exists(current.path) else None
        return JsonlTail(path, gz)

    def _follow(self, current: Optional[JsonlTail], base: str, parse):
        """Read what one followed JSONL file gained: (tail, new kept lines, start_over, changed).

        `parse` keeps what the state needs of a line (None: nothing to keep). `start_over`
        means the file was replaced, rewritten or resolved to its other name, so the caller's
        table for it must be emptied before the new lines go in.
        """
        tail = self._tail(current, base)
        if tail is None:
            return None, [], current is not None, False
        reset, lines, seen = tail.read_new(parse=parse)
        start_over = tail is not current or reset
        return tail, lines, start_over, bool(seen) or reset

    def _refresh_records(self) -> bool:
        self._records, lines, start_over, changed = self._follow(
            self._records, os.path.join(self.dir, "generation", "records.jsonl"), parse_record)
        if not lines and not start_over:
            return changed
        self._thaw(changing=True)
        if start_over:
            self.gen = {}
        gen = self.gen
        # The evaluation lines read in the same pass link to these keys: their digests are
        # looked up there instead of being computed again (a cold start links every sample).
        fresh = self._new_gen_digests if self._new_gen_digests is not None else {}  # (not `or`: {} is falsy)
        for offset, length, index, (key, ok) in lines:
            d = fresh[key] = digest(sample_key(key))
            gen[d] = (offset, length, index, ok)
        return changed

    def _refresh_tasks(self) -> bool:
        if not self._tasks_wanted:
            return False
        self._tasks, lines, start_over, changed = self._follow(
            self._tasks, os.path.join(self.dir, "generation", "tasks.jsonl"), parse_task)
        if not lines and not start_over:
            return changed
        self._thaw(changing=True)
        if start_over:
            self.tasks = {}
        tasks = self.tasks
        for offset, length, index, (key, dataset_id) in lines:
            tasks[digest(sample_key(key))] = (offset, length, index, dataset_id)
        return changed

    def _refresh_evaluations(self) -> bool:
        base = os.path.join(self.dir, "evaluations")
        try:
            dir_sig = os.stat(base).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            dir_sig = None
        if dir_sig != self._evals_dir_sig or dir_sig is None:
            try:
                found = [e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")]
            except (FileNotFoundError, NotADirectoryError):
                found = []
            # "default" first: it is what evaluate() writes and what the original server reads.
            self._eval_ids = sorted(found, key=lambda e: (e != "default", e))
            self._evals_dir_sig = dir_sig
        eval_ids = self._eval_ids
        changed = False
        for eval_id in eval_ids:
            tail, lines, start_over, grew = self._follow(
                self._evals.get(eval_id), os.path.join(base, eval_id, "evaluation.jsonl"), parse_evaluation)
            if tail is None:
                continue
            self._evals[eval_id] = tail
            if not lines and not start_over:
                changed |= grew
                continue
            self._thaw(changing=True)
            if start_over:
                self.evals[eval_id] = {}
            table = self.evals.setdefault(eval_id, {})
            fresh = self._new_gen_digests if self._new_gen_digests is not None else {}
            for offset, length, index, (key, sid, names, values) in lines:
                m = EVAL_SUFFIX.search(key)
                gen_key = key[: m.start()] if m else key
                fallback = None
                if sid is None or sid == "" or sid is False:
                    self._tasks_wanted = True  # the id has to come from the linked task
                    sid, fallback = None, gen_key
                k = digest(key)
                if k in table:
                    del table[k]  # a re-written line moves to where it was last seen
                gen_digest = fresh.get(gen_key)
                if gen_digest is None:
                    gen_digest = digest(sample_key(gen_key))
                table[k] = (gen_digest, sid, _shared_names(names), values, fallback,
                            pack_unit(offset, length, index))
            changed |= grew
        return changed

    def want_tasks(self) -> None:
        """Start following tasks.jsonl (needed for prompts and for ids of null-id samples)."""
        with self.lock:
            if not self._tasks_wanted:
                self._tasks_wanted = True
                if self._refresh_tasks():
                    self.version += 1

    # ------------------------------------------------------------------ derived views

    def summary(self) -> Dict[str, Any]:
        """The run summary, rebuilt only when the run changed."""
        with self.lock:
            if self._summary is None or self._summary[0] != self.version:
                self._thaw()
                self._summary = (self.version, self._build_summary())
            return self._summary[1]

    def view(self) -> View:
        """Per-sample data for details and comparisons, built on demand."""
        with self.lock:
            if self._view is None or self._view.version != self.version:
                self._thaw()
                self._view = self._build_view()
            return self._view

    def drop_view(self) -> None:
        """Free the per-sample view and pack the tables; the store keeps only a few alive."""
        with self.lock:
            self._view = None
            self._positions = None
            self.freeze()

    def _sample_id(self, rec: tuple) -> Any:
        if rec[1] is not None:
            return rec[1]
        task = self.tasks.get(rec[0])
        if task is not None and task[3] is not None and task[3] != "":
            return task[3]
        return rec[4]

    def _grouped(self):
        """Evaluation lines grouped by sample, in order of first appearance."""
        samples: Dict[Tuple[str, Any], Sample] = {}
        for eval_id, table in self.evals.items():
            for rec in table.values():
                sid = self._sample_id(rec)
                skey = (type(sid).__name__, sid)  # 1 and "1" are different samples
                smp = samples.get(skey)
                if smp is None:
                    smp = samples[skey] = Sample(sid)
                if rec[0] in self.gen or smp.gen is None:
                    smp.gen = rec[0]
                for name, value in zip(rec[2], rec[3]):
                    smp.scores.setdefault(name, []).append(value)
                if len(rec) > 5:
                    smp.evals.append((eval_id, rec[5]))
        return samples

    def _build_summary(self) -> Dict[str, Any]:
        """Per metric, the mean over samples of each sample's finite mean (as `_grouped` would
        give, without building samples: a sample almost always has a single line, whose
        finite values are its means, so the general case is taken only for the others)."""
        groups: Dict[Tuple[type, Any], Any] = {}
        for table in self.evals.values():
            for rec in table.values():
                sid = rec[1] if rec[1] is not None else self._sample_id(rec)
                skey = (type(sid), sid)  # 1 and "1" are different samples
                got = groups.get(skey)
                if got is None:
                    groups[skey] = rec
                elif type(got) is list:
                    got.append(rec)
                else:
                    groups[skey] = [got, rec]
        sums: Dict[str, List[float]] = {}
        for got in groups.values():
            if type(got) is tuple:
                for name, value in zip(got[2], got[3]):
                    if value - value == 0.0:  # finite
                        acc = sums.get(name)
                        if acc is None:
                            sums[name] = [value]
                        else:
                            acc.append(value)
                continue
            per: Dict[str, List[float]] = {}
            for rec in got:
                for name, value in zip(rec[2], rec[3]):
                    per.setdefault(name, []).append(value)
            for name, values in per.items():
                mean = finite_mean(values)
                if mean is not None:
                    sums.setdefault(name, []).append(mean)
        metrics = {name: stable_mean(v) for name, v in sums.items()}
        return self._summary_dict(len(groups), metrics)

    def _build_view(self) -> View:
        samples = list(self._grouped().values())
        scores: Dict[str, Dict[Any, List[float]]] = {}
        per_sample: List[Dict[str, float]] = []
        for smp in samples:
            per_sample.append({n: stable_mean(v) for n, v in smp.scores.items()})
            for name, values in smp.scores.items():
                scores.setdefault(name, {}).setdefault(smp.id, []).extend(values)
        linked = {rec[0] for table in self.evals.values() for rec in table.values()}
        pending = []
        for gen in self.gen:  # file order
            if gen not in linked:
                task = self.tasks.get(gen)
                pending.append(Sample(task[3] if task is not None and task[3] not in (None, "") else None, gen))
        return View(self.version, samples, scores, per_sample, pending)

    def _summary_dict(self, evaluated: int, metrics: Dict[str, float]) -> Dict[str, Any]:
        meta = self.meta or {}
        raw_status = meta.get("status")
        if self.meta is None:
            status = "unknown"
        else:
            status = raw_status if raw_status in STATUSES else str(raw_status)
        generated = len(self.gen)
        failed = sum(1 for g in self.gen.values() if not g[3])
        expected = self.expected
        if status == "completed":
            progress: Optional[float] = 1.0
        elif expected:
            progress = min(1.0, max(0.0, generated / expected))
        else:
            progress = None
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "status": status,
            "num_samples": evaluated,
            "metrics": metrics,
            "created_at": meta.get("created_at"),
            "updated_at": meta.get("updated_at"),
            "completed_at": meta.get("completed_at"),
            "error_message": meta.get("error_message"),
            "model": _model(meta),
            "expected_samples": expected,
            "generated": generated,
            "evaluated": evaluated,
            "failed": failed,
            "progress": progress,
            "error": self.error,
            "warnings": list(self.warnings),
        }

    # ------------------------------------------------------------------ sample text

    def positions_by_id(self, view: View) -> Dict[Tuple[str, Any], int]:
        """Where each sample id sits in the view; kept per view, as a download asks for every
        chunk of a big run in turn."""
        with self.lock:
            cached = self._positions
            if cached is not None and cached[0] is view:
                return cached[1]
        where = {(type(s.id).__name__, s.id): i for i, s in enumerate(view.samples)}
        with self.lock:
            self._positions = (view, where)
        return where

    def load_positions(self, view: View, positions, include_pending: bool = False) -> List[Dict[str, Any]]:
        """Detail samples at these positions of the view (evaluated samples, then pending ones)."""
        return build_page(self.page_inputs(view, positions, include_pending))

    def page_inputs(self, view: View, positions, include_pending: bool = False) -> "PageInputs":
        """All that building these detail samples needs, picklable: where each text lives, the
        scores, the ids (a detail worker process builds a big page from this)."""
        self.want_tasks()
        n_eval = len(view.samples)
        positions = list(positions)
        chosen = [view.samples[p] if p < n_eval else view.pending[p - n_eval] for p in positions]
        per_sample = [view.per_sample[p] if p < n_eval else {} for p in positions]
        with self.lock:
            self._thaw()
            records_tail, tasks_tail = self._records, self._tasks
            rec_units = [Unit(*self.gen[s.gen][:3]) if s.gen in self.gen else None for s in chosen]
            task_units = [Unit(*self.tasks[s.gen][:3]) if s.gen in self.tasks else None for s in chosen]
            eval_tails = dict(self._evals)
        return PageInputs(positions, [s.id for s in chosen], per_sample, [s.evals for s in chosen],
                          _where(tasks_tail), task_units, _where(records_tail), rec_units,
                          {k: (t.path, t.gz) for k, t in eval_tails.items()}, n_eval, include_pending)


class PageInputs(NamedTuple):
    positions: List[int]
    ids: List[Any]
    scores: List[Dict[str, Any]]
    evals: List[List[Tuple[str, int]]]
    tasks: Optional[Tuple[str, bool]]          # (path, gzipped) of the file, None: none
    task_units: List[Optional[Unit]]
    records: Optional[Tuple[str, bool]]
    rec_units: List[Optional[Unit]]
    eval_files: Dict[str, Tuple[str, bool]]
    n_eval: int
    include_pending: bool


def _where(tail: Optional[JsonlTail]) -> Optional[Tuple[str, bool]]:
    return None if tail is None else (tail.path, tail.gz)


def build_page(page: PageInputs) -> List[Dict[str, Any]]:
    """Read, decode and assemble the detail samples of a page (in this process or a worker)."""
    prompts = _load(page.tasks, page.task_units)
    records = _load(page.records, page.rec_units)
    details = _load_details(page.evals, page.eval_files)
    include_pending, n_eval = page.include_pending, page.n_eval
    out = []
    for position, sid, scores, task, rec, det in zip(page.positions, page.ids, page.scores, prompts, records, details):
        prompt = ""
        reference: Any = None
        if isinstance(task, dict):
            t = task.get("task") or {}
            p = t.get("prompt") if isinstance(t, dict) else None
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                prompt = p["text"]
            ref = t.get("reference") if isinstance(t, dict) else None
            if isinstance(ref, dict):
                reference = ref.get("value")
        response = ""
        if isinstance(rec, dict):
            o = rec.get("output")
            if isinstance(o, dict) and isinstance(o.get("text"), str):
                response = o["text"]
        if sid is None and isinstance(rec, dict):  # a pending sample without a dataset id
            sid = rec.get("cache_key") or rec.get("task_key")
        item: Dict[str, Any] = {"id": sid, "prompt": prompt, "response": response, "scores": scores,
                                "reference": reference}
        if det:
            item["details"] = det
        if include_pending:
            item["pending"] = position >= n_eval
        if isinstance(rec, dict) and rec.get("error"):
            err = rec["error"]
            item["error"] = err.get("message") if isinstance(err, dict) else str(err)
        out.append(item)
    return out


def _load_details(evals: List[List[Tuple[str, int]]], files: Dict[str, Tuple[str, bool]]) -> List[Dict[str, Any]]:
    """Per metric, the free-form `details` of the evaluation lines that scored each sample
    (the last line wins, as for repeated metrics within a line)."""
    wanted: Dict[str, List[Tuple[int, Unit]]] = {}
    for i, sample_evals in enumerate(evals):
        for eval_id, packed in sample_evals:
            wanted.setdefault(eval_id, []).append((i, unpack_unit(packed)))
    out: List[Dict[str, Any]] = [{} for _ in evals]
    for eval_id, items in wanted.items():
        where = files.get(eval_id)
        if where is None:
            continue
        try:
            objs = read_units(where[0], where[1], [u for _, u in items])
        except OSError:
            continue
        for (i, _), obj in zip(items, objs):
            ev = obj.get("evaluation") if isinstance(obj, dict) else None
            for sc in (ev.get("scores") or ()) if isinstance(ev, dict) else ():
                if isinstance(sc, dict) and isinstance(sc.get("metric_name"), str) \
                        and isinstance(sc.get("details"), dict) and sc["details"]:
                    out[i][sc["metric_name"]] = sc["details"]
    return out


def _tail_state(tail: Optional[JsonlTail]) -> Optional[list]:
    if tail is None or tail.sig is None:
        return None
    return [tail.path, tail.gz, tail.offset, *tail.sig, tail.bad_lines, tail.head, tail.last]


def _restore_tail(state: Optional[list]) -> Optional[JsonlTail]:
    if state is None:
        return None
    path, gz, offset, ino, size, mtime, bad, head, last = state
    tail = JsonlTail(path, bool(gz))
    tail.offset, tail.sig, tail.bad_lines, tail.head, tail.last = int(offset), (ino, size, mtime), bad, head, last
    return tail


def _edges_match(path: str, sig: list, head: bytes, last: bytes) -> bool:
    """The dataset file is the one counted: same inode, size, mtime, first and last bytes."""
    try:
        with open_checked(path) as fh:
            st = os.fstat(fh.fileno())
            if (st.st_ino, st.st_size, st.st_mtime_ns) != tuple(sig) or fh.read(len(head)) != head:
                return False
            fh.seek(st.st_size - len(last))
            return fh.read(len(last)) == last
    except OSError:
        return False


def _load(where: Optional[Tuple[str, bool]], units: List[Optional[Unit]]) -> List[Any]:
    if where is None:
        return [None] * len(units)
    idx = [i for i, u in enumerate(units) if u is not None]
    try:
        loaded = read_units(where[0], where[1], [units[i] for i in idx]) if idx else []
    except (OSError, CorruptFile):
        # Unreadable now (permissions, a FIFO, a link out of the store): the detail is served
        # without these texts, and the run's `error` (from its last poll) says why.
        loaded = []
    out: List[Any] = [None] * len(units)
    for i, obj in zip(idx, loaded):
        out[i] = obj
    return out


def _model(meta: Dict[str, Any]) -> Optional[str]:
    snap = meta.get("config_snapshot")
    if not isinstance(snap, dict):
        return None
    manifest = snap.get("reproducibility_manifest")
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        return None
    provider, ident = model.get("provider"), model.get("identifier")
    if provider and ident:
        return f"{provider}:{ident}"
    return ident or None
