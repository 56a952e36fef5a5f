"""Big Themis 1.x detail pages built by worker processes give the same bytes as this process."""

from __future__ import annotations


import pytest

from themis_daemon import jsonutil
from themis_daemon.storage import open_sources
from themis_daemon.storage.themis1 import store as store_mod

from helpers import detail_bodies, kill_pool_processes, refreshed_with_detail_workers




@pytest.mark.parametrize("which", ("plain_store", "gzip_store"))
def test_detail_pages_built_by_workers_equal_this_process(which, request, monkeypatch):
    monkeypatch.setattr(store_mod, "PAGE_MIN", 1)
    sources = open_sources([request.getfixturevalue(which)])
    try:
        store = refreshed_with_detail_workers(sources)
        shown = 0
        for run_id in sources.run_ids():
            for page in ({}, {"include_pending": True}, {"offset": 2, "limit": 5}, {"offset": 10 ** 6}):
                here, there, samples = detail_bodies(sources, run_id, **page)
                assert here == there, (run_id, page)
                shown += isinstance(samples, jsonutil.Encoded)
        assert shown >= len(sources.run_ids())  # the worker processes built the pages with samples
        assert store.details.pool is not None
    finally:
        sources.close()
    assert store.details.pool is None


def test_a_killed_detail_worker_is_replaced(plain_store, monkeypatch):
    monkeypatch.setattr(store_mod, "PAGE_MIN", 1)
    sources = open_sources([plain_store])
    try:
        store = refreshed_with_detail_workers(sources)
        expected, first, _ = detail_bodies(sources, "fake-direct")
        assert first == expected
        pool = store.details.pool
        kill_pool_processes(pool)
        again, _ = sources.detail_versioned("fake-direct", encoded=True)
        assert jsonutil.dumpb_sliced(again, "samples") == expected  # built here while the pool was broken
        _, there, samples = detail_bodies(sources, "fake-direct")
        assert there == expected and isinstance(samples, jsonutil.Encoded)
        assert store.details.pool is not None and store.details.pool is not pool
    finally:
        sources.close()
