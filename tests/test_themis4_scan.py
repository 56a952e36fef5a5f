"""The parallel first scan of a Themis 4 SQLite store gives exactly what polling gives."""

from __future__ import annotations

import os
import shutil

import pytest

from themis_daemon.demo.themis4 import PostgresSink, SqliteSink, Themis4Writer, make_arith_cases
from themis_daemon.storage import open_sources
from themis_daemon.storage.themis4 import source as source_mod

from conftest import DATA


@pytest.fixture(params=("sqlite", "postgres"))
def store(request, tmp_path):
    """A store with the 12 fixture runs and 12 more written in bulk, and a writer factory."""
    if request.param == "sqlite":
        path = str(tmp_path / "themis.sqlite3")
        shutil.copyfile(os.path.join(DATA, "themis-v4", "sqlite", "themis.sqlite3"), path)
        make_sink, spec = (lambda: SqliteSink(path)), path
    else:
        from pg_fixtures import PG_READER, PG_READER_PASSWORD

        db = request.getfixturevalue("pg_fixture_db")
        server = db.server
        admin = server.url(db.dbname, password=server.password)
        make_sink, spec = (lambda: PostgresSink(admin, blob_root=str(tmp_path / "blobs"))), str(db)
    with Themis4Writer(make_sink()) as writer:
        for i in range(12):
            writer.bulk_run(model=f"model-{i}", dataset_id="arith-scan", cases=make_arith_cases(60, variant=i),
                            outcome=("completed", "failed", "running")[i % 3],
                            fail_generation={"q003": "provider error 500"} if i % 4 == 0 else None)
    if request.param == "postgres":
        server.grant_select(db.dbname, PG_READER)
    return spec, make_sink


def views(sources):
    out = {}
    for summary in sources.summaries():
        run_id = summary["run_id"]
        detail = sources.detail(run_id, include_pending=True)
        out[run_id] = (summary, detail["samples"], sources.scores(run_id))
    return out


def test_parallel_first_scan_equals_polling(store, monkeypatch):
    store, make_sink = store
    serial = open_sources([store])
    serial.sources[0].scan_workers = 1
    serial.refresh()
    monkeypatch.setattr(source_mod, "PARALLEL_MIN_EVENTS", 100)
    parallel = open_sources([store])
    parallel.sources[0].scan_workers = 2
    calls = []
    original = source_mod.Themis4Source._cold_scan

    def spy(self, res):
        done = original(self, res)
        calls.append(done)
        return done

    monkeypatch.setattr(source_mod.Themis4Source, "_cold_scan", spy)
    parallel.refresh()
    assert calls == [True]  # the worker processes did the first scan
    assert len(parallel.run_ids()) == 24
    assert views(parallel) == views(serial)
    # polling goes on from where the scan stopped: a new event is seen once, not twice
    with Themis4Writer(make_sink()) as writer:
        run = writer.new_run(model="late", dataset_id="arith-late", cases=make_arith_cases(5))
        run.start()
        run.run_cases()
        run.complete()
    parallel.refresh()
    serial.refresh()
    assert views(parallel) == views(serial)
    late = parallel.summary(run.run_id)
    assert (late["status"], late["evaluated"], late["generated"]) == ("completed", 5, 5)


@pytest.mark.parametrize("parts", [2, 3])
def test_parallel_scan_partitions_cover_every_run_id_once(tmp_path, monkeypatch, parts):
    """Workers split runs by ranges of the run id: ids that are not lowercase hex (upper case,
    other characters, the range bounds themselves) still land in exactly one part."""
    import sqlite3

    path = str(tmp_path / "themis.sqlite3")
    shutil.copyfile(os.path.join(DATA, "themis-v4", "sqlite", "themis.sqlite3"), path)
    conn = sqlite3.connect(path)
    (template,) = conn.execute("SELECT run_id FROM run_events GROUP BY run_id ORDER BY count(*) DESC LIMIT 1").fetchone()
    odd_ids = ["8", "7" + "f" * 63, template.upper(), "zz-run", "Ü-run", "-run", "a" * 64, "5"]
    for new in odd_ids:
        conn.execute("INSERT INTO run_snapshots SELECT ?, replace(snapshot_json, ?, ?) FROM run_snapshots "
                     "WHERE run_id = ?", (new, template, new, template))
        conn.execute("INSERT INTO run_events (run_id, event_type, event_json) SELECT ?, event_type, "
                     "replace(event_json, ?, ?) FROM run_events WHERE run_id = ? ORDER BY id",
                     (new, template, new, template))
    conn.commit()
    conn.close()
    serial = open_sources([path])
    serial.sources[0].scan_workers = 1
    serial.refresh()
    monkeypatch.setattr(source_mod, "PARALLEL_MIN_EVENTS", 100)
    parallel = open_sources([path])
    parallel.sources[0].scan_workers = parts
    calls = []
    original = source_mod.Themis4Source._cold_scan
    monkeypatch.setattr(source_mod.Themis4Source, "_cold_scan",
                        lambda self, res: calls.append(original(self, res)) or calls[-1])
    parallel.refresh()
    assert calls == [True]
    assert set(odd_ids) <= set(parallel.run_ids())
    assert sorted(parallel.run_ids()) == sorted(serial.run_ids())
    assert views(parallel) == views(serial)
