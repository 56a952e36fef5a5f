"""A run that disappears while a request is working on it is a 404, never a 500.

The run is resolved on the event loop and read in the work pool; the store's next refresh can
drop it in between. Each test removes the run's directory from a real store at that very
moment (from inside the read, through the store's own refresh) and sends the request to a
real server.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers import fetch


def remove_run_then(daemon, runs_dir, run_id, method):
    """Wrap `daemon.store.<method>`: the run's files go and the store refreshes first."""
    store = daemon.store
    original = getattr(store, method)

    def racing(*args, **kwargs):
        if os.path.exists(os.path.join(runs_dir, run_id)):  # once, at the first read
            shutil.rmtree(os.path.join(runs_dir, run_id))
            store.refresh()
            assert run_id not in store.run_ids()
        return original(*args, **kwargs)

    setattr(store, method, racing)


@pytest.fixture
def runs_dir(store_root):
    return os.path.join(store_root, "experiments", "default", "runs")


@pytest.mark.gen_test
async def test_detail_of_a_run_removed_meanwhile_is_404(http_client, base_url, daemon, runs_dir):
    resp, _ = await fetch(http_client, base_url + "/api/runs/fake-direct")
    assert resp.code == 200
    remove_run_then(daemon, runs_dir, "fake-terse", "detail_versioned")
    resp, body = await fetch(http_client, base_url + "/api/runs/fake-terse")
    assert resp.code == 404, body
    assert body["status"] == 404 and "fake-terse" in body["detail"]
    assert resp.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.gen_test
async def test_compare_with_a_run_removed_meanwhile_is_404(http_client, base_url, daemon, runs_dir):
    remove_run_then(daemon, runs_dir, "fake-terse", "scores")
    resp, body = await fetch(http_client, base_url + "/api/compare", method="POST",
                             body=json.dumps({"run_ids": ["fake-direct", "fake-terse"]}),
                             headers={"Content-Type": "application/json"})
    assert resp.code == 404, body
    assert body["status"] == 404 and "fake-terse" in body["detail"]
