"""Scale-out on one PostgreSQL store: two daemon processes, one live writer, the same `seq`s.

Also what an operator of such a deployment sees when the database restarts under the daemons,
and that the password in the URL never reaches a log line or an answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import tornado.websocket

from helpers import end_process
from themis_daemon.demo.themis4 import PostgresSink, Themis4Writer, make_arith_cases

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DaemonProcess:
    """`themis-daemon serve` on a free loopback port; its log is drained and kept."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines = []
        self.port = None
        found = threading.Event()

        def drain():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=drain, daemon=True).start()
        found.wait(60)
        assert self.port, "daemon did not start: " + "".join(self.lines)

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def text(self):
        return "".join(self.lines)

    def stop(self):
        return end_process(self.proc, 30, kill_wait=10)


@pytest.fixture
def pg_store(pg_server, tmp_path):
    from pg_fixtures import PG_READER, PG_READER_PASSWORD

    name = f"replicas_{os.getpid()}_{int(time.monotonic() * 1000)}"
    pg_server.create_database(name)
    writer = Themis4Writer(PostgresSink(pg_server.url(name, password=pg_server.password),
                                        blob_root=str(tmp_path / "blobs")))
    pg_server.grant_select(name, PG_READER)
    yield writer, pg_server.url(name, user=PG_READER, password=PG_READER_PASSWORD), PG_READER_PASSWORD
    writer.close()
    if not pg_server.running:
        pg_server.restart()
    pg_server.drop_database(name)


async def listen(port, run_filter, stop_when, timeout=90.0, since=None):
    conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws")
    msg = {"type": "subscribe", "run_id": "*"}
    if since is not None:
        msg["since"] = since
    await conn.write_message(json.dumps(msg))
    got = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            raw = await asyncio.wait_for(conn.read_message(), max(0.5, deadline - time.monotonic()))
            assert raw is not None
            m = json.loads(raw)
            if m.get("run_id") in run_filter or m["type"] == "replay_incomplete":
                got.append(m)
                if stop_when(m):
                    return got
    finally:
        conn.close()


def test_two_replicas_number_events_alike(pg_store):
    writer, url, _password = pg_store
    a = DaemonProcess("--storage", url, "--poll-interval", "0.1")
    b = DaemonProcess("--storage", url, "--poll-interval", "0.25")
    try:
        run = writer.new_run(model="replica-model", dataset_id="arith-replicas", cases=make_arith_cases(20))
        done = lambda m: m["type"] == "run_completed"  # noqa: E731

        async def scenario():
            ta = asyncio.ensure_future(listen(a.port, {run.run_id}, done))
            tb = asyncio.ensure_future(listen(b.port, {run.run_id}, done))
            await asyncio.sleep(1.0)  # both subscribed
            run.start()
            for case_id in run.case_ids:
                run.case(case_id)
                await asyncio.sleep(0.02)
            run.complete()
            return await ta, await tb

        got_a, got_b = asyncio.run(scenario())
        seq_a = {m["seq"]: m for m in got_a if "seq" in m}
        seq_b = {m["seq"]: m for m in got_b if "seq" in m}
        final_a = [s for s, m in seq_a.items() if m["type"] == "run_completed"]
        final_b = [s for s, m in seq_b.items() if m["type"] == "run_completed"]
        assert final_a == final_b and len(final_a) == 1  # the same final event, the same number
        common = set(seq_a) & set(seq_b)
        positional = [s for s in common if seq_a[s]["type"] != "run_started" or seq_a[s]["data"]["status"] != "pending"]
        assert len(positional) >= 2
        for s in common:
            if seq_a[s]["data"]["status"] == "pending":
                continue  # a run appearing without events is numbered by each hub alone
            assert seq_a[s]["type"] == seq_b[s]["type"], s
            if seq_a[s]["type"] == "run_started":
                continue  # the same event; its `data` is the state when that replica saw it
            for key in ("status", "generated", "evaluated", "progress"):
                assert seq_a[s]["data"][key] == seq_b[s]["data"][key], (s, key)

        # a client that read up to a seq on replica A resumes on replica B without gaps
        started = min(s for s, m in seq_a.items() if m["type"] == "run_progress")
        replay = asyncio.run(listen(b.port, {run.run_id}, done, since=started))
        replayed = [m["seq"] for m in replay if "seq" in m]
        assert replayed and all(s > started for s in replayed) and replayed[-1] == final_a[0]
    finally:
        a.stop()
        b.stop()


def test_database_restart_is_survived_and_the_password_never_shown(pg_store, pg_server):
    writer, url, password = pg_store
    run = writer.new_run(model="restart-model", dataset_id="arith-restart", cases=make_arith_cases(8))
    run.start()
    run.run_cases(run.case_ids[:4])
    writer.sink.close()  # the writer's connection does not outlive the server restart below
    d = DaemonProcess("--storage", url, "--poll-interval", "0.1")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and d.get("/readyz")[0] != 200:
            time.sleep(0.1)
        assert d.get("/readyz")[0] == 200
        pg_server.kill()
        deadline = time.monotonic() + 60
        status, body = d.get("/readyz")
        while time.monotonic() < deadline and status == 200:
            time.sleep(0.1)
            status, body = d.get("/readyz")
        assert status == 503 and body["sources"][0]["error"]
        status, runs = d.get("/api/runs")  # the last known state is still served
        assert status == 200 and [r["evaluated"] for r in runs] == [4] and runs[0]["error"]
        pg_server.restart()
        run.run_cases(run.case_ids[4:])
        run.complete()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status, runs = d.get("/api/runs")
            if runs and runs[0]["status"] == "completed" and runs[0]["error"] is None:
                break
            time.sleep(0.2)
        assert runs[0]["status"] == "completed" and runs[0]["evaluated"] == 8 and runs[0]["error"] is None
        assert d.get("/readyz")[0] == 200
        status, ready = d.get("/readyz")
        everything = d.text() + json.dumps(ready) + json.dumps(runs)
        from urllib.parse import quote

        assert password not in everything and quote(password, safe="") not in everything
    finally:
        d.stop()
