"""Write Themis 4.0.2 run stores in exactly the format real Themis writes (no Tornado, no Themis).

Used by tests, benchmarks and demos of the v4 readers. The format follows
``shared/docs/themis-storage-v4.md`` (§3 layout, §4 snapshot, §5 events, §6 writer order) and
was checked against the real 4.0.2 sources and fixture stores:

* SQLite: the DDL text of ``SqliteRunStore.initialize()`` byte for byte (``sqlite_master.sql``
  is compared in the tests); ``journal_mode`` stays ``delete``; text columns hold
  ``json.dumps(..., sort_keys=True)`` with the default ``", "``/``": "`` separators;
  ``run_blobs.blob_ref`` is ``sha256:<hex of payload>``. Live mode commits every write in its
  own short transaction (blob, event, stage-cache row, like Themis' ``persist_event``), so a
  reader sees exactly the commit pattern of a real writer, minus the projection rewrites.
* JSONL: ``runs/<run_id>/snapshot.json`` (indent 2, sort_keys, no trailing newline),
  ``events.jsonl`` (one sort_keys line per event, appended with one ``write(2)`` on an
  ``O_APPEND`` descriptor, no fsync), ``projections/<name>.json``, ``blobs/<hex>.blob`` +
  ``<hex>.meta.json``, ``stage_cache/<stage>/<key>.json``.
* PostgreSQL: the DDL of ``PostgresRunStore.initialize()``/``_migrate_to_v1`` (``run_store_meta``
  with ``schema_version`` ``'1'``, JSONB columns, identity ids, ``idx_run_events_run_id_id``);
  blobs go to a ``blob_root`` folder on the writer's disk, as in Themis. psycopg is imported
  only when a :class:`PostgresSink` is used.
* Events carry every field the real ones have (``schema_version "1"``, ``occurred_at`` in UTC
  with 6 fractional digits, or none when the microseconds are 0, and ``Z``). ``run_id`` is
  Themis' content hash of the run identity; candidate seeds, dataset fingerprints, blob bytes
  and all four stage-cache keys are computed exactly as Themis does, so re-running a run or
  scoring an answer another run already scored produces ``cache_hit`` events with the
  ``source_run_id`` of the run that wrote the cache entry, as in real stores.

Projections: the six projection documents are written once, at snapshot time, in the
zero-event state Themis' ``persist_snapshot`` bootstraps (status ``pending``). They are **not**
refreshed after each event (Themis rewrites all six after every event; that is quadratic and
only produces a cache). A reader must not use stored projections anyway (they lag live runs
and stay wrong after a crash, spec §13); the daemon never reads them. So in stores written
here they always say ``pending``.

The generator is a deterministic toy model with the shape of the fixtures' ``generator/fake_llm``
(same fingerprint formula, conversation, artifacts and token usage): arithmetic questions,
answers right with a model-dependent probability; ``builtin/exact_match``, ``builtin/f1`` and
``builtin/bleu`` are computed like Themis' builtins. With ``latency_ms=0.0`` and the fixture
dataset (:func:`make_arith_cases`), the events of the fixture ``alpha`` run are reproduced
exactly apart from ``occurred_at`` (``bulk_run(..., max_concurrent_tasks=4)`` also gives its
event order), and real Themis 4.0.2 parses these stores, folds them to the same statuses and
resumes a run left ``running`` here.

Live mode (:class:`RunHandle`) writes one case at a time, so events of different cases do not
interleave; :meth:`Themis4Writer.bulk_run` interleaves them in waves of
``max_concurrent_tasks`` cases, stage by stage, as Themis' orchestrator does.

Quick use::

    w = Themis4Writer(SqliteSink("runs/themis.sqlite3"))
    run = w.new_run(model="toy-alpha", dataset_id="arith-24", cases=make_arith_cases(24))
    run.start()
    for case_id in run.case_ids:
        run.case(case_id)
    run.complete()

Python >= 3.9, stdlib only (plus psycopg 3 for PostgreSQL).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "Themis4Writer",
    "RunHandle",
    "SqliteSink",
    "JsonlSink",
    "PostgresSink",
    "SteppingClock",
    "make_arith_cases",
    "toy_answer",
    "score_value",
    "run_id_for_identity",
    "content_hash",
    "canonical_json",
    "format_occurred_at",
    "DEFAULT_METRICS",
    "METRIC_CATALOG",
    "PROJECTION_NAMES",
    "THEMIS_VERSION",
]

THEMIS_VERSION = "4.0.2"
SCHEMA_VERSION = "1"
DEFAULT_METRICS = ("builtin/exact_match", "builtin/f1")
DEFAULT_INSTRUCTIONS = "Solve the arithmetic problem. Reply exactly as: the answer is <number>."
DEFAULT_PROVIDER_KEY = "fake:local"
DEFAULT_GENERATOR = "generator/fake_llm"
# Order in which Themis writes them (projections.build_store_projection_payloads).
PROJECTION_NAMES = ("snapshot", "execution_state", "run_result", "benchmark_result", "timeline_view",
                    "trace_view")
_MEDIA_JSON = "application/json"

# Builtin refs as in themis/catalog/manifests/components.toml; metric/format_closeness is the
# fixtures' custom metric (it returns ScoreErrors, so stores get natural score_failed events).
METRIC_CATALOG: Dict[str, str] = {
    "builtin/exact_match": "builtin-exact-match-fingerprint",
    "builtin/f1": "builtin-f1-fingerprint",
    "builtin/bleu": "builtin-bleu-fingerprint",
    "metric/format_closeness": "metric-format-closeness-v1",
}
_PARSER_REF = {"component_id": "builtin/text", "fingerprint": "builtin-text-fingerprint", "version": "1.0"}
_REDUCER_REF = {"component_id": "builtin/majority_vote", "fingerprint": "builtin-majority-vote-fingerprint",
                "version": "1.0"}
# RuntimeConfig defaults of 4.0.2 (recorded in provenance, not part of the run identity).
_RUNTIME_DEFAULTS: Dict[str, Any] = {
    "batch_root": None, "existing_run_policy": "auto", "generation_retry_attempts": 3,
    "generation_retry_backoff": 2.0, "generation_retry_delay": 0.01, "judge_retry_attempts": 3,
    "judge_retry_backoff": 2.0, "judge_retry_delay": 0.01, "max_concurrent_tasks": 32,
    "provider_concurrency": {}, "provider_rate_limits": {}, "queue_root": None, "stage_concurrency": {},
    "store_retry_attempts": 5, "store_retry_delay": 0.01,
}

CaseTuple = Tuple[Any, ...]  # (case_id, input, expected_output[, metadata])
Op = Tuple[Any, ...]         # ("blob", ref, media, bytes) | ("event", type, json) | ("cache", stage, key, payload)


# --------------------------------------------------------------------------------------------
# serialisation and hashing (themis/core/base.py, stores/*.py)
# --------------------------------------------------------------------------------------------
def canonical_json(value: Any) -> str:
    """Themis' canonical JSON (``HashableModel._canonical_json``): the input of every content hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(value: Any) -> str:
    """``HashableModel.compute_hash()`` of a model given as its JSON dict (sha256 hex)."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def run_id_for_identity(identity: Mapping[str, Any]) -> str:
    """The run id Themis derives from ``snapshot.identity`` (``RunSnapshot.run_id``)."""
    return content_hash(identity)


def _dumps(value: Any) -> str:
    """Text-column / JSONL-line form: sort_keys, default separators, ASCII escapes."""
    return json.dumps(value, sort_keys=True)


def _dumps_pretty(value: Any) -> str:
    """JSONL store files (snapshot, projections, stage cache): indent 2, no trailing newline."""
    return json.dumps(value, indent=2, sort_keys=True)


def format_occurred_at(when: _dt.datetime) -> str:
    """Pydantic's JSON form of an aware UTC datetime: 6 fractional digits, none if 0, then ``Z``."""
    if when.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    when = when.astimezone(_dt.timezone.utc)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += ".%06d" % when.microsecond
    return text + "Z"


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class SteppingClock:
    """Deterministic clock for bulk stores: ``start``, ``start + step``, ... (aware UTC)."""

    def __init__(self, start: _dt.datetime, step: _dt.timedelta = _dt.timedelta(milliseconds=15)) -> None:
        if start.tzinfo is None:
            start = start.replace(tzinfo=_dt.timezone.utc)
        self.now = start
        self.step = step

    def __call__(self) -> _dt.datetime:
        current = self.now
        self.now = current + self.step
        return current


def _redact_url(url: str) -> str:
    """``security._redact_url_credentials``: the password becomes ``<redacted>`` in provenance."""
    parts = urlsplit(url)
    if not parts.scheme or parts.hostname is None or (parts.username is None and parts.password is None):
        return url
    host = parts.hostname
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    if parts.port is not None:
        host = "%s:%d" % (host, parts.port)
    if parts.username is not None and parts.password is not None:
        auth = "%s:<redacted>@" % parts.username
    elif parts.username is not None:
        auth = "%s@" % parts.username
    else:
        auth = ""
    return urlunsplit((parts.scheme, auth + host, parts.path, parts.query, parts.fragment))


def _unit(*parts: Any) -> int:
    """A stable 32-bit number from ``parts`` (no ``hash()``: it is salted per process)."""
    return int(hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:8], 16)


# --------------------------------------------------------------------------------------------
# toy dataset, model and metrics
# --------------------------------------------------------------------------------------------
def make_arith_cases(n: int = 24, variant: int = 0) -> List[CaseTuple]:
    """Arithmetic cases. ``variant=0`` is the fixtures' ``arith-24`` formula (ids ``q01``...)."""
    cases: List[CaseTuple] = []
    for i in range(1, n + 1):
        if variant == 0:
            a, b, op = (i * 7) % 23 + 2, (i * 11) % 17 + 3, "+"
        else:
            a = (i * 7 + variant * 13) % 89 + 2
            b = (i * 11 + variant * 5) % 47 + 3
            op = "+-*"[(i + variant) % 3]
        value = a + b if op == "+" else a - b if op == "-" else a * b
        cases.append(("q%02d" % i, {"question": "What is %d %s %d?" % (a, op, b)},
                      "the answer is %d" % value, {"difficulty": "easy" if i % 3 else "medium"}))
    return cases


# percentages: exact, verbose ("i think the answer is N"), off-by-one; the rest is wrong
_PROFILES: Dict[str, Tuple[int, int, int]] = {
    "fake-alpha": (70, 10, 10), "fake-beta": (45, 20, 20), "fake-flaky": (60, 15, 15),
    "fake-gamma": (55, 15, 15), "fake-delta": (65, 10, 15), "fake-epsilon": (50, 20, 20),
    "fake-zeta": (60, 10, 20), "fake-eta": (60, 10, 20),
}


def _profile(model: str) -> Tuple[int, int, int]:
    if model in _PROFILES:
        return _PROFILES[model]
    h = _unit("profile", model)
    exact = 30 + h % 56                     # 30..85 % exactly right
    verbose = 5 + (h >> 8) % 11
    near = min(100 - exact - verbose, 5 + (h >> 16) % 11)
    return exact, verbose, near


def toy_answer(model: str, case_id: str, expected: Any, seed: Optional[int]) -> str:
    """The fixtures' fake_llm answer: right with a model-dependent probability, else verbose/near/wrong."""
    text = str(expected)
    try:
        n = int(text.split()[-1])
    except (ValueError, IndexError):
        n = len(text)
    exact, verbose, near = _profile(model)
    h = int(hashlib.sha256(("%s|%s|%s" % (model, case_id, seed)).encode()).hexdigest()[:8], 16) % 100
    if h < exact:
        return text
    if h < exact + verbose:
        return "i think the answer is %d" % n
    if h < exact + verbose + near:
        return "the answer is %d" % (n + 1)
    return str(n + 7)


def _tokenize(value: Any) -> List[str]:
    return [] if value is None else str(value).lower().split()


def score_value(metric_id: str, parsed: Any, expected: Any) -> Tuple[Optional[float], Dict[str, Any], Optional[str]]:
    """``(value, details, error_reason)`` of one metric, computed like Themis' builtins.

    ``error_reason`` is set (and ``value`` None) when the metric returns a ScoreError.
    """
    if metric_id == "builtin/exact_match":
        return float(parsed == expected), {}, None
    if metric_id == "builtin/f1":
        predicted, gold = _tokenize(parsed), _tokenize(expected)
        overlap = sum((Counter(predicted) & Counter(gold)).values())
        if not predicted and not gold:
            return 1.0, {}, None
        if overlap == 0:
            return 0.0, {}, None
        precision, recall = overlap / len(predicted), overlap / len(gold)
        return (2 * precision * recall) / (precision + recall), {}, None
    if metric_id == "builtin/bleu":
        predicted = _tokenize(parsed)
        if not predicted:
            return 0.0, {}, None
        remaining = Counter(_tokenize(expected))
        matches = 0
        for token in predicted:
            if remaining[token] > 0:
                matches += 1
                remaining[token] -= 1
        return matches / len(predicted), {}, None
    if metric_id == "metric/format_closeness":
        text = str(parsed)
        if "answer is" not in text:
            return None, {"output": text}, "answer not in the required format"
        gold = int(str(expected).split()[-1])
        predicted_n = int(text.split()[-1])
        return 1.0 / (1.0 + abs(predicted_n - gold)), {"gold": gold, "predicted": predicted_n}, None
    # any other metric id: a stable pseudo-score in [0, 1]
    return (_unit(metric_id, parsed, expected) % 1001) / 1000.0, {}, None


def _metric_ref(metric_id: str) -> Dict[str, str]:
    fingerprint = METRIC_CATALOG.get(metric_id) or hashlib.sha256(metric_id.encode()).hexdigest()[:16]
    return {"component_id": metric_id, "fingerprint": fingerprint, "version": "1.0"}


def _generator_fingerprint(model: str) -> str:
    """fake_llm's fingerprint: sha256 of its identity-bearing settings, 16 hex digits."""
    payload = json.dumps({"model_id": model, "fail": [], "timeout_once": []}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _render_input(prompt: Mapping[str, Any], value: Any) -> Any:
    """``PromptSpec.render_input`` for a spec with instructions only (the fixtures' prompt)."""
    sections = []
    if prompt.get("instructions"):
        sections.append("Instructions:\n%s" % prompt["instructions"])
    if prompt.get("prefix"):
        sections.append(prompt["prefix"])
    if prompt.get("suffix"):
        sections.append(prompt["suffix"])
    if not sections:
        return value
    sections.append("Input:\n%s" % (value if isinstance(value, str) else json.dumps(value, sort_keys=True)))
    return "\n\n".join(sections)


# --------------------------------------------------------------------------------------------
# snapshot and the zero-event projections
# --------------------------------------------------------------------------------------------
def _build_snapshot(*, model: str, dataset_id: str, cases: Sequence[CaseTuple], metrics: Sequence[str],
                    samples: int, benchmark_id: Optional[str], seeds: List[int], revision: Optional[str],
                    instructions: Optional[str], generator_id: str, provider_key: Optional[str],
                    storage: Dict[str, Any], environment: Optional[Mapping[str, str]],
                    max_concurrent_tasks: int) -> Dict[str, Any]:
    case_dicts = []
    for item in cases:
        case_id, value, expected = item[0], item[1], item[2]
        metadata = dict(item[3]) if len(item) > 3 and item[3] else {}
        case_dicts.append({"case_id": str(case_id), "expected_output": expected, "input": value,
                           "metadata": {str(k): str(v) for k, v in metadata.items()}})
    if len({c["case_id"] for c in case_dicts}) != len(case_dicts):
        raise ValueError("case ids must be unique")
    dataset = {"cases": case_dicts, "dataset_id": dataset_id,
               "metadata": {"benchmark_id": benchmark_id} if benchmark_id else {}, "revision": revision}
    generator_ref = {"component_id": generator_id, "fingerprint": _generator_fingerprint(model), "version": "1.0"}
    metric_refs = [_metric_ref(m) for m in metrics]
    prompt = {"blocks": [], "instructions": instructions, "prefix": None, "suffix": None}
    identity = {
        "candidate_policy": {"num_samples": samples},
        "dataset_refs": [{"dataset_id": dataset_id, "fingerprint": content_hash(dataset), "revision": revision}],
        "evaluation_prompt_spec": None,
        "generation_prompt_spec": prompt,
        "generator_ref": generator_ref,
        "judge_config": {},
        "judge_model_refs": [],
        "metric_refs": metric_refs,
        "parser_refs": [dict(_PARSER_REF)],
        "reducer_ref": dict(_REDUCER_REF),
        "seeds": list(seeds),
        "selector_ref": None,
        "workflow_overrides": {},
    }
    generator_meta: Dict[str, Any] = {"model_id": model}
    if provider_key is not None:
        generator_meta["provider_key"] = provider_key
    runtime = dict(_RUNTIME_DEFAULTS, max_concurrent_tasks=max_concurrent_tasks)
    return {
        "component_refs": {"generator": dict(generator_ref), "judge_models": [],
                           "metrics": [dict(r) for r in metric_refs], "parsers": [dict(_PARSER_REF)],
                           "reducer": dict(_REDUCER_REF), "selector": None},
        "datasets": [dataset],
        "identity": identity,
        "metric_kinds": ["pure"] * len(metric_refs),
        "provenance": {
            "dependency_versions": {"themis-eval": THEMIS_VERSION},
            "environment_metadata": {str(k): str(v) for k, v in (environment or {}).items()},
            "git_commit": None,
            "platform": "linux",
            "provider_metadata": {"generator": generator_meta},
            "python_version": "3.12",
            "runtime": runtime,
            "storage": storage,
            "themis_version": THEMIS_VERSION,
        },
        "run_id": run_id_for_identity(identity),
    }


def _initial_projections(snapshot: Mapping[str, Any]) -> Dict[str, Any]:
    """``build_initial_store_projection_payloads``: what Themis stores before the first event."""
    run_id = snapshot["run_id"]
    case_ids = [c["case_id"] for d in snapshot["datasets"] for c in d["cases"]]
    empty_case = {"evaluation_execution_blob_refs": {}, "evaluation_executions": [], "evaluation_failures": {},
                  "generated_candidate_blob_refs": {}, "generated_candidates": [], "generation_failures": {},
                  "parse_error": None, "parsed_output": None, "reduced_candidate": None, "reduction_error": None,
                  "scores": []}
    return {
        "snapshot": snapshot,
        "execution_state": {"case_states": {}, "completed_through_stage": None, "run_id": run_id,
                            "status": "pending"},
        "run_result": {"cases": [dict(empty_case, case_id=c) for c in case_ids], "completed_through_stage": None,
                       "progress": {"completed_cases": 0, "failed_cases": 0, "total_cases": len(case_ids)},
                       "run_id": run_id, "status": "pending"},
        "benchmark_result": {"completed_cases": 0, "dataset_ids": [d["dataset_id"] for d in snapshot["datasets"]],
                             "error_counts": {}, "failed_cases": 0,
                             "metric_ids": [m["component_id"] for m in snapshot["component_refs"]["metrics"]],
                             "metric_means": {}, "outcome_counts": {}, "run_id": run_id, "score_rows": [],
                             "total_cases": len(case_ids)},
        "timeline_view": {"entries": [], "run_id": run_id},
        "trace_view": {"conversation_traces": [], "evaluation_traces": [], "generation_traces": [],
                       "run_id": run_id},
    }


# --------------------------------------------------------------------------------------------
# sinks: one per backend, same operations
# --------------------------------------------------------------------------------------------
# Verbatim from themis/core/stores/sqlite.py (whitespace included: sqlite_master keeps it).
_SQLITE_DDL = (
    """
                CREATE TABLE IF NOT EXISTS run_snapshots (
                    run_id TEXT PRIMARY KEY,
                    snapshot_json TEXT NOT NULL
                )
                """,
    """
                CREATE TABLE IF NOT EXISTS run_events (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    run_id TEXT NOT NULL,
                    event_type TEXT NOT NULL,
                    event_json TEXT NOT NULL
                )
                """,
    """
                CREATE TABLE IF NOT EXISTS run_blobs (
                    blob_ref TEXT PRIMARY KEY,
                    media_type TEXT NOT NULL,
                    payload BLOB NOT NULL
                )
                """,
    """
                CREATE TABLE IF NOT EXISTS run_projections (
                    run_id TEXT NOT NULL,
                    projection_name TEXT NOT NULL,
                    projection_json TEXT NOT NULL,
                    PRIMARY KEY (run_id, projection_name)
                )
                """,
    """
                CREATE TABLE IF NOT EXISTS stage_cache (
                    stage_name TEXT NOT NULL,
                    cache_key TEXT NOT NULL,
                    payload_json TEXT NOT NULL,
                    PRIMARY KEY (stage_name, cache_key)
                )
                """,
)
_SQL_PROJECTION = """
                INSERT OR REPLACE INTO run_projections (run_id, projection_name, projection_json)
                VALUES (?, ?, ?)
                """
_SQL_SNAPSHOT = """
                INSERT OR REPLACE INTO run_snapshots (run_id, snapshot_json)
                VALUES (?, ?)
                """
_SQL_EVENT = """
                INSERT INTO run_events (run_id, event_type, event_json)
                VALUES (?, ?, ?)
                """
_SQL_BLOB = """
                INSERT OR IGNORE INTO run_blobs (blob_ref, media_type, payload)
                VALUES (?, ?, ?)
                """
_SQL_CACHE = """
                INSERT OR REPLACE INTO stage_cache (stage_name, cache_key, payload_json)
                VALUES (?, ?, ?)
                """


class SqliteSink:
    """A ``SqliteRunStore`` file. One connection, but every write is its own committed
    transaction (as Themis, which opens a connection per call): readers see the same commit
    pattern. Busy timeout 5 s, as Themis' ``sqlite3.connect`` default."""

    store = "sqlite"

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        self.path = Path(path)
        self._db: Optional[sqlite3.Connection] = None

    def storage_config(self) -> Dict[str, Any]:
        return {"parameters": {"path": str(self.path)}, "store": "sqlite"}

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None)
        return self._db

    def initialize(self) -> None:
        db = self.db
        db.execute("BEGIN")
        for ddl in _SQLITE_DDL:
            db.execute(ddl)
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def has_snapshot(self, run_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM run_snapshots WHERE run_id = ?", (run_id,)).fetchone() is not None

    def has_run_started(self, run_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM run_events WHERE run_id = ? AND event_type = 'run_started' LIMIT 1",
                              (run_id,)).fetchone()
        return row is not None

    def persist_snapshot(self, run_id: str, snapshot: Mapping[str, Any], projections: Mapping[str, Any]) -> None:
        """Snapshot + its ``snapshot`` projection in one commit, then each projection in its own."""
        text = _dumps(snapshot)
        db = self.db
        db.execute("BEGIN")
        db.execute(_SQL_SNAPSHOT, (run_id, text))
        db.execute(_SQL_PROJECTION, (run_id, "snapshot", text))
        db.execute("COMMIT")
        for name in PROJECTION_NAMES:
            db.execute(_SQL_PROJECTION, (run_id, name, text if name == "snapshot" else _dumps(projections[name])))

    def persist_blob(self, ref: str, media_type: str, payload: bytes) -> None:
        self.db.execute(_SQL_BLOB, (ref, media_type, payload))

    def persist_event(self, run_id: str, event_type: str, event_json: str) -> None:
        self.db.execute(_SQL_EVENT, (run_id, event_type, event_json))

    def store_stage_cache(self, stage: str, key: str, payload: Any) -> None:
        self.db.execute(_SQL_CACHE, (stage, key, _dumps(payload)))

    def load_stage_cache_many(self, stage: str, keys: Sequence[str]) -> Dict[str, Any]:
        found: Dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            sql = ("SELECT cache_key, payload_json FROM stage_cache WHERE stage_name = ? AND cache_key IN (%s)"
                   % ",".join("?" * len(chunk)))
            for key, text in self.db.execute(sql, [stage] + chunk):
                found[key] = json.loads(text)
        return found

    def clear_run(self, run_id: str) -> None:
        """``clear_run``: events, projections and snapshot of one run in one transaction."""
        db = self.db
        db.execute("BEGIN")
        db.execute("DELETE FROM run_events WHERE run_id = ?", (run_id,))
        db.execute("DELETE FROM run_projections WHERE run_id = ?", (run_id,))
        db.execute("DELETE FROM run_snapshots WHERE run_id = ?", (run_id,))
        db.execute("COMMIT")

    def write_bulk(self, run_id: str, snapshot: Optional[Mapping[str, Any]], projections: Mapping[str, Any],
                   ops: Sequence[Op]) -> None:
        """A whole run in one transaction (executemany); the rows are those of live mode."""
        db = self.db
        db.execute("PRAGMA cache_size = -65536")
        db.execute("BEGIN")
        try:
            if snapshot is not None:
                text = _dumps(snapshot)
                db.execute(_SQL_SNAPSHOT, (run_id, text))
                db.executemany(_SQL_PROJECTION, [(run_id, name, text if name == "snapshot" else
                                                  _dumps(projections[name])) for name in PROJECTION_NAMES])
            db.executemany(_SQL_BLOB, [op[1:] for op in ops if op[0] == "blob"])
            db.executemany(_SQL_EVENT, [(run_id, op[1], op[2]) for op in ops if op[0] == "event"])
            db.executemany(_SQL_CACHE, [(op[1], op[2], _dumps(op[3])) for op in ops if op[0] == "cache"])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def read_events(self, run_id: str) -> List[Tuple[str, str]]:
        return self.db.execute("SELECT event_type, event_json FROM run_events WHERE run_id = ? ORDER BY id",
                               (run_id,)).fetchall()


class JsonlSink:
    """A ``JsonlRunStore`` root. Events are appended with one ``write(2)`` per line on an
    ``O_APPEND`` descriptor (no fsync); other files are written truncate-then-write, as Themis."""

    store = "jsonl"

    def __init__(self, root: "str | os.PathLike[str]") -> None:
        self.root = Path(root)

    def storage_config(self) -> Dict[str, Any]:
        return {"parameters": {"root": str(self.root)}, "store": "jsonl"}

    def initialize(self) -> None:
        (self.root / "runs").mkdir(parents=True, exist_ok=True)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass

    def _run(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def has_snapshot(self, run_id: str) -> bool:
        return (self._run(run_id) / "snapshot.json").is_file()

    def has_run_started(self, run_id: str) -> bool:
        path = self._run(run_id) / "events.jsonl"
        if not path.is_file():
            return False
        with path.open("r", encoding="utf-8") as fh:
            return any('"event_type": "run_started"' in line for line in fh)

    def persist_snapshot(self, run_id: str, snapshot: Mapping[str, Any], projections: Mapping[str, Any]) -> None:
        run_dir = self._run(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "snapshot.json").write_text(_dumps_pretty(snapshot), encoding="utf-8")
        proj_dir = run_dir / "projections"
        proj_dir.mkdir(parents=True, exist_ok=True)
        for name in PROJECTION_NAMES:
            (proj_dir / ("%s.json" % name)).write_text(_dumps_pretty(projections[name]), encoding="utf-8")

    def persist_blob(self, ref: str, media_type: str, payload: bytes) -> None:
        digest = ref[len("sha256:"):]
        blob_path = self.root / "blobs" / ("%s.blob" % digest)
        meta_path = self.root / "blobs" / ("%s.meta.json" % digest)
        if not blob_path.exists():
            blob_path.write_bytes(payload)
        if not meta_path.exists():
            meta_path.write_text(_dumps({"media_type": media_type}), encoding="utf-8")

    def _append(self, run_id: str, data: bytes) -> None:
        run_dir = self._run(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(run_dir / "events.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def persist_event(self, run_id: str, event_type: str, event_json: str) -> None:
        self._append(run_id, (event_json + "\n").encode("utf-8"))

    def _cache_path(self, stage: str, key: str) -> Path:
        return self.root / "stage_cache" / stage / ("%s.json" % key)

    def store_stage_cache(self, stage: str, key: str, payload: Any) -> None:
        path = self._cache_path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dumps_pretty(payload), encoding="utf-8")

    def load_stage_cache_many(self, stage: str, keys: Sequence[str]) -> Dict[str, Any]:
        found: Dict[str, Any] = {}
        for key in keys:
            path = self._cache_path(stage, key)
            if path.is_file():
                try:
                    found[key] = json.loads(path.read_text(encoding="utf-8"))
                except ValueError:
                    continue
        return found

    def clear_run(self, run_id: str) -> None:
        shutil.rmtree(self._run(run_id), ignore_errors=True)

    def write_bulk(self, run_id: str, snapshot: Optional[Mapping[str, Any]], projections: Mapping[str, Any],
                   ops: Sequence[Op]) -> None:
        """Blobs and cache files first, then the event lines in a few large appends."""
        if snapshot is not None:
            self.persist_snapshot(run_id, snapshot, projections)
        made = set()
        lines: List[bytes] = []
        for op in ops:
            if op[0] == "blob":
                self.persist_blob(op[1], op[2], op[3])
            elif op[0] == "cache":
                path = self._cache_path(op[1], op[2])
                if op[1] not in made:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    made.add(op[1])
                path.write_text(_dumps_pretty(op[3]), encoding="utf-8")
            else:
                lines.append((op[2] + "\n").encode("utf-8"))
        chunk: List[bytes] = []
        size = 0
        for line in lines:
            chunk.append(line)
            size += len(line)
            if size >= 4 << 20:
                self._append(run_id, b"".join(chunk))
                chunk, size = [], 0
        if chunk:
            self._append(run_id, b"".join(chunk))

    def read_events(self, run_id: str) -> List[Tuple[str, str]]:
        path = self._run(run_id) / "events.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            out.append((json.loads(line)["event_type"], line))
        return out


# Verbatim from themis/core/stores/postgres.py.
_PG_META_DDL = """
                CREATE TABLE IF NOT EXISTS run_store_meta (
                    key TEXT PRIMARY KEY,
                    value TEXT NOT NULL
                )
                """
_PG_V1_DDL = (
    """
            CREATE TABLE IF NOT EXISTS run_snapshots (
                run_id TEXT PRIMARY KEY,
                snapshot_json JSONB NOT NULL
            )
            """,
    """
            CREATE TABLE IF NOT EXISTS run_events (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                run_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                event_json JSONB NOT NULL
            )
            """,
    """
            CREATE INDEX IF NOT EXISTS idx_run_events_run_id_id
            ON run_events (run_id, id)
            """,
    """
            CREATE TABLE IF NOT EXISTS run_projections (
                run_id TEXT NOT NULL,
                projection_name TEXT NOT NULL,
                projection_json JSONB NOT NULL,
                PRIMARY KEY (run_id, projection_name)
            )
            """,
    """
            CREATE TABLE IF NOT EXISTS stage_cache (
                stage_name TEXT NOT NULL,
                cache_key TEXT NOT NULL,
                payload_json JSONB NOT NULL,
                PRIMARY KEY (stage_name, cache_key)
            )
            """,
)
_PG_SNAPSHOT = """
                INSERT INTO run_snapshots (run_id, snapshot_json)
                VALUES (%s, %s::jsonb)
                ON CONFLICT (run_id) DO UPDATE
                SET snapshot_json = EXCLUDED.snapshot_json
                """
_PG_EVENT = """
                INSERT INTO run_events (run_id, event_type, event_json)
                VALUES (%s, %s, %s::jsonb)
                """
_PG_PROJECTION = """
                INSERT INTO run_projections (run_id, projection_name, projection_json)
                VALUES (%s, %s, %s::jsonb)
                ON CONFLICT (run_id, projection_name) DO UPDATE
                SET projection_json = EXCLUDED.projection_json
                """
_PG_CACHE = """
                INSERT INTO stage_cache (stage_name, cache_key, payload_json)
                VALUES (%s, %s, %s::jsonb)
                ON CONFLICT (stage_name, cache_key) DO UPDATE
                SET payload_json = EXCLUDED.payload_json
                """


class PostgresSink:
    """A ``PostgresRunStore`` database plus its ``blob_root`` folder (Themis keeps blobs on the
    writer's disk). One connection; every write is committed on its own, as Themis does. Bulk
    mode loads a run's events with ``COPY``. NaN scores cannot be stored (JSONB rejects them)."""

    store = "postgres"

    def __init__(self, url: str, blob_root: "str | os.PathLike[str]" = "runs/postgres-blobs") -> None:
        self.url = url
        self.blob_root = Path(blob_root)
        self._conn: Any = None

    def storage_config(self) -> Dict[str, Any]:
        return {"parameters": {"blob_root": str(self.blob_root), "url": _redact_url(self.url)},
                "store": "postgres"}

    @property
    def conn(self) -> Any:
        if self._conn is None:
            import psycopg  # lazily: only PostgreSQL users need it

            self._conn = psycopg.connect(self.url)
        return self._conn

    def _commit(self, sql: str, params: Sequence[Any]) -> None:
        self.conn.execute(sql, params)
        self.conn.commit()

    def initialize(self) -> None:
        self.blob_root.mkdir(parents=True, exist_ok=True)
        conn = self.conn
        conn.execute(_PG_META_DDL)
        row = conn.execute("""
                SELECT value
                FROM run_store_meta
                WHERE key = %s
                """, ("schema_version",)).fetchone()
        if (str(row[0]) if row is not None else "0") == "0":
            for ddl in _PG_V1_DDL:
                conn.execute(ddl)
        conn.execute("""
                INSERT INTO run_store_meta (key, value)
                VALUES (%s, %s)
                ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                """, ("schema_version", SCHEMA_VERSION))
        conn.commit()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def has_snapshot(self, run_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM run_snapshots WHERE run_id = %s", (run_id,)).fetchone()
        self.conn.commit()
        return row is not None

    def has_run_started(self, run_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM run_events WHERE run_id = %s AND event_type = 'run_started' LIMIT 1",
                                (run_id,)).fetchone()
        self.conn.commit()
        return row is not None

    def persist_snapshot(self, run_id: str, snapshot: Mapping[str, Any], projections: Mapping[str, Any]) -> None:
        text = _dumps(snapshot)
        self._commit(_PG_SNAPSHOT, (run_id, text))
        for name in PROJECTION_NAMES:
            self._commit(_PG_PROJECTION, (run_id, name, text if name == "snapshot" else _dumps(projections[name])))

    def persist_blob(self, ref: str, media_type: str, payload: bytes) -> None:
        digest = ref[len("sha256:"):]
        blob_path = self.blob_root / ("%s.blob" % digest)
        meta_path = self.blob_root / ("%s.meta.json" % digest)
        if not blob_path.exists():
            blob_path.write_bytes(payload)
        if not meta_path.exists():
            meta_path.write_text(_dumps({"media_type": media_type}), encoding="utf-8")

    def persist_event(self, run_id: str, event_type: str, event_json: str) -> None:
        self._commit(_PG_EVENT, (run_id, event_type, event_json))

    def store_stage_cache(self, stage: str, key: str, payload: Any) -> None:
        self._commit(_PG_CACHE, (stage, key, _dumps(payload)))

    def load_stage_cache_many(self, stage: str, keys: Sequence[str]) -> Dict[str, Any]:
        rows = self.conn.execute(
            "SELECT cache_key, payload_json::text FROM stage_cache WHERE stage_name = %s AND cache_key = ANY(%s)",
            (stage, list(keys))).fetchall()
        self.conn.commit()
        return {key: json.loads(text) for key, text in rows}

    def clear_run(self, run_id: str) -> None:
        conn = self.conn
        conn.execute("DELETE FROM run_events WHERE run_id = %s", (run_id,))
        conn.execute("DELETE FROM run_projections WHERE run_id = %s", (run_id,))
        conn.execute("DELETE FROM run_snapshots WHERE run_id = %s", (run_id,))
        conn.commit()

    def write_bulk(self, run_id: str, snapshot: Optional[Mapping[str, Any]], projections: Mapping[str, Any],
                   ops: Sequence[Op]) -> None:
        """A whole run in one transaction: COPY for the events, executemany for the rest."""
        conn = self.conn
        try:
            with conn.cursor() as cur:
                if snapshot is not None:
                    text = _dumps(snapshot)
                    cur.execute(_PG_SNAPSHOT, (run_id, text))
                    cur.executemany(_PG_PROJECTION, [(run_id, name, text if name == "snapshot" else
                                                      _dumps(projections[name])) for name in PROJECTION_NAMES])
                with cur.copy("COPY run_events (run_id, event_type, event_json) FROM STDIN") as copy:
                    for op in ops:
                        if op[0] == "event":
                            copy.write_row((run_id, op[1], op[2]))
                caches = [(op[1], op[2], _dumps(op[3])) for op in ops if op[0] == "cache"]
                if caches:
                    cur.executemany(_PG_CACHE, caches)
            for op in ops:
                if op[0] == "blob":
                    self.persist_blob(op[1], op[2], op[3])
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def read_events(self, run_id: str) -> List[Tuple[str, str]]:
        rows = self.conn.execute("SELECT event_type, event_json::text FROM run_events WHERE run_id = %s ORDER BY id",
                                 (run_id,)).fetchall()
        self.conn.commit()
        return [(r[0], r[1]) for r in rows]


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------
class _CaseSpec:
    __slots__ = ("case", "output", "scores", "fail", "retryable", "retries", "score_errors")

    def __init__(self, case: Mapping[str, Any], output: Any = None, scores: Optional[Mapping[str, float]] = None,
                 fail: Optional[str] = None, retryable: bool = False, retries: int = 0,
                 score_errors: Optional[Mapping[str, str]] = None) -> None:
        self.case = case
        self.output = output
        self.scores = dict(scores or {})
        self.fail = fail
        self.retryable = retryable
        self.retries = retries
        self.score_errors = dict(score_errors or {})


def _stage_hit(entry: Any) -> Optional[Dict[str, Any]]:
    """A stage-cache entry Themis would reuse (one holding a result), else None."""
    return entry if isinstance(entry, dict) and isinstance(entry.get("result"), dict) else None


class RunHandle:
    """One run of a :class:`Themis4Writer`. Live mode: each method writes and commits its
    events immediately, one transaction per write, in the order Themis' orchestrator uses."""

    def __init__(self, writer: "Themis4Writer", snapshot: Dict[str, Any], latency_ms: Optional[float],
                 existed: bool) -> None:
        self.writer = writer
        self.snapshot = snapshot
        self.run_id: str = snapshot["run_id"]
        self.existed = existed          # the run was already in the store: Themis would resume it
        self.latency_ms = latency_ms
        ident = snapshot["identity"]
        self.model: str = snapshot["provenance"]["provider_metadata"]["generator"]["model_id"]
        self.provider_key: Optional[str] = snapshot["provenance"]["provider_metadata"]["generator"].get("provider_key")
        self.metrics: List[str] = [m["component_id"] for m in ident["metric_refs"]]
        self.samples: int = int(ident["candidate_policy"]["num_samples"])
        # planner._candidate_seeds: explicit seeds, else sha256("<run_id>:<index>")[:8]
        self.seeds: List[int] = list(ident["seeds"]) or [
            int(hashlib.sha256(("%s:%d" % (self.run_id, i)).encode()).hexdigest()[:8], 16)
            for i in range(self.samples)]
        self.cases: Dict[str, Dict[str, Any]] = {c["case_id"]: c for d in snapshot["datasets"] for c in d["cases"]}
        self.case_ids: List[str] = list(self.cases)
        self._case_hash: Dict[str, str] = {}
        self._cleared = False
        self._emit: Callable[[Op], None] = self._apply
        self._lookup: Callable[[str, Sequence[str]], Dict[str, Any]] = self._lookup_sink

    # -- public, live mode ------------------------------------------------------------------
    def start(self) -> None:
        """``run_started`` unless the run already has one (Themis does not repeat it on resume).
        After :meth:`rerun_clear` the snapshot and projections are written again first."""
        sink = self.writer.sink
        if self._cleared:
            sink.persist_snapshot(self.run_id, self.snapshot, _initial_projections(self.snapshot))
            self._cleared = False
        if not sink.has_run_started(self.run_id):
            self._emit(("event", "run_started", self._event("run_started")))

    def case(self, case_id: str, output: Any = None, scores: Optional[Mapping[str, float]] = None,
             fail_generation: Optional[str] = None, score_errors: Optional[Mapping[str, str]] = None, *,
             retryable: bool = False, retries: int = 0) -> None:
        """Write one case: generation(s), reduction, parse, then the scores in metric order.

        ``output`` replaces the toy model's answer; ``scores`` replaces computed metric values;
        ``fail_generation`` writes ``generation_failed`` for every candidate instead (with two
        ``retry_history`` entries if ``retryable``) and nothing after it; ``score_errors``
        (metric -> reason) writes ``score_failed`` for those metrics; ``retries`` records that
        many timed-out attempts in ``result.artifacts.retry_history`` of a successful generation.
        Nothing checks what was already written: repeating a case duplicates its events, as
        Themis' store retry can.
        """
        self._wave([self._spec(case_id, output, scores, fail_generation, retryable, retries, score_errors)])

    def run_cases(self, case_ids: Optional[Iterable[str]] = None) -> None:
        """Write the given cases (default: all) with the toy model, one by one."""
        for case_id in (self.case_ids if case_ids is None else case_ids):
            self.case(case_id)

    def complete(self, stage: str = "judge") -> None:
        """``run_completed(completed_through_stage=stage)``; the fold gives ``completed`` or
        ``partial_failure`` (if any case failed or the run failed before)."""
        if stage not in ("generate", "reduce", "parse", "score", "judge"):
            raise ValueError("unknown stage %r" % stage)
        self._emit(("event", "run_completed", self._event("run_completed", completed_through_stage=stage)))

    def fail(self, message: str) -> None:
        """``run_failed(error_message)``: what Themis writes when an exception escapes the run."""
        self._emit(("event", "run_failed", self._event("run_failed", error_message=str(message))))

    def rerun_clear(self) -> None:
        """``existing_run_policy="rerun"``: delete this run's events, projections and snapshot
        (one transaction; JSONL: rmtree the run directory). The next :meth:`start` writes the
        snapshot again, so a rerun is ``rerun_clear(); start(); case(...)...; complete()``
        (its stage-cache hits then name this very run as ``source_run_id``)."""
        self.writer.sink.clear_run(self.run_id)
        self._cleared = True

    # -- event building ---------------------------------------------------------------------
    def _apply(self, op: Op) -> None:
        sink = self.writer.sink
        if op[0] == "event":
            sink.persist_event(self.run_id, op[1], op[2])
        elif op[0] == "blob":
            sink.persist_blob(op[1], op[2], op[3])
        else:
            sink.store_stage_cache(op[1], op[2], op[3])

    def _lookup_sink(self, stage: str, keys: Sequence[str]) -> Dict[str, Any]:
        if not keys or not self.writer.stage_cache:
            return {}
        return self.writer.sink.load_stage_cache_many(stage, keys)

    def _event(self, event_type: str, **fields: Any) -> str:
        fields.update(event_type=event_type, occurred_at=format_occurred_at(self.writer.clock()),
                      run_id=self.run_id, schema_version=SCHEMA_VERSION)
        return _dumps(fields)

    def _spec(self, case_id: str, output: Any = None, scores: Optional[Mapping[str, float]] = None,
              fail: Optional[str] = None, retryable: bool = False, retries: int = 0,
              score_errors: Optional[Mapping[str, str]] = None) -> _CaseSpec:
        if case_id not in self.cases:
            raise KeyError("unknown case %r in run %s" % (case_id, self.run_id[:12]))
        for metric in list(scores or ()) + list(score_errors or ()):
            if metric not in self.metrics:
                raise ValueError("metric %r is not one of the run's metrics %s" % (metric, self.metrics))
        return _CaseSpec(self.cases[case_id], output, scores, fail, retryable, retries, score_errors)

    def _hash_case(self, case: Mapping[str, Any]) -> str:
        cid = case["case_id"]
        if cid not in self._case_hash:
            self._case_hash[cid] = content_hash(case)
        return self._case_hash[cid]

    def _cache_out(self, stage: str, key: str, payload: Dict[str, Any]) -> None:
        if self.writer.stage_cache:
            self._emit(("cache", stage, key, payload))

    def _generate(self, spec: _CaseSpec, index: int, seed: int) -> Dict[str, Any]:
        """The toy generator's ``GenerationResult`` (shape of the fixtures' fake_llm)."""
        case = spec.case
        cid = case["case_id"]
        answer = spec.output if spec.output is not None else toy_answer(self.model, cid, case["expected_output"], seed)
        prompt = self.snapshot["identity"]["generation_prompt_spec"]
        conversation = []
        if prompt.get("instructions"):
            conversation.append({"content": prompt["instructions"], "role": "system"})
        conversation.append({"content": _render_input(prompt, case["input"]), "role": "user"})
        conversation.append({"content": answer, "role": "assistant"})
        artifacts: Dict[str, Any] = {"model": self.model}
        if spec.retries:
            message = "provider timed out after 30s (case %s)" % cid
            artifacts["retry_history"] = self._retry_history(cid, spec.retries, message)
        latency = self.latency_ms
        if latency is None:
            latency = round(180.0 + _unit("latency", self.model, cid, seed) % 1_600_000 / 1000.0, 3)
        return {"artifacts": artifacts, "candidate_id": "%s-candidate-%d" % (cid, seed), "conversation": conversation,
                "final_output": answer, "latency_ms": float(latency),
                "token_usage": {"completion_tokens": len(str(answer).split()), "prompt_tokens": 20}, "trace": None}

    def _retry_history(self, case_id: str, count: int, message: str) -> List[Dict[str, Any]]:
        """Entries as ``_generate_with_retries`` records them (base 0.01 s, backoff 2, +-10 % jitter)."""
        out = []
        for attempt in range(count):
            jitter = (_unit("retry", self.run_id, case_id, attempt) % 20001) / 100000.0 - 0.1
            out.append({"attempt": attempt + 1, "delay_s": 0.01 * (2.0 ** attempt) * (1.0 + jitter),
                        "error_message": message, "reason": "timeout"})
        return out

    def _wave(self, specs: Sequence[_CaseSpec]) -> None:
        """Cases processed concurrently by Themis, in its lockstep order: all generations, then
        reductions, parses, and the scores metric by metric (fixture ``alpha`` at concurrency 4)."""
        ident = self.snapshot["identity"]
        refs = self.snapshot["component_refs"]
        emit = self._emit

        # generate ------------------------------------------------------------------------
        gen_keys: Dict[Tuple[str, int], str] = {}
        for spec in specs:
            for index, seed in enumerate(self.seeds):
                gen_keys[(spec.case["case_id"], index)] = content_hash({
                    "stage": "generate", "case_hash": self._hash_case(spec.case), "generator_ref": refs["generator"],
                    "candidate_policy": ident["candidate_policy"], "prompt_spec": ident["generation_prompt_spec"],
                    "seed": seed})
        wanted = [gen_keys[(s.case["case_id"], i)] for s in specs if s.fail is None and s.output is None
                  and not s.retries for i in range(len(self.seeds))]
        hits = self._lookup("generate", wanted)
        generated: Dict[str, List[Dict[str, Any]]] = {}
        for spec in specs:
            cid = spec.case["case_id"]
            results: List[Dict[str, Any]] = []
            for index, seed in enumerate(self.seeds):
                if spec.fail is not None:
                    history = self._retry_history(cid, 2, spec.fail) if spec.retryable else []
                    emit(("event", "generation_failed", self._event(
                        "generation_failed", case_id=cid, candidate_id="%s-candidate-%d" % (cid, index),
                        error_message=str(spec.fail), retry_history=history)))
                    continue
                key = gen_keys[(cid, index)]
                cached = _stage_hit(hits.get(key)) if spec.output is None and not spec.retries else None
                hit = cached is not None
                result = cached["result"] if hit else self._generate(spec, index, seed)
                blob = _dumps(result).encode("utf-8")
                ref = "sha256:" + hashlib.sha256(blob).hexdigest()
                emit(("blob", ref, _MEDIA_JSON, blob))
                emit(("event", "generation_completed", self._event(
                    "generation_completed", cache_hit=hit, candidate_id=result["candidate_id"],
                    candidate_index=index, case_id=cid,
                    provider_key=cached.get("provider_key") if hit else self.provider_key,
                    result=result, result_blob_ref=ref, seed=seed,
                    source_run_id=cached.get("source_run_id") if hit else None)))
                if not hit:
                    self._cache_out("generate", key, {"provider_key": self.provider_key, "result": result,
                                                      "source_run_id": self.run_id})
                results.append(result)
            if results:
                generated[cid] = results

        # reduce (builtin/majority_vote) ----------------------------------------------------
        live = [s for s in specs if s.case["case_id"] in generated]
        red_keys = {s.case["case_id"]: content_hash({
            "stage": "reduce", "selector_ref": None, "reducer_ref": refs["reducer"],
            "candidate_hashes": [content_hash(r) for r in generated[s.case["case_id"]]]}) for s in live}
        hits = self._lookup("reduce", list(red_keys.values()))
        reduced: Dict[str, Dict[str, Any]] = {}
        for spec in live:
            cid = spec.case["case_id"]
            cached = _stage_hit(hits.get(red_keys[cid]))
            hit = cached is not None
            if hit:
                result = cached["result"]
            else:
                results = generated[cid]
                outputs = [repr(r["final_output"]) for r in results]
                winner = Counter(outputs).most_common(1)[0][0]
                final = next(r["final_output"] for r, o in zip(results, outputs) if o == winner)
                result = {"candidate_id": "%s-reduced" % cid, "final_output": final,
                          "metadata": {"strategy": "majority_vote"},
                          "source_candidate_ids": [r["candidate_id"] for r in results]}
            emit(("event", "reduction_completed", self._event(
                "reduction_completed", cache_hit=hit, candidate_id=result["candidate_id"], case_id=cid, result=result,
                source_candidate_ids=result["source_candidate_ids"],
                source_run_id=cached.get("source_run_id") if hit else None)))
            if not hit:
                self._cache_out("reduce", red_keys[cid], {"result": result, "source_run_id": self.run_id})
            reduced[cid] = result

        # parse (builtin/text) ------------------------------------------------------------
        parse_keys = {cid: content_hash({"stage": "parse", "reduced_hash": content_hash(r),
                                         "parser_ref": refs["parsers"][0]}) for cid, r in reduced.items()}
        hits = self._lookup("parse", list(parse_keys.values()))
        parsed: Dict[str, Dict[str, Any]] = {}
        for spec in live:
            cid = spec.case["case_id"]
            cached = _stage_hit(hits.get(parse_keys[cid]))
            hit = cached is not None
            if hit:
                result = cached["result"]
            else:
                final = reduced[cid]["final_output"]
                result = {"format": "text", "metadata": {}, "value": final if isinstance(final, str) else str(final)}
            emit(("event", "parse_completed", self._event(
                "parse_completed", cache_hit=hit, candidate_id=reduced[cid]["candidate_id"], case_id=cid,
                result=result, source_run_id=cached.get("source_run_id") if hit else None)))
            if not hit:
                self._cache_out("parse", parse_keys[cid], {"result": result, "source_run_id": self.run_id})
            parsed[cid] = result

        # score (pure metrics, in metric order) ---------------------------------------------
        score_keys: Dict[Tuple[str, str], str] = {}
        for spec in live:
            cid = spec.case["case_id"]
            for metric, ref in zip(self.metrics, refs["metrics"]):
                score_keys[(cid, metric)] = content_hash({
                    "stage": "score", "case_hash": self._hash_case(spec.case),
                    "parsed_hash": content_hash(parsed[cid]), "metric_ref": ref,
                    "prompt_spec": ident["evaluation_prompt_spec"]})
        given = {s.case["case_id"]: set(s.scores) | set(s.score_errors) for s in live}
        hits = self._lookup("score", [k for (cid, m), k in score_keys.items() if m not in given[cid]])
        for metric in self.metrics:
            for spec in live:
                cid = spec.case["case_id"]
                candidate_id = reduced[cid]["candidate_id"]
                if metric in spec.score_errors:
                    error = {"details": {}, "metric_id": metric, "reason": str(spec.score_errors[metric]),
                             "retryable": False}
                    emit(("event", "score_failed", self._event(
                        "score_failed", candidate_id=candidate_id, case_id=cid, error=error, metric_id=metric)))
                    continue
                key = score_keys[(cid, metric)]
                cached = None if metric in spec.scores else hits.get(key)
                if isinstance(cached, dict) and isinstance(cached.get("score"), dict):
                    emit(("event", "score_completed", self._event(
                        "score_completed", cache_hit=True, candidate_id=candidate_id, case_id=cid, metric_id=metric,
                        score=cached["score"], source_run_id=cached.get("source_run_id"))))
                    continue
                if metric in spec.scores:
                    value, details, reason = float(spec.scores[metric]), {}, None
                else:
                    value, details, reason = score_value(metric, parsed[cid]["value"], spec.case["expected_output"])
                if reason is not None:
                    error = {"details": details, "metric_id": metric, "reason": reason, "retryable": False}
                    emit(("event", "score_failed", self._event(
                        "score_failed", candidate_id=candidate_id, case_id=cid, error=error, metric_id=metric)))
                    continue
                score = {"details": details, "metric_id": metric, "value": value}
                emit(("event", "score_completed", self._event(
                    "score_completed", cache_hit=False, candidate_id=candidate_id, case_id=cid, metric_id=metric,
                    score=score, source_run_id=None)))
                self._cache_out("score", key, {"score": score, "source_run_id": self.run_id})


class Themis4Writer:
    """Creates Themis 4.0.2 runs in one store (a :class:`SqliteSink`, :class:`JsonlSink` or
    :class:`PostgresSink`). ``initialize()`` runs on construction, as every Themis writer does.

    ``clock`` returns aware UTC datetimes for ``occurred_at`` (default: now);
    ``stage_cache=False`` skips the cross-run stage cache (smaller stores, never any
    ``cache_hit``), which Themis' memory store also does.
    """

    def __init__(self, sink: Any, *, clock: Optional[Callable[[], _dt.datetime]] = None,
                 stage_cache: bool = True) -> None:
        self.sink = sink
        self.clock: Callable[[], _dt.datetime] = clock or _utcnow
        self.stage_cache = stage_cache
        sink.initialize()

    def close(self) -> None:
        self.sink.close()

    def __enter__(self) -> "Themis4Writer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _snapshot(self, *, model: str, dataset_id: str, cases: Sequence[CaseTuple],
                  metrics: Sequence[str] = DEFAULT_METRICS, samples: int = 1, benchmark_id: Optional[str] = None,
                  seed: Optional[int] = None, revision: Optional[str] = "v1",
                  instructions: Optional[str] = DEFAULT_INSTRUCTIONS, environment: Optional[Mapping[str, str]] = None,
                  max_concurrent_tasks: int = 32, generator_id: str = DEFAULT_GENERATOR,
                  provider_key: Optional[str] = DEFAULT_PROVIDER_KEY) -> Dict[str, Any]:
        if samples < 1:
            raise ValueError("samples must be >= 1")
        if not metrics or len(set(metrics)) != len(metrics):
            raise ValueError("metrics must be a non-empty list of distinct metric ids")
        seeds = [] if seed is None else [int(seed) + i for i in range(samples)]
        return _build_snapshot(model=model, dataset_id=dataset_id, cases=cases, metrics=list(metrics),
                               samples=samples, benchmark_id=benchmark_id, seeds=seeds, revision=revision,
                               instructions=instructions, generator_id=generator_id, provider_key=provider_key,
                               storage=self.sink.storage_config(), environment=environment,
                               max_concurrent_tasks=max_concurrent_tasks)

    def new_run(self, *, model: str, dataset_id: str, cases: Sequence[CaseTuple],
                metrics: Sequence[str] = DEFAULT_METRICS, samples: int = 1, benchmark_id: Optional[str] = None,
                seed: Optional[int] = None, latency_ms: Optional[float] = None, **options: Any) -> RunHandle:
        """Compile a run and write its snapshot + zero-event projections (status ``pending``).

        ``cases``: ``(case_id, input, expected_output[, metadata])``. ``benchmark_id`` goes to
        ``datasets[0].metadata.benchmark_id`` (as catalog benchmarks do). ``seed``: explicit
        candidate seeds ``seed, seed+1, ...`` (part of the identity, so another run id);
        None uses the planner's seeds derived from the run id. ``latency_ms``: fixed latency
        to record (the fixtures' fake generator records 0.0), None for a toy latency.
        ``options``: ``revision`` ("v1"), ``instructions``, ``environment`` (provenance
        ``environment_metadata``), ``max_concurrent_tasks`` (32), ``generator_id``,
        ``provider_key``. If the run id is already stored, nothing is written (Themis resumes
        such a run and keeps its snapshot).
        """
        snapshot = self._snapshot(model=model, dataset_id=dataset_id, cases=cases, metrics=metrics, samples=samples,
                                  benchmark_id=benchmark_id, seed=seed, **options)
        existed = self.sink.has_snapshot(snapshot["run_id"])
        if not existed:
            self.sink.persist_snapshot(snapshot["run_id"], snapshot, _initial_projections(snapshot))
        return RunHandle(self, snapshot, latency_ms, existed)

    def bulk_run(self, *, model: str, dataset_id: str, cases: Sequence[CaseTuple],
                 metrics: Sequence[str] = DEFAULT_METRICS, samples: int = 1, benchmark_id: Optional[str] = None,
                 seed: Optional[int] = None, latency_ms: Optional[float] = None, outcome: str = "completed",
                 stop_after: Optional[int] = None, fail_generation: Optional[Mapping[str, str]] = None,
                 score_errors: Optional[Mapping[str, Mapping[str, str]]] = None,
                 error_message: str = "run aborted: provider quota exceeded",
                 clock: Optional[Callable[[], _dt.datetime]] = None, **options: Any) -> RunHandle:
        """Write a whole run in one transaction (fast path for big stores); same rows as live mode.

        ``outcome``: ``completed`` (every case, ``run_completed``), ``failed`` (``stop_after``
        cases, then ``run_failed(error_message)``), ``running`` (``stop_after`` cases plus
        the generations of the next in-flight wave, no end event: a killed writer) or
        ``pending`` (snapshot only). ``stop_after`` defaults to about half the cases.
        ``fail_generation`` (case -> message) and ``score_errors`` (case -> {metric: reason})
        add failures (status ``partial_failure`` once completed). Cases are interleaved in
        waves of ``max_concurrent_tasks`` as Themis' orchestrator does. ``clock`` overrides
        the writer's clock for this run. The returned handle can continue a ``running`` run
        in live mode. The run must not exist yet.
        """
        if outcome not in ("completed", "failed", "running", "pending"):
            raise ValueError("outcome must be completed, failed, running or pending")
        snapshot = self._snapshot(model=model, dataset_id=dataset_id, cases=cases, metrics=metrics, samples=samples,
                                  benchmark_id=benchmark_id, seed=seed, **options)
        run_id = snapshot["run_id"]
        if self.sink.has_snapshot(run_id):
            raise ValueError("run %s already exists; use new_run() to resume it" % run_id)
        handle = RunHandle(self, snapshot, latency_ms, False)
        ops: List[Op] = []
        saved_clock = self.clock
        if clock is not None:
            self.clock = clock
        handle._emit = ops.append
        try:
            if outcome != "pending":
                ops.append(("event", "run_started", handle._event("run_started")))
                ids = handle.case_ids
                n = len(ids) if outcome == "completed" else (len(ids) // 2 + 1 if stop_after is None else stop_after)
                n = max(0, min(n, len(ids)))
                fails = dict(fail_generation or {})
                errors = {k: dict(v) for k, v in (score_errors or {}).items()}
                wave = max(1, int(snapshot["provenance"]["runtime"]["max_concurrent_tasks"]))
                for start in range(0, n, wave):
                    handle._wave([handle._spec(c, fail=fails.get(c), score_errors=errors.get(c))
                                  for c in ids[start:min(n, start + wave)]])
                if outcome == "running" and n < len(ids):
                    # the writer was killed while the next wave was generating
                    in_flight = [handle._spec(c) for c in ids[n:n + min(wave, 3)]]
                    cut = len(ops)
                    handle._wave(in_flight)
                    kept = ops[:cut]
                    for op in ops[cut:]:
                        if op[0] == "event" and op[1] != "generation_completed":
                            break
                        kept.append(op)
                    ops[:] = kept
                elif outcome == "failed":
                    ops.append(("event", "run_failed", handle._event("run_failed", error_message=error_message)))
                elif outcome == "completed":
                    ops.append(("event", "run_completed", handle._event("run_completed",
                                                                        completed_through_stage="judge")))
            self.sink.write_bulk(run_id, snapshot, _initial_projections(snapshot), ops)
        finally:
            self.clock = saved_clock
            handle._emit = handle._apply
        return handle
