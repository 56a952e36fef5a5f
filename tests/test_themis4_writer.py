"""The Themis 4.0.2 store writer (themis_daemon.demo.themis4) against the real fixture stores."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3

import pytest

from themis_daemon.demo.themis4 import (
    JsonlSink,
    SqliteSink,
    SteppingClock,
    Themis4Writer,
    content_hash,
    format_occurred_at,
    make_arith_cases,
    run_id_for_identity,
)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = next(p for p in (os.path.join(HERE, "data", "themis-v4"),
                            os.path.join(HERE, "..", "..", "shared", "fixtures", "themis-v4"))
                if os.path.isdir(p))
FX_SQLITE = os.path.join(FIXTURES, "sqlite", "themis.sqlite3")
FX_JSONL = os.path.join(FIXTURES, "jsonl", "store")
ALPHA = "f5702ab837d65d79c6e1d90f17a57244e439268e61320b6b7b186d7876b882ea"
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def fixture_db() -> sqlite3.Connection:
    return sqlite3.connect("file:%s?mode=ro" % FX_SQLITE, uri=True)


def key_paths(obj, depth=2, prefix=()):
    """Key paths of the top ``depth`` dict levels (list elements are looked into, marked ``[]``)."""
    out = set()
    if depth <= 0:
        return out
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.add(prefix + (key,))
            out |= key_paths(value, depth - 1, prefix + (key,))
    elif isinstance(obj, list):
        for item in obj:
            out |= key_paths(item, depth, prefix[:-1] + (prefix[-1] + "[]",) if prefix else ("[]",))
    return out


def mixed_store(sink) -> dict:
    """Runs covering every event type the writer emits; returns name -> handle."""
    w = Themis4Writer(sink, clock=SteppingClock(T0, dt.timedelta(milliseconds=250)))
    cases = make_arith_cases(6)
    metrics = ["builtin/exact_match", "builtin/f1", "metric/format_closeness"]
    runs = {}
    runs["pending"] = w.new_run(model="toy-pending", dataset_id="arith-6", cases=cases)
    done = runs["done"] = w.new_run(model="toy-a", dataset_id="arith-6", cases=cases, metrics=metrics)
    done.start()
    done.case("q01", output="the answer is 23")
    done.case("q02", fail_generation="provider error 400: request rejected by content filter (case q02)")
    done.case("q03", score_errors={"builtin/f1": "metric backend unavailable"})
    done.case("q04", output="42")                      # format_closeness -> natural ScoreError
    done.case("q05", retries=1)
    done.complete()
    failed = runs["failed"] = w.new_run(model="toy-b", dataset_id="arith-6", cases=cases, benchmark_id="arith")
    failed.start()
    failed.case("q01")
    failed.fail("budget guard: token budget exhausted after 1 cases")
    live = runs["running"] = w.new_run(model="toy-c", dataset_id="arith-6", cases=cases, samples=3)
    live.start()
    live.case("q01")
    resumed = runs["failed_resumed"] = w.new_run(model="toy-d", dataset_id="arith-6", cases=cases[:2])
    resumed.start()
    resumed.case("q01")
    resumed.fail("boom")
    again = w.new_run(model="toy-d", dataset_id="arith-6", cases=cases[:2])  # same id: resume
    assert again.existed and again.run_id == resumed.run_id
    again.start()                                      # no second run_started
    again.case("q02")
    again.complete()
    return runs


def fold_status(events) -> str:
    """Run-level fold of themis/core/results.py (spec §7.1)."""
    status, case_failed = "pending", False
    for event_type, _text in events:
        if event_type in ("generation_failed", "score_failed", "parse_failed", "reduction_failed"):
            case_failed = True
        if event_type == "run_started":
            status = "running"
        elif event_type == "run_failed":
            status = "failed"
        elif event_type == "run_completed":
            status = "partial_failure" if status in ("failed", "partial_failure") or case_failed else "completed"
    return status


# (1) DDL ------------------------------------------------------------------------------------
def test_sqlite_ddl_equals_fixture(tmp_path):
    path = tmp_path / "themis.sqlite3"
    Themis4Writer(SqliteSink(path)).close()
    q = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid"
    mine = sqlite3.connect(str(path))
    with fixture_db() as fx:
        assert mine.execute(q).fetchall() == fx.execute(q).fetchall()
        assert mine.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert fx.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert mine.execute("PRAGMA user_version").fetchone() == (0,)


# (2) event shapes and text form ----------------------------------------------------------------
def test_event_keys_and_text_match_fixture(tmp_path):
    sink = SqliteSink(tmp_path / "themis.sqlite3")
    mixed_store(sink)
    mine, fixture = {}, {}
    for event_type, text in sink.db.execute("SELECT event_type, event_json FROM run_events ORDER BY id"):
        assert text == json.dumps(json.loads(text), sort_keys=True)          # sort_keys, ", " / ": "
        assert re.search(r'", "|": ', text) and "\n" not in text
        mine.setdefault(event_type, set()).update(key_paths(json.loads(text)))
    with fixture_db() as fx:
        for event_type, text in fx.execute("SELECT event_type, event_json FROM run_events"):
            assert text == json.dumps(json.loads(text), sort_keys=True)
            fixture.setdefault(event_type, set()).update(key_paths(json.loads(text)))
    assert set(mine) == {"run_started", "generation_completed", "generation_failed", "reduction_completed",
                         "parse_completed", "score_completed", "score_failed", "run_completed", "run_failed"}
    for event_type, paths in mine.items():
        assert paths == fixture[event_type], event_type
    # the retry entries (result.artifacts.retry_history) have the shape Themis records
    fx_retry = mine_retry = None
    with fixture_db() as fx:
        for (text,) in fx.execute("SELECT event_json FROM run_events WHERE event_json LIKE '%retry_history\": [{%'"):
            fx_retry = json.loads(text)["result"]["artifacts"]["retry_history"][0]
    for (text,) in sink.db.execute("SELECT event_json FROM run_events WHERE event_json LIKE '%retry_history\": [{%'"):
        mine_retry = json.loads(text)["result"]["artifacts"]["retry_history"][0]
    assert set(mine_retry) == set(fx_retry)


def test_occurred_at_format():
    assert format_occurred_at(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) == "2026-01-01T00:00:00Z"
    assert format_occurred_at(dt.datetime(2026, 12, 1, 13, 31, 22, 951, tzinfo=dt.timezone.utc)) == \
        "2026-12-01T13:31:22.000951Z"


# (3) run ids ---------------------------------------------------------------------------------
def test_run_id_is_the_identity_hash_of_every_fixture_snapshot():
    with fixture_db() as fx:
        rows = fx.execute("SELECT run_id, snapshot_json FROM run_snapshots").fetchall()
    assert len(rows) >= 12
    for run_id, text in rows:
        snapshot = json.loads(text)
        assert run_id_for_identity(snapshot["identity"]) == run_id == snapshot["run_id"]
        for ref, dataset in zip(snapshot["identity"]["dataset_refs"], snapshot["datasets"]):
            assert content_hash(dataset) == ref["fingerprint"]
    for run_id in os.listdir(os.path.join(FX_JSONL, "runs")):
        with open(os.path.join(FX_JSONL, "runs", run_id, "snapshot.json"), encoding="utf-8") as fh:
            assert run_id_for_identity(json.load(fh)["identity"]) == run_id


def test_fixture_alpha_is_reproduced(tmp_path):
    """Same dataset, model and metrics as fixture `alpha`: same run id, identity and events."""
    w = Themis4Writer(SqliteSink(tmp_path / "themis.sqlite3"))
    run = w.bulk_run(model="fake-alpha", dataset_id="arith-24", cases=make_arith_cases(24), latency_ms=0.0,
                     max_concurrent_tasks=4)
    assert run.run_id == ALPHA
    strip = re.compile(r'"occurred_at": "[^"]*"')
    with fixture_db() as fx:
        theirs = [(t, strip.sub("", j)) for t, j in
                  fx.execute("SELECT event_type, event_json FROM run_events WHERE run_id = ? ORDER BY id", (ALPHA,))]
        snap = json.loads(fx.execute("SELECT snapshot_json FROM run_snapshots WHERE run_id = ?",
                                     (ALPHA,)).fetchone()[0])
        blobs = dict(fx.execute("SELECT blob_ref, payload FROM run_blobs"))
    mine = [(t, strip.sub("", j)) for t, j in w.sink.read_events(ALPHA)]
    assert mine == theirs
    assert run.snapshot["identity"] == snap["identity"] and run.snapshot["datasets"] == snap["datasets"]
    for ref, payload in w.sink.db.execute("SELECT blob_ref, payload FROM run_blobs"):
        assert blobs[ref] == payload


# (4) JSONL layout ------------------------------------------------------------------------------
def _layout(root):
    out = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            out.add(re.sub(r"[0-9a-f]{64}", "H", os.path.relpath(os.path.join(dirpath, name), root)))
    return out


def test_jsonl_layout_matches_fixture(tmp_path):
    root = tmp_path / "store"
    runs = mixed_store(JsonlSink(root))
    assert _layout(root) == _layout(FX_JSONL)
    pending = root / "runs" / runs["pending"].run_id
    assert (pending / "snapshot.json").is_file() and not (pending / "events.jsonl").exists()
    assert len(os.listdir(pending / "projections")) == 6
    for run_dir in (root / "runs").iterdir():
        text = (run_dir / "snapshot.json").read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) and not text.endswith("\n")
        for proj in (run_dir / "projections").iterdir():
            ptext = proj.read_text(encoding="utf-8")
            assert ptext == json.dumps(json.loads(ptext), indent=2, sort_keys=True)
        if (run_dir / "events.jsonl").exists():
            data = (run_dir / "events.jsonl").read_text(encoding="utf-8")
            assert data.endswith("\n")
            for line in data.splitlines():
                assert line == json.dumps(json.loads(line), sort_keys=True)
    for meta in (root / "blobs").glob("*.meta.json"):
        assert meta.read_text(encoding="utf-8") == '{"media_type": "application/json"}'
    # projections are the zero-event bootstrap, shaped like the fixture's pending run
    fx_pending = os.path.join(FX_JSONL, "runs", "23ce6e6454e4e9662fa6eb775babdb3e7fd9892fab70c670697b2106be370303")
    for name in ("execution_state", "run_result", "benchmark_result", "timeline_view", "trace_view"):
        with open(os.path.join(fx_pending, "projections", name + ".json"), encoding="utf-8") as fh:
            theirs = json.load(fh)
        mine = json.loads((pending / "projections" / (name + ".json")).read_text(encoding="utf-8"))
        assert key_paths(mine, 3) == key_paths(theirs, 3), name


# (5) status of the written run-level sequences ------------------------------------------------------
def test_run_level_sequences_fold_to_the_expected_status(tmp_path):
    sink = SqliteSink(tmp_path / "themis.sqlite3")
    runs = mixed_store(sink)
    expected = {"pending": "pending", "done": "partial_failure", "failed": "failed", "running": "running",
                "failed_resumed": "partial_failure"}
    for name, handle in runs.items():
        events = sink.read_events(handle.run_id)
        assert fold_status(events) == expected[name], name
    levels = {name: [t for t, _ in sink.read_events(h.run_id) if t.startswith("run_")] for name, h in runs.items()}
    assert levels["failed_resumed"] == ["run_started", "run_failed", "run_completed"]
    assert levels["running"] == ["run_started"] and levels["pending"] == []
    # a clean run: run_started -> running -> run_completed -> completed
    w = Themis4Writer(sink)
    run = w.new_run(model="toy-clean", dataset_id="arith-6", cases=make_arith_cases(3))
    assert fold_status(sink.read_events(run.run_id)) == "pending"
    run.start()
    assert fold_status(sink.read_events(run.run_id)) == "running"
    run.run_cases()
    run.complete()
    assert fold_status(sink.read_events(run.run_id)) == "completed"


def test_bulk_rows_equal_live_rows_and_rerun(tmp_path, monkeypatch):
    cases = make_arith_cases(5)
    os.mkdir(tmp_path / "live")
    os.mkdir(tmp_path / "bulk")
    monkeypatch.chdir(tmp_path / "live")  # same relative path: provenance.storage must match too
    live = Themis4Writer(SqliteSink("themis.sqlite3"), clock=SteppingClock(T0))
    handle = live.new_run(model="toy-x", dataset_id="d", cases=cases, samples=2, max_concurrent_tasks=1)
    handle.start()
    handle.run_cases()
    handle.complete()
    monkeypatch.chdir(tmp_path / "bulk")
    bulk = Themis4Writer(SqliteSink("themis.sqlite3"), clock=SteppingClock(T0))
    bulk.bulk_run(model="toy-x", dataset_id="d", cases=cases, samples=2, max_concurrent_tasks=1)
    for q in ("SELECT id, run_id, event_type, event_json FROM run_events ORDER BY id",
              "SELECT * FROM run_blobs ORDER BY blob_ref", "SELECT * FROM stage_cache ORDER BY 1, 2",
              "SELECT * FROM run_snapshots", "SELECT * FROM run_projections ORDER BY 1, 2"):
        assert live.sink.db.execute(q).fetchall() == bulk.sink.db.execute(q).fetchall(), q
    # rerun: the run vanishes, comes back with new ids, and every stage is a cache hit of itself
    last = live.sink.db.execute("SELECT max(id) FROM run_events").fetchone()[0]
    handle.rerun_clear()
    assert live.sink.read_events(handle.run_id) == [] and not live.sink.has_snapshot(handle.run_id)
    handle.start()
    handle.run_cases()
    handle.complete()
    rows = live.sink.db.execute("SELECT id, event_json FROM run_events ORDER BY id").fetchall()
    assert rows[0][0] > last
    hits = [json.loads(j) for _, j in rows if '"cache_hit": true' in j]
    assert len(hits) == 5 * (2 + 1 + 1 + 2) and {e["source_run_id"] for e in hits} == {handle.run_id}


def test_bulk_outcomes(tmp_path):
    w = Themis4Writer(SqliteSink(tmp_path / "themis.sqlite3"), clock=SteppingClock(T0))
    cases = make_arith_cases(40, variant=3)
    running = w.bulk_run(model="m1", dataset_id="d", cases=cases, outcome="running", stop_after=20,
                         max_concurrent_tasks=8)
    ev = w.sink.read_events(running.run_id)
    assert fold_status(ev) == "running"
    scored = {json.loads(j)["case_id"] for t, j in ev if t == "score_completed"}
    generated = {json.loads(j)["case_id"] for t, j in ev if t == "generation_completed"}
    assert len(scored) == 20 and len(generated) == 23
    flaky = w.bulk_run(model="m2", dataset_id="d", cases=cases, fail_generation={"q07": "provider error 400"},
                       score_errors={"q09": {"builtin/f1": "nope"}})
    assert fold_status(w.sink.read_events(flaky.run_id)) == "partial_failure"
    failed = w.bulk_run(model="m3", dataset_id="d", cases=cases, outcome="failed", stop_after=5)
    assert [t for t, _ in w.sink.read_events(failed.run_id)][-1] == "run_failed"
    pending = w.bulk_run(model="m4", dataset_id="d", cases=cases, outcome="pending")
    assert w.sink.read_events(pending.run_id) == [] and w.sink.has_snapshot(pending.run_id)
    with pytest.raises(ValueError):
        w.bulk_run(model="m4", dataset_id="d", cases=cases)


def test_postgres_sink(tmp_path, pg_server):
    from themis_daemon.demo.themis4 import PostgresSink

    name = f"writer_{os.getpid()}"
    pg_server.create_database(name)
    w = Themis4Writer(PostgresSink(pg_server.url(name, password=pg_server.password), tmp_path / "blobs"))
    w.sink.clear_run(ALPHA)
    run = w.bulk_run(model="fake-alpha", dataset_id="arith-24", cases=make_arith_cases(24), latency_ms=0.0,
                     max_concurrent_tasks=4)
    assert run.run_id == ALPHA and len(w.sink.read_events(ALPHA)) == 122
    w.sink.clear_run(ALPHA)
    w.close()
    pg_server.drop_database(name)
