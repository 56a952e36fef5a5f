"""Live Themis 4 runs: a writer in the exact Themis 4 format, the daemon polling, a `*` subscriber.

Every backend (SQLite, JSONL, a real PostgreSQL server) is written while the daemon serves it;
the subscriber checks the event sequence and REST the final state.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
import tornado.websocket

from themis_daemon.demo.themis4 import JsonlSink, PostgresSink, SqliteSink, Themis4Writer, make_arith_cases

BACKENDS = ("sqlite", "jsonl", "postgres")
N = 12


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def writer_and_spec(backend, tmp_path, request):
    """A writer on an empty store, and what the daemon is given to read it."""
    if backend == "sqlite":
        path = str(tmp_path / "themis.sqlite3")
        writer = Themis4Writer(SqliteSink(path))
        yield writer, path
    elif backend == "jsonl":
        root = str(tmp_path / "store")
        writer = Themis4Writer(JsonlSink(root))
        yield writer, root
    else:
        server = request.getfixturevalue("pg_server")
        from pg_fixtures import PG_READER, PG_READER_PASSWORD

        name = f"live_{os.getpid()}_{int(time.monotonic() * 1000)}"
        server.create_database(name)
        writer = Themis4Writer(PostgresSink(server.url(name, password=server.password),
                                            blob_root=str(tmp_path / "blobs")))
        server.grant_select(name, PG_READER)
        yield writer, server.url(name, user=PG_READER, password=PG_READER_PASSWORD)
        writer.close()
        server.drop_database(name)
        return
    writer.close()


@pytest.fixture
def store_root(writer_and_spec):
    return writer_and_spec[1]


@pytest.fixture
def app_settings():
    return {"poll_interval": 0.05}


async def connect(base_url):
    conn = await tornado.websocket.websocket_connect(base_url.replace("http", "ws", 1) + "/ws")
    await conn.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
    msg = json.loads(await asyncio.wait_for(conn.read_message(), 30))
    assert msg["type"] == "subscribed"
    return conn


async def collect(conn, run_id, until, timeout=60.0):
    """Messages about `run_id` until `until(message)` holds (bounded)."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; got {[(m['type'], m.get('data', {}).get('status')) for m in got]}"
        raw = await asyncio.wait_for(conn.read_message(), remaining)
        assert raw is not None, "connection closed"
        msg = json.loads(raw)
        if msg.get("run_id") == run_id:
            got.append(msg)
            if until(msg):
                return got


async def get(http_client, base_url, path):
    resp = await http_client.fetch(base_url + path, raise_error=False)
    return resp, json.loads(resp.body)


async def run_state(http_client, base_url, run_id, pred, timeout=60.0):
    """The run's detail once `pred` holds for it (bounded wait for the daemon's polls)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp, body = await get(http_client, base_url, f"/api/runs/{run_id}")
        if resp.code == 200 and pred(body):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("state not reached")


@pytest.mark.gen_test(timeout=120)
async def test_live_run_event_sequence(http_client, base_url, writer_and_spec, backend):
    writer, _ = writer_and_spec
    _, runs = await get(http_client, base_url, "/api/runs")
    assert runs == []
    conn = await connect(base_url)
    run = writer.new_run(model="live-model", dataset_id="arith-live", cases=make_arith_cases(N),
                         benchmark_id="arith")
    got = await collect(conn, run.run_id, lambda m: m["type"] == "run_started")
    assert got[-1]["data"]["status"] == "pending" and got[-1]["data"]["progress"] is None
    run.start()
    got = await collect(conn, run.run_id, lambda m: m["type"] == "run_started")
    assert got[-1]["data"]["status"] == "in_progress" and got[-1]["data"]["native_status"] == "running"
    events = []
    for i, case_id in enumerate(run.case_ids):
        run.case(case_id, fail_generation="provider error 500" if i == 3 else None)
        await asyncio.sleep(0.03)
    run.complete()
    events = await collect(conn, run.run_id, lambda m: m["type"] in ("run_completed", "run_failed"))
    kinds = [m["type"] for m in events]
    assert kinds[-1] == "run_completed" and "run_failed" not in kinds
    assert set(kinds) <= {"run_progress", "run_completed"}
    progress = [m["data"]["progress"] for m in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    seqs = [m["seq"] for m in got + events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    final = events[-1]["data"]
    assert final["status"] == "completed" and final["native_status"] == "partial_failure"
    assert (final["expected_samples"], final["generated"], final["evaluated"], final["failed"]) == (N, N - 1, N - 1, 1)
    assert final["format"] == "themis-v4" and final["experiment_id"] == "arith" and final["model"] == "live-model"
    _, detail = await get(http_client, base_url, f"/api/runs/{run.run_id[:10]}")
    assert detail["run_id"] == run.run_id and detail["num_samples"] == N - 1
    assert all(s["reference"] is not None for s in detail["samples"])
    conn.close()


@pytest.mark.gen_test(timeout=120)
async def test_rerun_rebuilds_instead_of_double_counting(http_client, base_url, writer_and_spec, backend):
    writer, _ = writer_and_spec
    run = writer.new_run(model="rerun-model", dataset_id="arith-rerun", cases=make_arith_cases(N))
    run.start()
    run.run_cases()
    run.complete()

    def state(pred):
        return run_state(http_client, base_url, run.run_id, pred)

    await state(lambda b: b["status"] == "completed" and b["evaluated"] == N)
    conn = await connect(base_url)
    run.rerun_clear()  # existing_run_policy="rerun": events, projections and snapshot deleted
    run.start()
    run.run_cases(run.case_ids[:3])
    body = await state(lambda b: b["evaluated"] == 3 and b["status"] == "in_progress")
    assert body["generated"] == 3 and body["num_samples"] == 3 and body["completed_at"] is None
    run.run_cases(run.case_ids[3:])
    run.complete()
    body = await state(lambda b: b["status"] == "completed")
    assert (body["generated"], body["evaluated"], body["num_samples"]) == (N, N, N)
    msgs = await collect(conn, run.run_id, lambda m: m["type"] == "run_completed")
    assert any(m["type"] in ("run_started", "run_removed", "run_progress") for m in msgs[:-1])
    conn.close()


@pytest.mark.gen_test(timeout=120)
async def test_resumed_run_is_flagged(http_client, base_url, writer_and_spec, backend):
    """Themis 4 resumes a failed run by running it again: events after a final one."""
    writer, _ = writer_and_spec
    run = writer.new_run(model="resume-model", dataset_id="arith-resume", cases=make_arith_cases(N))
    run.start()
    run.run_cases(run.case_ids[:4])
    run.fail("budget guard: token budget exhausted")
    conn = await connect(base_url)

    body = await run_state(http_client, base_url, run.run_id, lambda b: b["status"] == "failed")
    assert body["error_message"] == "budget guard: token budget exhausted"
    run.run_cases(run.case_ids[4:])
    run.complete()
    msgs = await collect(conn, run.run_id, lambda m: m["type"] == "run_completed")
    assert any(m["type"] == "run_started" and m.get("resumed") for m in msgs)
    final = msgs[-1]["data"]
    assert final["native_status"] == "partial_failure" and final["evaluated"] == N
    conn.close()
