"""A storage read that hangs (a frozen PostgreSQL server) never freezes the daemon: /readyz says
so, /healthz, /metrics and the run list keep answering from the last known state."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time

import pytest

from pgserver import _proc_table


@pytest.fixture
def store_root(pg_fixture_db):
    return pg_fixture_db


@pytest.fixture
def app_settings():
    return {"poll_interval": 0.1, "stuck_after_polls": 20}


def freeze(server, sig):
    pid = server.postmaster_pid()
    for target in [pid] + [p for p, ppid in _proc_table() if ppid == pid]:
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            pass


async def get(http_client, url):
    resp = await http_client.fetch(url, raise_error=False, request_timeout=30)
    return resp, json.loads(resp.body) if resp.body and b"{" in resp.body[:1] + resp.body[:2] else resp.body


async def until(pred, timeout=60.0, what=""):
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.gen_test(timeout=240)
async def test_a_hanging_poll_makes_readyz_503_and_nothing_else_waits(http_client, base_url, store_root, caplog):
    caplog.set_level(logging.INFO, logger="themis_daemon.monitor")

    async def ready_code():
        resp, _ = await get(http_client, base_url + "/readyz")
        return resp.code

    await until(lambda: _eq(ready_code(), 200), what="ready")
    resp = await http_client.fetch(base_url + "/api/runs")
    before = json.loads(resp.body)
    assert before
    server = store_root.server
    freeze(server, signal.SIGSTOP)
    try:
        async def stuck_body():
            resp, body = await get(http_client, base_url + "/readyz")
            return body if resp.code == 503 else None

        body = await until(stuck_body, what="/readyz to report the hanging poll")
        assert body["checks"]["polls_keep_up"] is False and body["checks"]["first_scan_done"] is True
        assert "storage poll running for" in body["detail"]
        for path in ("/healthz", "/"):
            resp, _ = await get(http_client, base_url + path)
            assert resp.code == 200, path
        started = time.monotonic()
        resp, runs = await get(http_client, base_url + "/api/runs")
        assert resp.code == 200 and [r["run_id"] for r in runs] == [r["run_id"] for r in before]
        assert time.monotonic() - started < 20
        resp, metrics = await get(http_client, base_url + "/metrics")
        text = metrics.decode()
        assert resp.code == 200 and "themis_poll_stuck 1.0" in text
        async def logged():
            return any(r.levelno == logging.ERROR and "storage poll has been running" in r.getMessage()
                       for r in caplog.records)

        await until(logged, what="the hanging poll to be logged")
    finally:
        freeze(server, signal.SIGCONT)
    await until(lambda: _eq(ready_code(), 200), what="ready again after the store answers")

    async def recovered():
        return any("storage poll finished after" in r.getMessage() for r in caplog.records)

    await until(recovered, what="the recovery to be logged")


async def _eq(coro, value):
    return (await coro) == value
