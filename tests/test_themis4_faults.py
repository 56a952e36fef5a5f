"""Themis 4 stores that are damaged, locked or left behind by a killed writer.

The test itself plays the writer (a read-write connection of its own); the daemon only ever
reads. Whatever happens to one run or to the store, the others stay served and the daemon
recovers without a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import DATA

V4 = os.path.join(DATA, "themis-v4")
with open(os.path.join(V4, "sqlite", "manifest.json"), encoding="utf-8") as _fh:
    IDS = {name: run["run_id"] for name, run in json.load(_fh)["runs"].items()}


@pytest.fixture
def store_root(tmp_path):
    dst = tmp_path / "themis.sqlite3"
    shutil.copyfile(os.path.join(V4, "sqlite", "themis.sqlite3"), dst)
    return str(dst)


@pytest.fixture
def app_settings():
    return {"poll_interval": 0.05}


async def get(http_client, base_url, path, **kw):
    kw.setdefault("raise_error", False)
    resp = await http_client.fetch(base_url + path, **kw)
    body = resp.body.decode() if resp.body else ""
    try:
        return resp, json.loads(body)
    except ValueError:
        return resp, body


async def until(check, timeout=30.0):
    """Wait for a condition the daemon reaches at its next polls (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def writer(db):
    return sqlite3.connect(db, isolation_level=None, timeout=5)


@pytest.mark.gen_test(timeout=60)
async def test_corrupt_event_row_marks_only_that_run(http_client, base_url, store_root):
    _, before = await get(http_client, base_url, "/api/runs")
    assert all(r["error"] is None for r in before)
    with writer(store_root) as conn:
        conn.execute("INSERT INTO run_events (run_id, event_type, event_json) VALUES (?, ?, ?)",
                     (IDS["killed"], "score_completed", '{"case_id": "q11", "broken'))

    async def flagged():
        _, runs = await get(http_client, base_url, "/api/runs")
        bad = {r["run_id"]: r for r in runs if r["error"]}
        return runs if IDS["killed"] in bad else None

    runs = await until(flagged)
    killed = next(r for r in runs if r["run_id"] == IDS["killed"])
    assert "not valid JSON" in killed["error"]
    assert [r for r in runs if r["error"] and r["run_id"] != IDS["killed"]] == []
    resp, detail = await get(http_client, base_url, f"/api/runs/{IDS['killed']}")
    assert resp.code == 200 and detail["num_samples"] == 10  # what was readable is still served


@pytest.mark.gen_test(timeout=60)
async def test_unknown_event_types_are_ignored_and_counted(http_client, base_url, store_root):
    _, before = await get(http_client, base_url, f"/api/runs/{IDS['alpha']}")
    with writer(store_root) as conn:
        for _ in range(3):
            conn.execute("INSERT INTO run_events (run_id, event_type, event_json) VALUES (?, ?, ?)",
                         (IDS["alpha"], "telemetry_ping",
                          json.dumps({"event_type": "telemetry_ping", "run_id": IDS["alpha"], "schema_version": "1",
                                      "occurred_at": "2026-12-01T13:40:00Z"})))

    async def counted():
        resp, text = await get(http_client, base_url, "/metrics")
        return "themis_events_unknown_type_total 3.0" in text

    await until(counted)
    _, after = await get(http_client, base_url, f"/api/runs/{IDS['alpha']}")
    for key in ("status", "native_status", "metrics", "num_samples", "evaluated", "error"):
        assert after[key] == before[key], key


HOT_JOURNAL = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size=1")  # spill changed pages into the file before the commit
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE run_events SET event_json = event_json || ' '")
os._exit(9)  # the writer dies mid-transaction: a hot journal stays behind
"""


@pytest.mark.gen_test(timeout=90)
async def test_hot_journal_of_a_killed_writer_is_reported_then_recovered(http_client, base_url, store_root):
    _, runs = await get(http_client, base_url, "/api/runs")
    assert len(runs) == 12
    subprocess.run([sys.executable, "-c", HOT_JOURNAL, store_root], check=False, timeout=60)
    assert os.path.exists(store_root + "-journal")

    async def not_ready():
        resp, body = await get(http_client, base_url, "/readyz")
        return body if resp.code == 503 else None

    body = await until(not_ready)
    assert "needs recovery" in body["detail"]
    # the last known state is still served, each summary says why it may be stale
    resp, runs = await get(http_client, base_url, "/api/runs")
    assert resp.code == 200 and len(runs) == 12
    assert all("needs recovery" in (r["error"] or "") for r in runs)
    assert os.path.exists(store_root + "-journal")  # the daemon never rolls it back itself
    with writer(store_root) as conn:  # the next Themis writer opens read-write: rollback
        conn.execute("SELECT count(*) FROM run_events").fetchone()

    async def ready():
        resp, _ = await get(http_client, base_url, "/readyz")
        return resp.code == 200

    await until(ready)
    _, runs = await get(http_client, base_url, "/api/runs")
    assert all(r["error"] is None for r in runs) and len(runs) == 12


@pytest.mark.gen_test(timeout=90)
async def test_a_locked_database_is_retried_not_waited_for(http_client, base_url, store_root, daemon):
    await get(http_client, base_url, "/api/runs")
    polls = daemon.monitor.ticks
    conn = writer(store_root)
    conn.execute("BEGIN EXCLUSIVE")  # what a writer's commit holds, here for a long moment
    conn.execute("INSERT INTO run_events (run_id, event_type, event_json) VALUES (?, ?, ?)",
                 (IDS["killed"], "run_completed",
                  json.dumps({"event_type": "run_completed", "run_id": IDS["killed"], "schema_version": "1",
                              "occurred_at": "2026-12-01T14:00:00Z", "completed_through_stage": "score"})))
    try:
        os.utime(store_root)  # make the daemon's cheap probe say "changed", so it tries to read
        async def polled_while_locked():
            return daemon.monitor.ticks >= polls + 5

        await until(polled_while_locked)
        started = time.monotonic()
        resp, body = await get(http_client, base_url, "/readyz")
        assert resp.code == 200 and time.monotonic() - started < 5  # a short lock is no outage
        resp, runs = await get(http_client, base_url, "/api/runs")
        run = next(r for r in runs if r["run_id"] == IDS["killed"])
        assert run["native_status"] == "running" and run["error"] is None
        # sample text has to be read from the store: a clear 503 while the writer holds the lock
        resp, body = await get(http_client, base_url, f"/api/runs/{IDS['killed']}")
        assert resp.code in (200, 503), body
        if resp.code == 503:
            assert "locked" in body["detail"] and resp.headers.get("Retry-After") == "1"
    finally:
        conn.execute("COMMIT")
        conn.close()

    async def completed():
        _, run = await get(http_client, base_url, f"/api/runs/{IDS['killed']}")
        return run if run["native_status"] == "completed" and run["error"] is None else None

    run = await until(completed)
    assert run["status"] == "completed" and run["completed_at"] == "2026-12-01T14:00:00Z"



def test_on_demand_reads_wait_for_a_committing_writer(store_root):
    """What a detail page reads on demand (the snapshot with the dataset's references, outputs,
    score details) waits for a writer's commit rather than failing at the first busy answer."""
    import threading
    from themis_daemon.storage.themis4.sqlite import SqliteReader

    reader = SqliteReader(store_root)
    run_id = IDS["alpha"]
    want = reader.snapshot(run_id)
    assert want is not None
    positions = [r[0] for r in reader._query("SELECT id FROM run_events WHERE run_id = ?", (run_id,))]
    for read in (lambda: reader.snapshot(run_id), lambda: reader.fetch(run_id, positions),
                 lambda: reader.fetch_outputs(run_id, positions)):
        conn = sqlite3.connect(store_root, isolation_level=None, timeout=5, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")
        released = threading.Event()

        def release(c=conn):
            c.execute("ROLLBACK")
            c.close()
            released.set()

        timer = threading.Timer(0.5, release)
        timer.start()
        try:
            got = read()
        finally:
            timer.join(10)
        assert released.is_set() and got
    assert reader.snapshot(run_id) == want
    reader.close()


@pytest.mark.gen_test(timeout=90)
async def test_a_lock_that_lasts_is_reported(http_client, base_url, store_root, daemon):
    await get(http_client, base_url, "/api/runs")
    for source in daemon.store.sources:
        source.lock_grace = 0.3
    conn = writer(store_root)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("DELETE FROM run_blobs")  # any change the writer has not committed yet
    try:
        os.utime(store_root)

        async def reported():
            resp, body = await get(http_client, base_url, "/readyz")
            return body if resp.code == 503 else None

        body = await until(reported)
        assert "locked" in body["detail"]
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    os.utime(store_root)

    async def ready():
        resp, _ = await get(http_client, base_url, "/readyz")
        return resp.code == 200

    await until(ready)


# ------------------------------------------------------------------------------------ JSONL

@pytest.fixture
def jsonl_root(tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(os.path.join(V4, "jsonl", "store"), dst)
    return str(dst)


def test_jsonl_torn_line_waits_and_garbage_line_is_contained(jsonl_root):
    from themis_daemon import create_app  # a second app on the JSONL copy, polled by hand

    with open(os.path.join(V4, "jsonl", "manifest.json"), encoding="utf-8") as fh:
        ids = {name: run["run_id"] for name, run in json.load(fh)["runs"].items()}
    app = create_app(jsonl_root, poll_interval=60)
    store = app.settings["daemon"].store
    try:
        store.refresh()
        killed = ids["killed"]
        before = store.summary(killed)
        events = os.path.join(jsonl_root, "runs", killed, "events.jsonl")
        line = json.dumps({"event_type": "run_completed", "run_id": killed, "schema_version": "1",
                           "occurred_at": "2026-12-01T15:00:00Z", "completed_through_stage": "judge"},
                          sort_keys=True).encode() + b"\n"
        with open(events, "ab") as fh:  # a write torn in the middle: no newline yet
            fh.write(line[:25])
        store.refresh()
        assert store.summary(killed)["native_status"] == "running" and store.summary(killed)["error"] is None
        with open(events, "ab") as fh:
            fh.write(line[25:])
        store.refresh()
        assert store.summary(killed)["native_status"] == "completed"
        with open(events, "ab") as fh:
            fh.write(b'{"event_type": "score_completed", "case_id": \n')
        store.refresh()
        after = store.summary(killed)
        assert "not valid JSON" in after["error"] and after["evaluated"] == before["evaluated"]
        assert all(s["error"] is None for s in store.summaries() if s["run_id"] != killed)
    finally:
        app.settings["daemon"].close()


def test_jsonl_fifo_in_place_of_events_does_not_hang(jsonl_root):
    from themis_daemon import create_app

    with open(os.path.join(V4, "jsonl", "manifest.json"), encoding="utf-8") as fh:
        ids = {name: run["run_id"] for name, run in json.load(fh)["runs"].items()}
    events = os.path.join(jsonl_root, "runs", ids["beta"], "events.jsonl")
    os.unlink(events)
    os.mkfifo(events)  # a reader that opened this blocking would hang forever
    app = create_app(jsonl_root, poll_interval=60)
    store = app.settings["daemon"].store
    try:
        started = time.monotonic()
        store.refresh()
        assert time.monotonic() - started < 10
        assert "not a regular file" in store.summary(ids["beta"])["error"]
        assert store.summary(ids["alpha"])["error"] is None and store.summary(ids["alpha"])["evaluated"] == 24
    finally:
        app.settings["daemon"].close()


@pytest.mark.gen_test(timeout=90)
async def test_a_database_replaced_on_disk_is_followed(http_client, base_url, store_root, tmp_path):
    _, runs = await get(http_client, base_url, "/api/runs")
    assert len(runs) == 12
    smaller = str(tmp_path / "smaller.sqlite3")
    shutil.copyfile(store_root, smaller)
    with writer(smaller) as conn:  # what a restore of an older backup would look like
        conn.execute("DELETE FROM run_events WHERE run_id = ?", (IDS["beta"],))
        conn.execute("DELETE FROM run_snapshots WHERE run_id = ?", (IDS["beta"],))
    os.replace(smaller, store_root)  # atomically swapped under the running daemon

    async def followed():
        _, runs = await get(http_client, base_url, "/api/runs")
        return runs if len(runs) == 11 else None

    runs = await until(followed)
    assert IDS["beta"] not in {r["run_id"] for r in runs}
    assert all(r["error"] is None for r in runs)
    resp, _ = await get(http_client, base_url, f"/api/runs/{IDS['alpha']}")
    assert resp.code == 200


def test_daemon_starts_next_to_a_writer_holding_the_lock(store_root):
    """Start-up used to refuse a store whose writer was committing ("database is locked")."""
    import threading

    from test_themis4_replicas import DaemonProcess

    conn = sqlite3.connect(store_root, isolation_level=None, timeout=5, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, lambda: (conn.execute("COMMIT"), conn.close()))
    release.start()
    d = DaemonProcess("--storage", store_root, "--poll-interval", "0.1")
    try:
        deadline = time.monotonic() + 60
        runs = []
        while time.monotonic() < deadline and len(runs) != 12:
            status, runs = d.get("/api/runs")
            time.sleep(0.1)
        assert len(runs) == 12, d.text()
        assert d.proc.poll() is None
    finally:
        release.join()
        d.stop()


@pytest.mark.gen_test(timeout=60)
async def test_a_run_of_huge_scores_breaks_nothing_else(http_client, base_url, store_root):
    from themis_daemon.demo.themis4 import SqliteSink, Themis4Writer, make_arith_cases

    with Themis4Writer(SqliteSink(store_root)) as w:
        run = w.new_run(model="overflowing", dataset_id="arith-huge", cases=make_arith_cases(4))
        run.start()
        for case_id in run.case_ids:
            run.case(case_id, scores={"builtin/exact_match": 1.0, "builtin/f1": 1.7e308})
        run.complete()

    async def listed():
        resp, runs = await get(http_client, base_url, "/api/runs")
        assert resp.code == 200
        return runs if len(runs) == 13 else None

    runs = await until(listed)
    huge = next(r for r in runs if r["run_id"] == run.run_id)
    assert huge["metrics"]["builtin/f1"] == 1.7e308 and huge["error"] is None
    resp, _ = await get(http_client, base_url, "/readyz")
    assert resp.code == 200
    resp, result = await get(http_client, base_url, "/api/compare", method="POST",
                             body=json.dumps({"run_ids": [IDS["alpha"], IDS["beta"]]}))
    assert resp.code == 200 and result["pairwise_results"]


def test_details_fall_back_to_python_decoding_for_bare_nan(store_root):
    """SQLite's JSON functions refuse the bare NaN Themis may store; details still work."""
    from themis_daemon.storage import open_sources

    with writer(store_root) as conn:
        row = conn.execute("SELECT id, event_json FROM run_events WHERE run_id = ? AND "
                           "event_type = 'generation_completed' ORDER BY id LIMIT 1", (IDS["alpha"],)).fetchone()
        event = json.loads(row[1])
        event["result"]["latency_ms"] = float("nan")
        conn.execute("UPDATE run_events SET event_json = ? WHERE id = ?", (json.dumps(event, sort_keys=True), row[0]))
    sources = open_sources([store_root])
    sources.refresh()
    reader = sources.sources[0].reader
    run = sources.sources[0].get(IDS["alpha"])
    assert reader.fetch_outputs(IDS["alpha"], run.fold.positions_for(run.fold.sample_order())) is None
    detail = sources.detail(IDS["alpha"])
    first = next(s for s in detail["samples"] if s["id"] == event["case_id"])
    assert first["response"] == event["result"]["final_output"] and first["prompt"].startswith("Instructions:")
    sources.close()
