"""One Themis run folder, read incrementally and summarised.

The files of a run only grow (metadata.json and dataset.jsonl are rewritten in place), so the
state is updated from appended units only; derived views are rebuilt lazily per version.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .jsonl import CorruptFile, JsonlTail, Unit, count_data_lines, is_header, read_units

log = logging.getLogger("themis_daemon.storage")

EVAL_SUFFIX = re.compile(r"::eval:[0-9a-f]{12}$")
STATUSES = ("in_progress", "completed", "failed", "cancelled")
FINAL_STATUSES = ("completed", "failed", "cancelled")
# A metadata.json that never parsed is only reported as broken once it is this old: before
# that it is most likely being written right now.
METADATA_GRACE_S = 5.0


def generation_key(eval_key: str) -> str:
    """The generation cache key an evaluation key was derived from (§5 of the storage spec)."""
    m = EVAL_SUFFIX.search(eval_key)
    return eval_key[: m.start()] if m else eval_key


def _resolve(path_base: str) -> Tuple[str, bool]:
    """Themis reads X.jsonl.gz when it exists, else X.jsonl."""
    gz = path_base + ".gz"
    if os.path.exists(gz):
        return gz, True
    return path_base, False


@dataclass
class GenRecord:
    unit: Unit
    ok: bool
    error: Optional[str]


@dataclass
class EvalRecord:
    sample_id: Any
    scores: Dict[str, float]
    failures: int


@dataclass
class Sample:
    """A sample as users see it: one dataset row, whatever number of evaluation lines it has."""

    id: Any
    eval_keys: List[Tuple[str, str]] = field(default_factory=list)  # (eval_id, eval key)
    gen_key: Optional[str] = None


@dataclass(frozen=True)
class View:
    """An immutable snapshot of a run's derived data, safe to share between threads."""

    version: int
    summary: Dict[str, Any]
    samples: List[Sample]
    scores: Dict[str, Dict[Any, List[float]]]
    per_sample: List[Dict[str, float]]


def _finite_mean(values: List[float]) -> Optional[float]:
    vals = [v for v in values if math.isfinite(v)]
    return math.fsum(vals) / len(vals) if vals else None


class RunState:
    """Cached state of one run folder; `refresh()` reads only files whose size or mtime moved."""

    def __init__(self, run_dir: str, run_id: str, experiment_id: str):
        self.dir = run_dir
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.lock = threading.RLock()
        self.version = 0
        self.meta: Optional[Dict[str, Any]] = None
        self._meta_sig: Optional[Tuple[int, int]] = None
        self.meta_error: Optional[str] = None
        self._meta_bad_since: Optional[float] = None
        self.error: Optional[str] = None  # storage read error, reported to users
        self._logged_errors: set = set()
        self._dataset_sig: Optional[Tuple[int, int, int]] = None
        self.expected: Optional[int] = None
        self._records: Optional[JsonlTail] = None
        self._tasks: Optional[JsonlTail] = None
        self._evals: Dict[str, JsonlTail] = {}
        self.gen: Dict[str, GenRecord] = {}
        self.tasks: Dict[str, Tuple[Unit, Any]] = {}  # task key -> (unit, dataset id or None)
        self._tasks_wanted = False
        self.evals: Dict[str, "OrderedDict[str, EvalRecord]"] = {}
        self.last_change = time.time()  # wall clock of the newest file change seen
        self._view: Optional[View] = None

    # ------------------------------------------------------------------ reading

    def refresh(self) -> bool:
        """Bring the state up to date with the folder; True when anything changed."""
        with self.lock:
            changed = False
            errors: List[str] = []
            for step in (self._refresh_metadata, self._refresh_dataset, self._refresh_records,
                         self._refresh_evaluations, self._refresh_tasks):
                try:
                    changed |= step()
                except CorruptFile as exc:
                    errors.append(str(exc))
                except OSError as exc:
                    errors.append(f"{exc.strerror or exc} ({os.path.relpath(exc.filename or self.dir, self.dir)})")
            if self.meta_error:
                errors.append(self.meta_error)
            error = "; ".join(errors) or None
            if error != self.error:
                self.error = error
                changed = True
                if error and error not in self._logged_errors:
                    self._logged_errors.add(error)
                    log.warning("run %r: %s", self.run_id, error)
            if changed:
                self.version += 1
                self.last_change = self._newest_mtime() or time.time()
            return changed

    def _newest_mtime(self) -> Optional[float]:
        """Newest modification among the files read: a killed writer shows as an old value."""
        stamps = [t.sig[2] for t in (self._records, self._tasks, *self._evals.values()) if t is not None and t.sig]
        if self._meta_sig:
            stamps.append(self._meta_sig[1])
        if self._dataset_sig:
            stamps.append(self._dataset_sig[2])
        return max(stamps) / 1e9 if stamps else None

    def _refresh_metadata(self) -> bool:
        path = os.path.join(self.dir, "metadata.json")
        st = os.stat(path)
        sig = (st.st_size, st.st_mtime_ns)
        if sig == self._meta_sig:
            return False
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            meta = json.loads(raw)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            # Rewritten in place (truncate + write): keep the last good value and retry later.
            now = time.time()
            if self._meta_bad_since is None:
                self._meta_bad_since = now
            if self.meta is None and now - max(self._meta_bad_since, st.st_mtime) >= METADATA_GRACE_S:
                self.meta_error = f"metadata.json unreadable: {exc}"
            return False
        self._meta_sig = sig
        self._meta_bad_since = None
        self.meta_error = None
        if meta != self.meta:
            self.meta = meta
            return True
        return False

    def _refresh_dataset(self) -> bool:
        path, gz = _resolve(os.path.join(self.dir, "generation", "dataset.jsonl"))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self.expected is not None:
                self.expected, self._dataset_sig = None, None
                return True
            return False
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self._dataset_sig:
            return False
        rows, complete = count_data_lines(path, gz)
        if not complete and self.expected is not None:
            return False  # being rewritten on resume: keep the previous count
        self._dataset_sig = sig
        if rows != self.expected:
            self.expected = rows
            return True
        return False

    def _tail(self, current: Optional[JsonlTail], base: str) -> Optional[JsonlTail]:
        path, gz = _resolve(base)
        if current is not None and current.path == path:
            return current
        if not os.path.exists(path):
            return current if current is not None and os.path.exists(current.path) else None
        return JsonlTail(path, gz)

    def _refresh_records(self) -> bool:
        tail = self._tail(self._records, os.path.join(self.dir, "generation", "records.jsonl"))
        if tail is not self._records:
            self._records = tail
            self.gen = {}
        if tail is None:
            return False
        reset, objs = tail.read_new()
        if reset:
            self.gen = {}
        for unit, obj in objs:
            if not isinstance(obj, dict) or is_header(obj):
                continue
            key = obj.get("cache_key") or obj.get("task_key")
            if not isinstance(key, str):
                continue
            err = obj.get("error")
            ok = obj.get("output") is not None and not err
            msg = err.get("message") if isinstance(err, dict) else (str(err) if err else None)
            self.gen[key] = GenRecord(unit, ok, msg)
        return bool(objs) or reset

    def _refresh_tasks(self) -> bool:
        if not self._tasks_wanted:
            return False
        tail = self._tail(self._tasks, os.path.join(self.dir, "generation", "tasks.jsonl"))
        if tail is not self._tasks:
            self._tasks = tail
            self.tasks = {}
        if tail is None:
            return False
        reset, objs = tail.read_new()
        if reset:
            self.tasks = {}
        for unit, obj in objs:
            if not isinstance(obj, dict) or is_header(obj):
                continue
            key = obj.get("task_key")
            if not isinstance(key, str):
                continue
            task = obj.get("task") if isinstance(obj.get("task"), dict) else {}
            md = task.get("metadata") if isinstance(task.get("metadata"), dict) else {}
            self.tasks[key] = (unit, md.get("dataset_id"))
        return bool(objs) or reset

    def _refresh_evaluations(self) -> bool:
        base = os.path.join(self.dir, "evaluations")
        try:
            eval_ids = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            eval_ids = []
        # "default" first: it is what evaluate() writes and what the original server reads.
        eval_ids.sort(key=lambda e: (e != "default", e))
        changed = False
        for eval_id in eval_ids:
            tail = self._tail(self._evals.get(eval_id), os.path.join(base, eval_id, "evaluation.jsonl"))
            if tail is None:
                continue
            if tail is not self._evals.get(eval_id):
                self._evals[eval_id] = tail
                self.evals[eval_id] = OrderedDict()
            reset, objs = tail.read_new()
            table = self.evals.setdefault(eval_id, OrderedDict())
            if reset:
                table.clear()
            for _unit, obj in objs:
                if not isinstance(obj, dict) or is_header(obj):
                    continue
                key = obj.get("cache_key")
                ev = obj.get("evaluation")
                if not isinstance(key, str) or not isinstance(ev, dict):
                    continue
                scores: Dict[str, float] = {}
                for s in ev.get("scores") or ():
                    if not isinstance(s, dict):
                        continue
                    name, value = s.get("metric_name"), s.get("value")
                    if isinstance(name, str) and isinstance(value, (int, float)):
                        scores[name] = float(value)
                sid = ev.get("sample_id")
                if sid is None or sid == "" or sid is False:
                    self._tasks_wanted = True  # the id has to come from the linked task
                    sid = None
                table[key] = EvalRecord(sid, scores, len(ev.get("failures") or ()))
            changed |= bool(objs) or reset
        return changed

    def want_tasks(self) -> None:
        """Start following tasks.jsonl (needed for prompts and for ids of null-id samples)."""
        with self.lock:
            if not self._tasks_wanted:
                self._tasks_wanted = True
                if self._refresh_tasks():
                    self.version += 1

    # ------------------------------------------------------------------ derived views

    def view(self) -> View:
        with self.lock:
            if self._view is None or self._view.version != self.version:
                self._view = self._build_view()
            return self._view

    def _sample_key(self, eval_key: str, rec: EvalRecord) -> Tuple[Any, str]:
        gen_key = generation_key(eval_key)
        if rec.sample_id is not None:
            return rec.sample_id, gen_key
        task = self.tasks.get(gen_key)
        if task is not None and task[1] is not None and task[1] != "":
            return task[1], gen_key
        return gen_key, gen_key

    def _build_view(self) -> View:
        samples: "OrderedDict[Any, Sample]" = OrderedDict()
        scores: Dict[str, Dict[Any, List[float]]] = {}
        for eval_id, table in self.evals.items():
            for key, rec in table.items():
                sid, gen_key = self._sample_key(key, rec)
                skey = (type(sid).__name__, sid)  # 1 and "1" are different samples
                s = samples.get(skey)
                if s is None:
                    s = samples[skey] = Sample(sid)
                s.eval_keys.append((eval_id, key))
                if gen_key in self.gen or s.gen_key is None:
                    s.gen_key = gen_key
                for name, value in rec.scores.items():
                    scores.setdefault(name, {}).setdefault(sid, []).append(value)
        per_sample: List[Dict[str, float]] = []
        for s in samples.values():
            merged: Dict[str, List[float]] = {}
            for eval_id, key in s.eval_keys:
                for name, value in self.evals[eval_id][key].scores.items():
                    merged.setdefault(name, []).append(value)
            per_sample.append({n: (sum(v) / len(v)) for n, v in merged.items()})
        metrics: Dict[str, Optional[float]] = {}
        for name, by_sample in scores.items():
            means = [m for m in (_finite_mean(v) for v in by_sample.values()) if m is not None]
            metrics[name] = math.fsum(means) / len(means) if means else None
        return View(self.version, self._summary(len(samples), metrics), list(samples.values()), scores, per_sample)

    def _summary(self, evaluated: int, metrics: Dict[str, Optional[float]]) -> Dict[str, Any]:
        meta = self.meta or {}
        status = meta.get("status") if meta.get("status") in STATUSES else ("unknown" if self.meta is None else str(meta.get("status")))
        generated = len(self.gen)
        failed = sum(1 for g in self.gen.values() if not g.ok)
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
            "metrics": {k: v for k, v in metrics.items() if v is not None},
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
        }

    # ------------------------------------------------------------------ sample text

    def load_samples(self, view: View, start: int, stop: Optional[int]) -> List[Dict[str, Any]]:
        """Build detail samples for view.samples[start:stop], reading prompt/response on demand."""
        self.want_tasks()
        chosen = view.samples[start:stop]
        per_sample = view.per_sample[start:stop]
        with self.lock:
            records_tail, tasks_tail = self._records, self._tasks
            rec_units = [self.gen[s.gen_key].unit if s.gen_key in self.gen else None for s in chosen]
            task_units = [self.tasks[s.gen_key][0] if s.gen_key in self.tasks else None for s in chosen]
        prompts = _load(tasks_tail, task_units)
        records = _load(records_tail, rec_units)
        out = []
        for s, scores, task, rec in zip(chosen, per_sample, prompts, records):
            prompt = ""
            if isinstance(task, dict):
                t = task.get("task") or {}
                p = t.get("prompt") if isinstance(t, dict) else None
                if isinstance(p, dict) and isinstance(p.get("text"), str):
                    prompt = p["text"]
            response = ""
            if isinstance(rec, dict):
                o = rec.get("output")
                if isinstance(o, dict) and isinstance(o.get("text"), str):
                    response = o["text"]
            item: Dict[str, Any] = {"id": s.id, "prompt": prompt, "response": response, "scores": scores}
            if isinstance(rec, dict) and rec.get("error"):
                err = rec["error"]
                item["error"] = err.get("message") if isinstance(err, dict) else str(err)
            out.append(item)
        return out


def _load(tail: Optional[JsonlTail], units: List[Optional[Unit]]) -> List[Any]:
    if tail is None:
        return [None] * len(units)
    idx = [i for i, u in enumerate(units) if u is not None]
    loaded = read_units(tail.path, tail.gz, [units[i] for i in idx]) if idx else []
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
