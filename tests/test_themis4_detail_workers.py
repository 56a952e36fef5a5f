"""Big Themis 4 detail pages built by worker processes give the same bytes as this process."""

from __future__ import annotations

import os
import shutil

import pytest

from themis_daemon import jsonutil
from themis_daemon.demo.themis4 import SqliteSink, Themis4Writer, make_arith_cases
from themis_daemon.storage import open_sources
from themis_daemon.storage.themis4 import source as source_mod

from conftest import DATA
from helpers import detail_bodies, kill_pool_processes, refreshed_with_detail_workers


@pytest.fixture(params=("sqlite", "jsonl", "postgres"))
def spec(request, tmp_path):
    """A real Themis 4 fixture store of each backend (for SQLite, with a bigger run added)."""
    if request.param == "sqlite":
        path = str(tmp_path / "themis.sqlite3")
        shutil.copyfile(os.path.join(DATA, "themis-v4", "sqlite", "themis.sqlite3"), path)
        with Themis4Writer(SqliteSink(path)) as writer:
            writer.bulk_run(model="big", dataset_id="arith-big", cases=make_arith_cases(300), outcome="running",
                            fail_generation={"q003": "provider error 500"})
        return path
    if request.param == "jsonl":
        root = str(tmp_path / "store")
        shutil.copytree(os.path.join(DATA, "themis-v4", "jsonl", "store"), root)
        return root
    return str(request.getfixturevalue("pg_fixture_db"))




def test_detail_pages_built_by_workers_equal_this_process(spec, monkeypatch):
    monkeypatch.setattr(source_mod, "PAGE_MIN", 1)
    sources = open_sources([spec])
    try:
        sources.refresh()
        source = sources.sources[0]
        assert source.details.count == min(2, os.cpu_count() or 1)
        if not source.details.enabled:
            pytest.skip("one CPU: details are always built in this process")
        run_ids = sources.run_ids()
        assert len(run_ids) >= 10
        shown = 0
        for run_id in run_ids:
            for page in ({}, {"include_pending": True}, {"offset": 1, "limit": 3}):
                here, there, samples = detail_bodies(sources, run_id, **page)
                assert here == there, (run_id, page)
                if isinstance(samples, jsonutil.Encoded):
                    shown += 1
        assert shown >= 10  # the worker processes built most pages (all those with samples)
        assert source.details.pool is not None
    finally:
        sources.close()
    assert source.details.pool is None  # closing the source stops its workers


def test_a_killed_detail_worker_is_replaced_and_no_page_is_lost(tmp_path, monkeypatch):
    path = str(tmp_path / "themis.sqlite3")
    shutil.copyfile(os.path.join(DATA, "themis-v4", "sqlite", "themis.sqlite3"), path)
    monkeypatch.setattr(source_mod, "PAGE_MIN", 1)
    sources = open_sources([path])
    try:
        source = refreshed_with_detail_workers(sources)
        run_id = max(sources.summaries(), key=lambda s: s.get("num_samples") or 0)["run_id"]
        expected, first, _ = detail_bodies(sources, run_id)
        assert first == expected
        pool = source.details.pool
        kill_pool_processes(pool)
        again, _ = sources.detail_versioned(run_id, encoded=True)
        assert jsonutil.dumpb_sliced(again, "samples") == expected  # built here while the pool was broken
        here, there, samples = detail_bodies(sources, run_id)
        assert there == expected and isinstance(samples, jsonutil.Encoded)
        assert source.details.pool is not None and source.details.pool is not pool
    finally:
        sources.close()


def test_postgres_detail_workers_keep_their_connections_and_survive_a_restart(pg_fixture_db, monkeypatch):
    """Each detail worker connects to PostgreSQL once, when it starts (a connection costs a
    server process and a password exchange), keeps its connections between pages, and
    reconnects after the server restarts."""
    monkeypatch.setattr(source_mod, "PAGE_MIN", 1)
    server, db = pg_fixture_db.server, pg_fixture_db.dbname
    sources = open_sources([str(pg_fixture_db)])

    def backends():
        out = server.psql("postgres", "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity "
                                      f"WHERE datname = '{db}' AND usename = '{pg_fixture_db.user}'")
        return set(filter(None, out.split(",")))

    try:
        source = refreshed_with_detail_workers(sources)
        run_id = max(sources.summaries(), key=lambda s: s.get("num_samples") or 0)["run_id"]
        expected, first, samples = detail_bodies(sources, run_id)
        assert first == expected and isinstance(samples, jsonutil.Encoded)
        kept = backends()
        # the serving process's connection, and two per detail worker that has built a share
        # (the pool hands shares to whichever worker is free)
        assert 3 <= len(kept) <= 1 + 2 * source.details.count, kept
        for _ in range(3):
            assert detail_bodies(sources, run_id)[1] == expected
            now = backends()
            assert kept <= now and len(now) <= 1 + 2 * source.details.count, (kept, now)  # none closed
            kept = now
        server.restart()
        sources.refresh()
        _, after, samples = detail_bodies(sources, run_id)
        assert after == expected and isinstance(samples, jsonutil.Encoded)
        assert source.details.pool is not None
    finally:
        sources.close()
