"""Write experiment runs byte-for-byte the way Themis 1.4.0 does (no Tornado here).

Used by tests, benchmarks and the daemon's ``--demo`` mode. The format follows
``shared/docs/themis-storage-v1.md`` and was checked against the real fixtures:

* JSON via ``json.dumps`` with default separators (ASCII-escaped), key order as Themis.
* every JSONL file starts with a header line; in gzip mode the header (and, for
  ``dataset``, all rows) is one gzip member named after the file, and every appended
  line is its own gzip member named after Themis' temp file (``.tmp_XXXXXXXX.json``),
  compression level 9 with a sync flush before close (exactly what
  ``gzip.open(...); f.write(); f.flush(); f.close()`` produces);
* ``metadata.json`` / ``report.json`` pretty JSON (indent 2, no trailing newline),
  rewritten in place (truncate + write);
* cache keys ``k2::<id>::default::<provider>:<model>::<t>-<p>-<max>::<prompt 12>::<ref 12>::<manifest 64>``,
  evaluation keys = task key + ``::eval:<12 hex>``.

All randomness (fake answers, timings, temp names) comes from generators seeded by
``seed``; all time stamps come from ``clock`` (a callable returning a naive local
``datetime``). With the same seed and an equally behaving clock, step-by-step writing
and :func:`write_completed_run` produce identical bytes.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import random
import re
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

__all__ = [
    "ThemisRunWriter",
    "make_arith_dataset",
    "write_completed_run",
    "gzip_member",
    "upsert_sqlite",
    "FixedStepClock",
    "DEFAULT_METRICS",
    "FORMAT_VERSION",
]

FORMAT_VERSION = "2.0.0"
DEFAULT_METRICS = ("ExactMatch", "MathVerifyAccuracy", "ResponseLength")
EXTRACTOR = "themis.evaluation.extractors.json_field_extractor.JsonFieldExtractor"
_METRIC_CLASSES = {
    "ExactMatch": "themis.evaluation.metrics.exact_match.ExactMatch",
    "MathVerifyAccuracy": "themis.evaluation.metrics.math_verify_accuracy.MathVerifyAccuracy",
    "ResponseLength": "themis.evaluation.metrics.response_length.ResponseLength",
    "BLEU": "themis.evaluation.metrics.nlp.bleu.BLEU",
    "ROUGE": "themis.evaluation.metrics.nlp.rouge.ROUGE",
    "F1Score": "themis.evaluation.metrics.f1_score.F1Score",
    "BERTScore": "themis.evaluation.metrics.nlp.bertscore.BERTScore",
    "Perplexity": "themis.evaluation.metrics.perplexity.Perplexity",
}
#: metric names used by ``--metrics N`` style helpers (first N of this list)
METRIC_CATALOG = tuple(_METRIC_CLASSES)
_PACKAGE_VERSIONS = {
    "themis-eval": "1.4.0",
    "pydantic": "2.14.4",
    "cyclopts": "5.5.2",
    "litellm": "1.110.2",
}
_RUNTIME = {"python_version": "3.11.7", "platform": "Linux-6.18.44-fc-v657-x86_64-with-glibc2.36"}
_TMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_PROMPT_RE = re.compile(r"What is\s+(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)")
_PROVIDER_ERROR = "upstream connection reset (HTTP 503)"
_PARTIAL_KINDS = ("template", "task", "record", "evaluation", "metadata", "dataset")


# --------------------------------------------------------------------------- helpers


def _canonical_hash(obj) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")
    ).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ts(value: _dt.datetime) -> str:
    return value.isoformat()


def _mtime(value: _dt.datetime) -> int:
    return int(value.timestamp()) & 0xFFFFFFFF


def _line(obj) -> bytes:
    return (json.dumps(obj) + "\n").encode("utf-8")


def gzip_member(data: bytes, fname: str, mtime: int) -> bytes:
    """One gzip member exactly as Python's ``gzip.GzipFile(fname, 'wb', compresslevel=9)``
    writes it when ``flush()`` is called before ``close()`` (FNAME set, XFL=2, OS=255)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
    body = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH) + comp.flush()
    header = (
        b"\x1f\x8b\x08\x08"
        + struct.pack("<I", mtime & 0xFFFFFFFF)
        + b"\x02\xff"
        + fname.encode("latin-1")
        + b"\x00"
    )
    return header + body + struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def _fmt_exact(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def make_arith_dataset(n: int, seed: int = 0) -> List[dict]:
    """Rows like the fixtures' ``arith20``: ``{"id": "q0001", "a", "op", "b", "answer"}``.

    Operators come in four equal blocks (+, -, *, /) as in the fixtures; divisions always
    have a terminating decimal result; ``answer`` is the exact result as a string.
    """
    rng = random.Random(seed)
    width = max(4, len(str(n)))
    rows = []
    for i in range(n):
        op = "+-*/"[(i * 4) // n] if n else "+"
        if op == "+":
            a, b = rng.randint(1, 60), rng.randint(1, 60)
            res = a + b
        elif op == "-":
            a, b = rng.randint(1, 60), rng.randint(1, 60)
            res = a - b
        elif op == "*":
            a, b = rng.randint(1, 15), rng.randint(1, 25)
            res = a * b
        else:
            b = rng.choice((1, 2, 4, 5, 8, 10))
            a = rng.randint(1, 12) * (b if rng.random() < 0.5 else 1)
            res = a / b
        rows.append({"id": "q%0*d" % (width, i + 1), "a": a, "op": op, "b": b, "answer": _fmt_exact(res)})
    return rows


class FixedStepClock:
    """Deterministic clock: returns ``start`` then advances by ``step`` on every call."""

    def __init__(self, start: Optional[_dt.datetime] = None, step: _dt.timedelta = _dt.timedelta(milliseconds=1)):
        self._now = start or _dt.datetime(2026, 1, 1, 12, 0, 0, 123456)
        self._step = step

    def __call__(self) -> _dt.datetime:
        value = self._now
        self._now = value + self._step
        return value


def upsert_sqlite(root, metadata: dict) -> None:
    """Upsert one run row (and its experiment row) into ``<root>/experiments.db`` (§6, WAL)."""
    db_path = os.path.join(os.fspath(root), "experiments.db")
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS experiments (
                experiment_id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL, config TEXT, tags TEXT);
            CREATE TABLE IF NOT EXISTS runs (
                run_id TEXT PRIMARY KEY, experiment_id TEXT NOT NULL, status TEXT NOT NULL,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL, completed_at TEXT,
                total_samples INTEGER DEFAULT 0, successful_generations INTEGER DEFAULT 0,
                failed_generations INTEGER DEFAULT 0, config_snapshot TEXT, error_message TEXT,
                FOREIGN KEY (experiment_id) REFERENCES experiments(experiment_id));
            CREATE TABLE IF NOT EXISTS evaluations (
                eval_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, eval_name TEXT NOT NULL,
                created_at TEXT NOT NULL, metrics_config TEXT, total_evaluated INTEGER DEFAULT 0,
                total_failures INTEGER DEFAULT 0, FOREIGN KEY (run_id) REFERENCES runs(run_id));
            CREATE INDEX IF NOT EXISTS idx_runs_experiment ON runs(experiment_id);
            CREATE INDEX IF NOT EXISTS idx_runs_status ON runs(status);
            CREATE INDEX IF NOT EXISTS idx_evaluations_run ON evaluations(run_id);
            """
        )
        m = metadata
        conn.execute(
            "INSERT OR IGNORE INTO experiments (experiment_id, name, description, created_at, updated_at, config, tags)"
            " VALUES (?, ?, NULL, ?, ?, NULL, NULL)",
            (m["experiment_id"], m["experiment_id"], m["created_at"], m["updated_at"]),
        )
        conn.execute(
            "INSERT OR REPLACE INTO runs (run_id, experiment_id, status, created_at, updated_at, completed_at,"
            " total_samples, successful_generations, failed_generations, config_snapshot, error_message)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m["run_id"], m["experiment_id"], m["status"], m["created_at"], m["updated_at"],
                m["completed_at"], m["total_samples"], m["successful_generations"],
                m["failed_generations"], json.dumps(m["config_snapshot"]), m["error_message"],
            ),
        )
        conn.commit()
    finally:
        conn.close()


# --------------------------------------------------------------------------- sinks


class _Unit:
    """One write: ``append`` (a complete JSONL line/member) or ``rewrite`` (truncate + write)."""

    __slots__ = ("kind", "path", "mode", "_data", "tmp")

    def __init__(self, kind: str, path: Path, mode: str, data, tmp: Optional[str] = None):
        self.kind, self.path, self.mode, self._data, self.tmp = kind, path, mode, data, tmp

    def data(self) -> bytes:
        if callable(self._data):
            self._data = self._data()
        return self._data


class _DirectSink:
    def __init__(self, lock_path: Path, use_lock: bool, fsync: bool, tmp_files: bool):
        self.lock_path, self.use_lock, self.fsync, self.tmp_files = lock_path, use_lock, fsync, tmp_files

    def emit(self, units: Sequence[_Unit]) -> None:
        fd_lock = None
        if self.use_lock and self.lock_path.exists():
            fd_lock = os.open(self.lock_path, os.O_RDWR)
            fcntl.flock(fd_lock, fcntl.LOCK_EX)
        try:
            for unit in units:
                self.write(unit, unit.data())
        finally:
            if fd_lock is not None:
                fcntl.flock(fd_lock, fcntl.LOCK_UN)
                os.close(fd_lock)

    def write(self, unit: _Unit, data: bytes) -> None:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        if unit.mode == "append":
            tmp_path = None
            if self.tmp_files and unit.tmp:
                # Themis writes the unit to a temp file first, appends, then deletes it.
                tmp_path = unit.path.parent / unit.tmp
                fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    _write_all(fd, data)
                finally:
                    os.close(fd)
            _append(unit.path, data, self.fsync)
            if tmp_path is not None:
                os.unlink(tmp_path)
        else:
            _rewrite(unit.path, data, self.fsync)

    def flush(self) -> None:
        pass


class _BufferSink:
    """Collects units in memory; ``flush`` writes each file with one write call."""

    def __init__(self):
        self.files = {}

    def emit(self, units) -> None:
        for unit in units:
            if unit.mode == "append":
                self.files.setdefault(unit.path, []).append(unit)
            else:
                self.files[unit.path] = [unit]

    def flush(self) -> None:
        for path, units in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            data = b"".join(u.data() for u in units)
            _rewrite(path, data, False)
        self.files = {}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _append(path: Path, data: bytes, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _rewrite(path: Path, data: bytes, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- writer


class ThemisRunWriter:
    """Produces one run folder exactly as Themis 1.4.0's ``evaluate()`` would.

    Life cycle: :meth:`start` → (:meth:`generate` / :meth:`evaluate_pending` / :meth:`step`)*
    → :meth:`complete` or :meth:`fail` (or nothing: a killed writer stays ``in_progress``).
    """

    def __init__(
        self,
        root,
        run_id: str,
        *,
        experiment_id: str = "default",
        compression: str = "gzip",
        dataset: Optional[Sequence[dict]] = None,
        provider: str = "fake",
        model: str = "fake-math-llm",
        template: str = "What is {a} {op} {b}?",
        metrics: Sequence[str] = DEFAULT_METRICS,
        eval_batch: int = 100,
        accuracy: float = 0.8,
        seed: int = 0,
        clock: Optional[Callable[[], _dt.datetime]] = None,
        sqlite: bool = False,
        fail_ids: Iterable = (),
        provider_seed: int = 7,
        temperature: float = 0.0,
        top_p: float = 0.95,
        max_tokens: int = 512,
        template_name: str = "default",
        id_field: str = "id",
        reference_field: str = "answer",
        lock: bool = True,
        fsync: bool = False,
        tmp_files: bool = False,
        buffered: bool = False,
    ):
        if compression not in ("gzip", "none"):
            raise ValueError("compression must be 'gzip' or 'none'")
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError("invalid run id: %r" % (run_id,))
        if eval_batch < 1:
            raise ValueError("eval_batch must be >= 1")
        self.root = Path(root)
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.compression = compression
        self.dataset = [dict(r) for r in (make_arith_dataset(20) if dataset is None else dataset)]
        self.provider, self.model, self.template = provider, model, template
        self.metrics = tuple(metrics)
        self.eval_batch = eval_batch
        self.accuracy = accuracy
        self.seed = seed
        self.clock = clock or _dt.datetime.now
        self.sqlite = sqlite
        self.fail_ids = set(fail_ids)
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.template_name = template_name
        self.id_field, self.reference_field = id_field, reference_field
        self.provider_seed = provider_seed

        self.run_dir = self.root / "experiments" / experiment_id / "runs" / run_id
        ext = ".jsonl.gz" if compression == "gzip" else ".jsonl"
        gen = self.run_dir / "generation"
        self.paths = {
            "metadata": self.run_dir / "metadata.json",
            "lock": self.run_dir / ".lock",
            "index": self.run_dir / ".index.json",
            "report": self.run_dir / "report.json",
            "dataset": gen / ("dataset" + ext),
            "templates": gen / ("templates" + ext),
            "tasks": gen / ("tasks" + ext),
            "records": gen / ("records" + ext),
            "evaluation": self.run_dir / "evaluations" / "default" / ("evaluation" + ext),
        }
        self._sink = _BufferSink() if buffered else _DirectSink(self.paths["lock"], lock, fsync, tmp_files)
        self._rng = random.Random("themis-writer:%s" % (seed,))
        self._tmp_rng = random.Random("themis-writer-tmp:%s" % (seed,))

        # derived, constant per run
        self.metric_ids = sorted(
            "%s:%s" % (_METRIC_CLASSES.get(m, "themis.evaluation.metrics.%s.%s" % (_snake(m), m)), m)
            for m in self.metrics
        )
        self.template_id = _sha256("%s:%s" % (template_name, template))[:16]
        self.manifest = {
            "schema_version": "1",
            "model": {"identifier": model, "provider": provider, "provider_options": {"seed": provider_seed}},
            "sampling": {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens},
            "num_samples": 1,
            "evaluation": {"metrics": self.metric_ids, "extractor": EXTRACTOR},
            "dataset": {"fingerprint": _canonical_hash(self.dataset), "benchmark_id": None},
            "prompt": {"template_hash": _sha256(template)},
            "seeds": {"provider_seed": provider_seed, "sampling_seed": None},
            "package_versions": dict(_PACKAGE_VERSIONS),
            "git_commit_hash": "unknown",
            "runtime": dict(_RUNTIME),
        }
        self.manifest_hash = _canonical_hash(self.manifest)
        self.eval_suffix = "::eval:" + _canonical_hash({"metrics": self.metric_ids, "extractor": EXTRACTOR})[:12]

        # mutable state
        self.metadata: Optional[dict] = None
        self._started = False
        self._next_row = 0
        self._headers_written = set()
        self._template_written = False
        self._task_keys: List[str] = []
        self._task_key_set = set()
        self._records: List[dict] = []      # generation results (internal view), in order
        self._pending: List[dict] = []      # generated, not yet evaluated
        self._evaluations: List[dict] = []  # evaluation results (internal view), in order
        self._partial = None

    # ------------------------------------------------------------------ public state

    @property
    def status(self) -> Optional[str]:
        return self.metadata["status"] if self.metadata else None

    @property
    def total(self) -> int:
        return len(self.dataset)

    @property
    def generated(self) -> int:
        return len(self._records)

    @property
    def evaluated(self) -> int:
        return len(self._evaluations)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def done_generating(self) -> bool:
        return self._next_row >= len(self.dataset)

    def record_keys(self) -> List[str]:
        return [r["key"] for r in self._records]

    def evaluation_keys(self) -> List[str]:
        return [e["key"] for e in self._evaluations]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "ThemisRunWriter":
        """Create the run folder, ``.lock``, ``metadata.json`` (in_progress) and the dataset file."""
        self._check_idle()
        if self._started:
            raise RuntimeError("run already started")
        if self.paths["metadata"].exists():
            raise FileExistsError("run already exists: %s" % self.run_dir)
        created = self.clock()
        updated = self.clock()
        self.metadata = {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "status": "in_progress",
            "created_at": _ts(created),
            "updated_at": _ts(updated),
            "completed_at": None,
            "total_samples": 0,
            "successful_generations": 0,
            "failed_generations": 0,
            "config_snapshot": {"reproducibility_manifest": self.manifest, "manifest_hash": self.manifest_hash},
            "error_message": None,
        }
        self._started = True
        units = [_Unit("lock", self.paths["lock"], "rewrite", b""), self._metadata_unit()]
        if self.dataset:
            units.append(self._dataset_unit(self.clock()))
        self._sink.emit(units)
        self._after_metadata()
        return self

    def generate(self, n: int = 1, *, fail_ids: Iterable = ()) -> List[str]:
        """Generate the next ``n`` dataset rows (fewer at the end); returns their cache keys."""
        self._check_idle()
        self._check_running()
        fail = set(fail_ids) | self.fail_ids
        keys = []
        for _ in range(n):
            if self.done_generating:
                break
            units = self._build_generation(fail)
            keys.append(self._records[-1]["key"])
            self._sink.emit(units)
        return keys

    def evaluate_pending(self) -> List[str]:
        """Append one evaluation line per generated-but-unevaluated record; returns the eval keys."""
        self._check_idle()
        self._check_running()
        if not self._pending:
            return []
        now = self.clock()
        units = []
        keys = []
        while self._pending:
            units.extend(self._build_evaluation(now))
            keys.append(self._evaluations[-1]["key"])
        self._sink.emit(units)
        return keys

    def step(self, n: int = 1, *, fail_ids: Iterable = ()) -> List[str]:
        """Generate ``n`` records, evaluating a batch whenever ``eval_batch`` records are pending."""
        keys = []
        for _ in range(n):
            got = self.generate(1, fail_ids=fail_ids)
            if not got:
                break
            keys.extend(got)
            if len(self._pending) >= self.eval_batch:
                self.evaluate_pending()
        return keys

    def complete(self) -> None:
        """Evaluate what is left, write ``report.json``, then mark the run ``completed``."""
        self._check_idle()
        self._check_running()
        self.evaluate_pending()
        self._sink.emit([_Unit("report", self.paths["report"], "rewrite", self._report_bytes)])
        completed = self.clock()
        updated = self.clock()
        self.metadata["status"] = "completed"
        self.metadata["completed_at"] = _ts(completed)
        self.metadata["updated_at"] = _ts(updated)
        self._sink.emit([self._metadata_unit()])
        self._after_metadata()

    def fail(self, message: str) -> None:
        """Mark the run ``failed`` with ``error_message`` (what Themis' ``fail_run`` does)."""
        self._check_idle()
        self._check_running()
        self.metadata["status"] = "failed"
        self.metadata["error_message"] = str(message)
        self.metadata["updated_at"] = _ts(self.clock())
        self._sink.emit([self._metadata_unit()])
        self._after_metadata()

    def flush(self) -> None:
        """Write buffered files (``buffered=True``); a no-op for the normal direct writer."""
        self._sink.flush()

    # ------------------------------------------------------------------ torn writes (§8)

    def append_partial(self, kind: str = "record", fraction: float = 0.5) -> dict:
        """Start the next unit of ``kind`` but write only its first ``fraction`` of bytes.

        ``kind``: ``record`` / ``task`` / ``template`` (the next generation; units before the
        torn one are written completely), ``evaluation`` (the next pending record's line),
        ``metadata`` / ``dataset`` (an in-place rewrite caught half-way). A torn JSONL line has
        no ``\\n``; a torn gzip member is truncated. Call :meth:`finish_partial` to write the
        rest (and anything that follows in the same operation). Returns a description dict.
        """
        self._check_idle()
        if kind not in _PARTIAL_KINDS:
            raise ValueError("kind must be one of %s" % (_PARTIAL_KINDS,))
        if not self._started:
            raise RuntimeError("run not started")
        if not isinstance(self._sink, _DirectSink):
            raise RuntimeError("append_partial needs a direct (unbuffered) writer")
        if kind in ("template", "task", "record"):
            self._check_running()
            if self.done_generating:
                raise RuntimeError("dataset exhausted")
            if kind == "template" and self._template_written:
                raise RuntimeError("template line already written")
            row = self.dataset[self._next_row]
            key = self._task_key(row)
            if kind == "task" and key in self._task_key_set:
                raise RuntimeError("task line already written")
            units = self._build_generation(self.fail_ids)
        elif kind == "evaluation":
            self._check_running()
            if not self._pending:
                raise RuntimeError("no generated record waits for evaluation")
            units = self._build_evaluation(self.clock())
        elif kind == "metadata":
            units = [self._metadata_unit()]
        else:
            if not self.dataset:
                raise RuntimeError("empty dataset")
            units = [self._dataset_unit(self.clock())]
        idx = next(i for i, u in enumerate(units) if u.kind == kind)
        self._sink.emit(units[:idx])
        unit = units[idx]
        data = unit.data()
        cut = min(len(data) - 1, max(1, int(len(data) * fraction)))
        self._sink.write(unit, data[:cut])
        self._partial = (unit, data, cut, units[idx + 1:])
        return {"kind": kind, "path": str(unit.path), "written": cut, "size": len(data)}

    def finish_partial(self) -> None:
        """Write the remaining bytes of the torn unit and the rest of its operation."""
        if self._partial is None:
            raise RuntimeError("no partial write in progress")
        unit, data, cut, rest = self._partial
        self._partial = None
        if unit.mode == "append":
            _append(unit.path, data[cut:], False)
        else:
            fd = os.open(unit.path, os.O_WRONLY)
            try:
                os.lseek(fd, cut, os.SEEK_SET)
                _write_all(fd, data[cut:])
                os.ftruncate(fd, len(data))
            finally:
                os.close(fd)
        self._sink.emit(rest)

    @property
    def partial_pending(self) -> bool:
        return self._partial is not None

    # ------------------------------------------------------------------ internals

    def _check_idle(self):
        if self._partial is not None:
            raise RuntimeError("a partial write is pending; call finish_partial() first")

    def _check_running(self):
        if not self._started:
            raise RuntimeError("run not started")
        if self.metadata["status"] != "in_progress":
            raise RuntimeError("run is %s" % self.metadata["status"])

    def _after_metadata(self):
        if self.sqlite:
            upsert_sqlite(self.root, self.metadata)

    def _new_tmp(self) -> str:
        r = self._tmp_rng
        return ".tmp_" + "".join(r.choice(_TMP_CHARS) for _ in range(8)) + ".json"

    def _encode(self, obj, fname: str, now: _dt.datetime) -> bytes:
        line = _line(obj)
        if self.compression == "gzip":
            return gzip_member(line, fname, _mtime(now))
        return line

    def _appended(self, kind: str, path_key: str, obj, now: _dt.datetime) -> List[_Unit]:
        """Header unit (first time) + the line unit, as Themis appends a line."""
        path = self.paths[path_key]
        units = []
        if path_key not in self._headers_written:
            self._headers_written.add(path_key)
            header = {"_type": "header", "_format_version": FORMAT_VERSION, "_file_type": _FILE_TYPES[path_key]}
            units.append(_Unit("header", path, "append", self._encode(header, path.name[:-3] if path.name.endswith(".gz") else path.name, now)))
        tmp = self._new_tmp()
        unit = _Unit(kind, path, "append", self._encode(obj, tmp, now), tmp)
        units.append(unit)
        return units

    def _metadata_unit(self) -> _Unit:
        text = json.dumps(self.metadata, indent=2).encode("utf-8")
        return _Unit("metadata", self.paths["metadata"], "rewrite", text)

    def _dataset_unit(self, now: _dt.datetime) -> _Unit:
        header = {"_type": "header", "_format_version": FORMAT_VERSION, "_file_type": "dataset"}
        data = _line(header) + b"".join(_line(r) for r in self.dataset)
        if self.compression == "gzip":
            data = gzip_member(data, "dataset.jsonl", _mtime(now))
        self._headers_written.add("dataset")
        return _Unit("dataset", self.paths["dataset"], "rewrite", data)

    # keys -----------------------------------------------------------------

    def _task_metadata(self, row: dict) -> dict:
        meta = {}
        if self.id_field in row:
            meta["dataset_id"] = row[self.id_field]
        for k, v in row.items():
            if k not in (self.id_field, self.reference_field):
                meta[k] = v
        meta["manifest_hash"] = self.manifest_hash
        return meta

    def _reference(self, row: dict):
        if self.reference_field not in row:
            return None
        return {"kind": self.reference_field, "value": row[self.reference_field], "schema": None}

    @staticmethod
    def _sample_id(task_meta: dict):
        """§5: first truthy of metadata.dataset_id / metadata.sample_id, else None."""
        return task_meta.get("dataset_id") or task_meta.get("sample_id") or None

    def _task_key(self, row: dict) -> str:
        dataset_id = self._sample_id(self._task_metadata(row))
        ref = self._reference(row)
        ref_hash = _canonical_hash(None if ref is None else {"kind": ref["kind"], "value": ref["value"]})[:12]
        prompt_hash = _canonical_hash({"template": self.template, "params": row})[:12]
        return "::".join(
            (
                "k2",
                str(dataset_id) if dataset_id else "",
                self.template_name,
                "%s:%s" % (self.provider, self.model),
                "%.3f-%.3f-%d" % (self.temperature, self.top_p, self.max_tokens),
                prompt_hash,
                ref_hash,
                self.manifest_hash,
            )
        )

    # generation ------------------------------------------------------------

    def _build_generation(self, fail_ids) -> List[_Unit]:
        row = self.dataset[self._next_row]
        self._next_row += 1
        now = self.clock()
        key = self._task_key(row)
        prompt_text = self.template.format(**row)
        task_meta = self._task_metadata(row)
        dataset_id = row.get(self.id_field)
        sample_id = self._sample_id(task_meta)
        units: List[_Unit] = []
        if key not in self._task_key_set:
            if not self._template_written:
                self._template_written = True
                units += self._appended(
                    "template",
                    "templates",
                    {
                        "template_id": self.template_id,
                        "spec": {"name": self.template_name, "template": self.template, "metadata": {}},
                    },
                    now,
                )
            task = {
                "task_key": key,
                "task": {
                    "prompt": {
                        "spec": {"_template_ref": self.template_id},
                        "text": prompt_text,
                        "context": row,
                        "metadata": {},
                    },
                    "model": {"identifier": self.model, "provider": self.provider, "default_sampling": None, "metadata": {}},
                    "sampling": {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens},
                    "metadata": task_meta,
                    "reference": self._reference(row),
                },
            }
            units += self._appended("task", "tasks", task, now)
            self._task_keys.append(key)
            self._task_key_set.add(key)
            count, stamp = len(self._task_keys), _ts(now)
            keys_ref, tmpl = self._task_keys, {self.template_id: self.template}
            units.append(
                _Unit(
                    "index",
                    self.paths["index"],
                    "rewrite",
                    lambda: json.dumps(
                        {"task_keys": keys_ref[:count], "template_ids": tmpl, "last_updated": stamp}
                    ).encode("utf-8"),
                )
            )

        failed = dataset_id in fail_ids if dataset_id is not None else False
        rng = self._rng
        if failed:
            attempts = [
                {"attempt": i, "error": _PROVIDER_ERROR, "exception_type": "ConnectionError"} for i in (1, 2)
            ]
            body = {
                "task_key": key,
                "output": None,
                "error": {
                    "message": "Generation failed for model '%s' after 2 attempt(s): %s" % (self.model, _PROVIDER_ERROR),
                    "kind": "provider_error",
                    "details": {"attempts": attempts, "model": self.model, "provider": self.provider},
                },
                "metrics": {"generation_attempts": 2, "retry_errors": attempts},
            }
            answer = None
        else:
            answer, text = self._fake_answer(prompt_text)
            body = {
                "task_key": key,
                "output": {"text": text},
                "error": None,
                "metrics": {
                    "latency_ms": rng.randint(8, 18),
                    "generation_time_ms": rng.uniform(0.02, 0.06),
                    "prompt_chars": len(prompt_text),
                    "prompt_tokens": len(prompt_text.split()),
                    "response_chars": len(text),
                    "response_tokens": len(text.split()),
                    "generation_attempts": 1,
                },
            }
        record = dict(body)
        record["attempts"] = [dict(body, attempts=[])]
        record["cache_key"] = key
        units += self._appended("record", "records", record, now)
        info = {
            "key": key,
            "row": row,
            "task_meta": task_meta,
            "sample_id": sample_id,
            "answer": answer,
            "error": record["error"]["message"] if failed else None,
        }
        self._records.append(info)
        self._pending.append(info)
        return units

    def _fake_answer(self, prompt_text: str):
        """Themis' fake math model: answers ``What is A op B`` in JSON, ``unknown`` otherwise.

        With probability ``1 - accuracy`` the numeric answer is off by a small integer.
        """
        rng = self._rng
        wrong = rng.random() >= self.accuracy
        offset = rng.choice((-3, -2, -1, 1, 2, 3, 5, 10))
        m = _PROMPT_RE.search(prompt_text)
        value = None
        if m:
            a, op, b = float(m.group(1)), m.group(2), float(m.group(3))
            try:
                value = {"+": a + b, "-": a - b, "*": a * b, "/": (a / b) if b else None}[op]
            except Exception:  # pragma: no cover
                value = None
        if value is None:
            answer = "unknown"
            reasoning = "Unable to derive answer with heuristic solver."
        else:
            if wrong:
                value = value + offset
            answer = str(int(value)) if float(value).is_integer() else "%.3f" % value
            reasoning = "Evaluated %r %s %r using arithmetic solver." % (a, op, b)
        text = json.dumps({"answer": answer, "reasoning": reasoning, "model": self.model})
        return answer, text

    # evaluation ------------------------------------------------------------

    def _build_evaluation(self, now: _dt.datetime) -> List[_Unit]:
        info = self._pending.pop(0)
        key = info["key"] + self.eval_suffix
        if info["answer"] is None:
            evaluation = {"sample_id": info["sample_id"], "scores": [], "failures": ["Missing model output"]}
            scores_internal = []
        else:
            rng = self._rng
            extracted = info["answer"]
            reference = info["row"].get(self.reference_field)
            extractor_ms = rng.uniform(0.008, 0.035)
            per_metric = [rng.uniform(0.006, 0.02) for _ in self.metrics]
            item_ms = sum(per_metric) + extractor_ms + rng.uniform(0.5, 1.0)
            scores = []
            for name, eval_ms in zip(self.metrics, per_metric):
                value, details = self._score(name, extracted, reference)
                meta = dict(info["task_meta"])
                meta["sample_id"] = info["sample_id"]
                meta["evaluation_time_ms"] = eval_ms
                meta["metric_compute_time_ms"] = eval_ms
                meta["extractor_time_ms"] = extractor_ms
                meta["extraction_time_ms"] = extractor_ms
                meta["item_evaluation_time_ms"] = item_ms
                scores.append({"metric_name": name, "value": value, "details": details, "metadata": meta})
            evaluation = {"sample_id": info["sample_id"], "scores": scores, "failures": []}
            scores_internal = scores
        self._evaluations.append({"key": key, "info": info, "evaluation": evaluation, "scores": scores_internal})
        return self._appended("evaluation", "evaluation", {"cache_key": key, "evaluation": evaluation}, now)

    def _score(self, name: str, extracted: str, reference):
        ref = None if reference is None else str(reference)
        exact = ref is not None and extracted == ref
        if name == "ExactMatch":
            return (1.0 if exact else 0.0), {"matched_reference": ref if exact else None}
        if name == "MathVerifyAccuracy":
            ok = exact or _num_equal(extracted, ref)
            return (1.0 if ok else 0.0), {"verified": ok}
        if name == "ResponseLength":
            return float(len(extracted)), {"length": len(extracted)}
        ok = exact or _num_equal(extracted, ref)
        value = self._rng.uniform(0.7, 1.0) if ok else self._rng.uniform(0.0, 0.4)
        return value, {}

    # report ------------------------------------------------------------------

    def _report_bytes(self) -> bytes:
        return json.dumps(self.build_report(), indent=2).encode("utf-8")

    def build_report(self) -> dict:
        """The ``report.json`` payload of a finished ``evaluate()`` run."""
        sums, counts = {}, {}
        samples = []
        run_failures = []
        eval_failures = []
        for rec in self._records:
            if rec["error"] is not None:
                run_failures.append({"sample_id": rec["sample_id"], "message": rec["error"]})
        for ev in self._evaluations:
            info = ev["info"]
            sid = ev["evaluation"]["sample_id"]
            for s in ev["scores"]:
                sums[s["metric_name"]] = sums.get(s["metric_name"], 0.0) + s["value"]
                counts[s["metric_name"]] = counts.get(s["metric_name"], 0) + 1
            for msg in ev["evaluation"]["failures"]:
                eval_failures.append({"sample_id": sid, "message": msg})
            meta = {}
            if sid:
                meta = dict(info["task_meta"])
                meta.update(
                    {
                        "model_identifier": self.model,
                        "model_provider": self.provider,
                        "prompt_template": self.template_name,
                        "sampling_temperature": self.temperature,
                        "sampling_top_p": self.top_p,
                        "sampling_max_tokens": self.max_tokens,
                    }
                )
            samples.append(
                {
                    "sample_id": sid or "",
                    "metadata": meta,
                    "scores": [
                        {"metric": s["metric_name"], "value": s["value"], "details": s["details"], "metadata": s["metadata"]}
                        for s in ev["scores"]
                    ],
                    "failures": list(ev["evaluation"]["failures"]),
                }
            )
        n_failed = len(run_failures)
        n_eval_fail = sum(1 for ev in self._evaluations if ev["evaluation"]["failures"])
        summary = {
            "total_samples": len(self._records),
            "successful_generations": len(self._records) - n_failed,
            "failed_generations": n_failed,
            "generation_records_retained": len(self._records),
            "generation_records_dropped": 0,
            "evaluation_records_retained": len(self._evaluations),
            "evaluation_records_dropped": 0,
            "per_sample_metrics_truncated": False,
            "run_id": self.run_id,
            "evaluation_failures": n_eval_fail,
            "manifest_hash": self.manifest_hash,
            "reproducibility_manifest": self.manifest,
            "cost": {
                "total_cost": 0,
                "generation_cost": 0,
                "evaluation_cost": 0,
                "currency": "USD",
                "token_counts": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "api_calls": 0,
                "per_model_costs": {},
                "pricing_version": "2024-11",
                "pricing_updated_at": "2024-11-01",
            },
            "run_failures": n_failed,
        }
        names = sorted(sums)
        return {
            "title": "Experiment %s" % self.run_id,
            "summary": summary,
            "metrics": [{"name": n, "count": counts[n], "mean": sums[n] / counts[n]} for n in names],
            "samples": samples,
            "rendered_sample_limit": len(self._evaluations),
            "total_samples": len(self._evaluations),
            "charts": [],
            "run_failures": run_failures,
            "evaluation_failures": eval_failures,
            "metrics_rendered": names,
        }


_FILE_TYPES = {
    "templates": "templates",
    "tasks": "tasks",
    "records": "records",
    "evaluation": "evaluation",
    "dataset": "dataset",
}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _num_equal(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- bulk


def write_completed_run(
    root,
    run_id: str,
    n_samples: int,
    *,
    status: str = "completed",
    n_generated: Optional[int] = None,
    error_message: str = "results sink unavailable: connection refused",
    dataset: Optional[Sequence[dict]] = None,
    seed: int = 0,
    **writer_kwargs,
) -> ThemisRunWriter:
    """Write a whole run quickly: same bytes as ``start(); step(n); complete()`` with the
    same seed and clock, but every file is written once at the end (``buffered=True``).

    ``status``: ``completed`` (default), ``failed`` (after ``n_generated`` records, default
    half) or ``in_progress`` (stopped after ``n_generated`` records, default half — looks
    like a killed writer). Returns the (flushed) writer.
    """
    if status not in ("completed", "failed", "in_progress"):
        raise ValueError("status must be completed, failed or in_progress")
    if dataset is None:
        dataset = make_arith_dataset(n_samples, seed=seed)
    writer = ThemisRunWriter(root, run_id, dataset=dataset, seed=seed, buffered=True, **writer_kwargs)
    writer.start()
    if status == "completed":
        writer.step(len(writer.dataset) if n_generated is None else n_generated)
        writer.complete()
    else:
        writer.step(len(writer.dataset) // 2 if n_generated is None else n_generated)
        if status == "failed":
            writer.fail(error_message)
    writer.flush()
    return writer
