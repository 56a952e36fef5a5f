"""`--workers 2`: one poller numbers run events for both workers, so every connection sees the
same events with the same `seq`, and `since` replay works whichever worker answers, including one
restarted after a crash."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.request

import pytest
import tornado.websocket

from conftest import PLAIN, copy_store
from helpers import ServeProcess
from themis_daemon.demo.writer import ThemisRunWriter, make_arith_dataset


class Supervised(ServeProcess):
    """`--workers 2`: the supervisor and its workers."""

    URL_LINE = re.compile(r"on (http://127\.0\.0\.1:\d+)")
    STOP_WAIT = 30

    def __init__(self, storage: str):
        super().__init__("--storage", storage, "--workers", "2", "--poll-interval", "0.2", "--log-level", "info")
        self.port = int(self.url.rsplit(":", 1)[1])

    def children(self):
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                            out.append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
        return out

    def connections_by_pid(self):
        """Established connections to the server port, per child process holding them."""
        inodes = {}
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(path) as fh:
                    for line in list(fh)[1:]:
                        f = line.split()
                        if int(f[1].rsplit(":", 1)[1], 16) == self.port and f[3] == "01":
                            inodes[f[9]] = True
            except OSError:
                pass
        counts = {}
        for pid in self.children():
            try:
                links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            except OSError:
                continue
            n = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
            if n:
                counts[pid] = n
        return counts


def ready(url, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=10) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("not ready")


async def subscribe(url, since=None):
    conn = await tornado.websocket.websocket_connect(url.replace("http", "ws", 1) + "/ws")
    msg = {"type": "subscribe", "run_id": "*"}
    if since is not None:
        msg["since"] = since
    await conn.write_message(json.dumps(msg))
    reply = json.loads(await asyncio.wait_for(conn.read_message(), 30))
    assert reply["type"] == "subscribed"
    return conn


async def events_until(conn, pred, timeout=60):
    got = []
    deadline = time.monotonic() + timeout
    while not got or not pred(got[-1]):
        assert time.monotonic() < deadline, got
        msg = json.loads(await asyncio.wait_for(conn.read_message(), deadline - time.monotonic()))
        if "seq" in msg:
            got.append((msg["seq"], msg["type"], msg["run_id"]))
    return got


async def spread(daemon, url, since=None, want=12):
    """Connections until both workers hold some (the kernel picks the worker per connection)."""
    conns = []
    while len(conns) < 40:
        conns.append(await subscribe(url, since))
        if len(conns) >= want and len(daemon.connections_by_pid()) >= 2:
            return conns
    raise AssertionError(f"connections all landed on one worker: {daemon.connections_by_pid()}")


def write_run(root, run_id, steps=4):
    writer = ThemisRunWriter(root, run_id, dataset=make_arith_dataset(12), eval_batch=4, seed=3)
    writer.start()
    for _ in range(steps):
        time.sleep(0.3)
        writer.step(3)
    time.sleep(0.3)
    writer.complete()


def finished(run_id):
    return lambda ev: ev[2] == run_id and ev[1] in ("run_completed", "run_failed")


@pytest.mark.gen_test(timeout=300)
async def test_two_workers_number_events_alike_and_replay_anywhere(tmp_path):
    root = copy_store(PLAIN, str(tmp_path / "store"))
    daemon = Supervised(root)
    try:
        await asyncio.get_running_loop().run_in_executor(None, ready, daemon.url)
        conns = await spread(daemon, daemon.url)
        before = 0
        await asyncio.get_running_loop().run_in_executor(None, write_run, root, "two-workers-1")
        streams = [await events_until(c, finished("two-workers-1")) for c in conns]
        assert all(s == streams[0] for s in streams), streams
        first = streams[0]
        assert [e[1] for e in first][0] == "run_started" and len({e[0] for e in first}) == len(first)
        for c in conns:
            c.close()

        # A worker crashes and is restarted: it too answers `since` with the same events.
        counts = daemon.connections_by_pid()
        workers = [p for p in daemon.children() if p in counts] or daemon.children()
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not any("restarting it" in line for line in daemon.lines):
            assert time.monotonic() < deadline, "".join(daemon.lines)
            await asyncio.sleep(0.1)
        await asyncio.get_running_loop().run_in_executor(None, ready, daemon.url)
        since = first[0][0] - 1
        conns = await spread(daemon, daemon.url, since=since)
        replays = [await events_until(c, finished("two-workers-1")) for c in conns]
        # Progress queued for one client coalesces to the newest, so a replay may skip some; what
        # it holds is the same on every worker, with the numbers of the live stream.
        assert all(r == replays[0] for r in replays), replays
        assert set(replays[0]) <= set(first)
        assert [e for e in replays[0] if e[1] != "run_progress"] == [e for e in first if e[1] != "run_progress"]
        await asyncio.get_running_loop().run_in_executor(None, write_run, root, "two-workers-2", 2)
        streams = [await events_until(c, finished("two-workers-2")) for c in conns]
        assert all(s == streams[0] for s in streams)
        assert streams[0][0][0] > first[-1][0] > before
        for c in conns:
            c.close()
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0, "".join(daemon.lines[-30:])
