"""Whatever a run's own files contain, the failure stays in that run's `error`: every other run,
the list, filters, sorting, /metrics and live events keep working, and a repair is picked up."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

import pytest
import tornado.websocket

from conftest import DATA, copy_store, PLAIN

RUNS = ("experiments", "default", "runs")


def meta_path(root, run):
    return os.path.join(root, *RUNS, run, "metadata.json")


def edit_meta(root, run, **changes):
    path = meta_path(root, run)
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    meta.update(changes)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)


def edit_evaluations(root, run, change):
    path = os.path.join(root, *RUNS, run, "evaluations", "default", "evaluation.jsonl")
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        obj = json.loads(line)
        change(obj)
        out.append(json.dumps(obj))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")


@pytest.fixture
def store_root(plain_store):
    edit_meta(plain_store, "fake-direct", created_at=5)
    edit_meta(plain_store, "fake-terse", status=["completed"])
    return plain_store


async def runs(http_client, base_url, query=""):
    resp = await http_client.fetch(base_url + "/api/runs" + query, raise_error=False)
    assert resp.code == 200, resp.body
    return {r["run_id"]: r for r in json.loads(resp.body)}


@pytest.mark.gen_test(timeout=60)
async def test_bad_values_in_one_run_stay_in_its_error(http_client, base_url, store_root):
    got = await runs(http_client, base_url)
    assert set(got) == {"fake-direct", "fake-terse", "fake-swapped", "fake-failed", "fake-live"}, got
    assert "created_at is a int" in got["fake-direct"]["error"] and got["fake-direct"]["created_at"] is None
    assert "not a known status" in got["fake-terse"]["error"] and got["fake-terse"]["status"] == "unknown"
    assert got["fake-swapped"]["error"] is None and got["fake-failed"]["error"] is None and got["fake-live"]["error"] is None
    for query in ("?sort=created_at", "?sort=-status", "?sort=experiment_id", "?status=completed,unknown"):
        assert await runs(http_client, base_url, query), query
    resp = await http_client.fetch(base_url + "/metrics")
    assert b'themis_runs{status="unknown"}' in resp.body
    resp = await http_client.fetch(base_url + "/api/runs/fake-failed")
    assert json.loads(resp.body)["samples"]
    # Live events for the other runs still flow, and a repair is picked up without a restart.
    conn = await tornado.websocket.websocket_connect(base_url.replace("http", "ws", 1) + "/ws")
    await conn.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
    assert json.loads(await conn.read_message())["type"] == "subscribed"
    edit_meta(store_root, "fake-direct", created_at="2026-11-27T11:19:09.714291")
    edit_meta(store_root, "fake-live", status="failed", error_message="killed")
    seen = set()
    deadline = time.monotonic() + 30
    while "fake-live" not in seen:
        assert time.monotonic() < deadline, seen
        msg = json.loads(await asyncio.wait_for(conn.read_message(), 30))
        if msg.get("type") == "run_failed":
            seen.add(msg["run_id"])
    conn.close()
    deadline = time.monotonic() + 30
    while (await runs(http_client, base_url))["fake-direct"]["error"] is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


class TestOneSourceFails:
    """Two stores, the Themis 1.x one failing as a whole (a defect in its reader: values of the
    wrong type in one run's lines are that run's warnings now, see test_v1_damage.py): its
    refresh raises, and the Themis 4 store is served anyway."""

    @pytest.fixture
    def store_root(self):
        return None

    @pytest.fixture(autouse=True)
    def broken_reader(self, monkeypatch):
        from themis_daemon.storage.themis1 import Store

        def refresh(self, *args, **kwargs):
            raise TypeError("'int' object is not iterable")

        monkeypatch.setattr(Store, "refresh", refresh)

    @pytest.fixture
    def app_settings(self, tmp_path):
        v1 = copy_store(PLAIN, str(tmp_path / "v1"))
        v4 = str(tmp_path / "themis.sqlite3")
        shutil.copyfile(os.path.join(DATA, "themis-v4", "sqlite", "themis.sqlite3"), v4)
        return {"poll_interval": 0.05, "storage": {"sources": [v1, v4]}}

    @pytest.mark.gen_test(timeout=60)
    async def test_a_source_whose_refresh_raises_does_not_stop_the_others(self, http_client, base_url):
        got = await runs(http_client, base_url)
        assert got and all(r["format"] == "themis-v4" for r in got.values())
        resp = await http_client.fetch(base_url + "/readyz", raise_error=False)
        body = json.loads(resp.body)
        assert resp.code == 503 and "refresh failed" in body["detail"]
        assert [s["name"] for s in body["sources"] if s["error"] and "refresh failed" in s["error"]] == ["v1"]
