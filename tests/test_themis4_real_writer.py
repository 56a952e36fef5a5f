"""The real themis-eval 4.0.2 writing a live run while the daemon polls at 0.1 s.

Needs a Python >= 3.12 with themis-eval 4.0.2: `THEMIS4_PYTHON`, else `.venv-themis4/bin/python`
in the checkout (`.ci/run` creates it where it can). The writer is `themis4_tools/live_writer_v4.py`
(a copy of the team's tool): only its generator is a local fake, everything else is stock Themis.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
import tornado.websocket

from themis_daemon.demo.themis4 import JsonlSink, PostgresSink, SqliteSink

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "themis4_tools", "live_writer_v4.py")
CASES = 16
FAIL_EVERY = 7


def themis4_python():
    candidates = [os.environ.get("THEMIS4_PYTHON"), os.path.join(os.path.dirname(HERE), ".venv-themis4", "bin", "python")]
    for python in candidates:
        if not python or not os.path.exists(python):
            continue
        probe = subprocess.run([python, "-c", "import themis; print(themis.__version__)"],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode == 0 and probe.stdout.strip() == "4.0.2":
            return python
    return None


PYTHON = themis4_python()
pytestmark = pytest.mark.skipif(PYTHON is None, reason="no Python >= 3.12 with themis-eval 4.0.2 "
                                "(set THEMIS4_PYTHON or create .venv-themis4: see .ci/run)")


@pytest.fixture(params=("sqlite", "jsonl", "postgres"))
def backend(request):
    return request.param


@pytest.fixture
def live(backend, tmp_path, request):
    """(daemon's store spec, writer arguments, a function counting the store's events)."""
    out = tmp_path / "out"
    if backend == "sqlite":
        path = out / "sqlite" / "themis.sqlite3"
        path.parent.mkdir(parents=True)
        SqliteSink(str(path)).initialize()  # the same DDL Themis' initialize() issues

        def rows():
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                return [json.loads(r[0]) for r in conn.execute("SELECT event_json FROM run_events ORDER BY id")]

        yield str(path), ["--backend", "sqlite", "--out", str(out)], rows
        return
    if backend == "jsonl":
        root = out / "jsonl" / "store"
        JsonlSink(str(root)).initialize()

        def rows():
            found = []
            for run in sorted((root / "runs").iterdir()):
                events = run / "events.jsonl"
                if events.exists():
                    found.extend(json.loads(line) for line in events.read_text().splitlines() if line.strip())
            return found

        yield str(root), ["--backend", "jsonl", "--out", str(out)], rows
        return
    server = request.getfixturevalue("pg_server")
    from pg_fixtures import PG_READER, PG_READER_PASSWORD

    name = f"real_{os.getpid()}_{int(time.monotonic() * 1000)}"
    server.create_database(name)
    admin = server.url(name, password=server.password)
    sink = PostgresSink(admin, blob_root=str(tmp_path / "blobs"))
    sink.initialize()
    sink.close()
    server.grant_select(name, PG_READER)

    def rows():
        return [json.loads(line) for line in
                server.psql(name, "SELECT event_json::text FROM run_events ORDER BY id").splitlines() if line]

    yield (server.url(name, user=PG_READER, password=PG_READER_PASSWORD),
           ["--backend", "postgres", "--out", str(out), "--pg-url", admin], rows)
    server.drop_database(name)


@pytest.fixture
def store_root(live):
    return live[0]


@pytest.fixture
def app_settings():
    return {"poll_interval": 0.1}


@pytest.mark.gen_test(timeout=240)
async def test_real_themis_live_run_is_watched_event_by_event(http_client, base_url, live, daemon):
    _, writer_args, rows = live
    conn = await tornado.websocket.websocket_connect(base_url.replace("http", "ws", 1) + "/ws")
    await conn.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
    assert json.loads(await conn.read_message())["type"] == "subscribed"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = await asyncio.create_subprocess_exec(
        PYTHON, WRITER, *writer_args, "--cases", str(CASES), "--delay", "0.05", "--fail-every", str(FAIL_EVERY),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
        run_id = first["run_id"]
        seen = []
        deadline = time.monotonic() + 180
        while not seen or seen[-1]["type"] not in ("run_completed", "run_failed"):
            raw = await asyncio.wait_for(conn.read_message(), max(1.0, deadline - time.monotonic()))
            assert raw is not None
            msg = json.loads(raw)
            if msg.get("run_id") == run_id:
                seen.append(msg)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    kinds = [m["type"] for m in seen]
    assert kinds[0] == "run_started" and kinds[-1] == "run_completed"
    assert "run_progress" in kinds  # watched while it ran, not only at the end
    seqs = [m["seq"] for m in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    failed = CASES // FAIL_EVERY
    final = seen[-1]["data"]
    assert final["native_status"] == "partial_failure" and final["status"] == "completed"
    assert (final["expected_samples"], final["generated"], final["failed"]) == (CASES, CASES - failed, failed)
    assert final["evaluated"] == final["num_samples"] == CASES - failed
    # every stored event was folded, and the reader never made the writer repeat one
    events = [e for e in rows() if e["run_id"] == run_id]
    resp = await http_client.fetch(f"{base_url}/api/runs/{run_id}")
    detail = json.loads(resp.body)
    assert detail["metadata"]["events"] == len(events)
    keys = [(e["event_type"], e.get("case_id"), e.get("candidate_id"), e.get("metric_id")) for e in events]
    assert len(keys) == len(set(keys)), "duplicated events in the writer's store"
    conn.close()
