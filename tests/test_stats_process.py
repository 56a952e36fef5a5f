"""Comparisons are computed in a statistics process: the serving process never loads SciPy, a
dead statistics process is replaced, and answers are those of the engine itself."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from themis_daemon.stats import compare_runs
from themis_daemon.storage import open_sources

from conftest import PLAIN, copy_store
from helpers import ServeProcess

BODY = {"run_ids": ["fake-direct", "fake-swapped"], "statistical_test": "bootstrap", "n_resamples": 2000}


def post(url: str, doc) -> tuple:
    req = urllib.request.Request(url + "/api/compare", data=json.dumps(doc).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def children(pid: int):
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as fh:
            out += [int(x) for x in fh.read().split()]
    return out


def mapped(pid: int, needle: str) -> bool:
    with open(f"/proc/{pid}/maps") as fh:
        return needle in fh.read()


def wait_for(pred, timeout=60.0, what=""):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def served(tmp_path):
    root = copy_store(PLAIN, str(tmp_path / "plain"))
    d = ServeProcess("--storage", root)
    try:
        yield d, root
    finally:
        d.stop()


def test_the_serving_process_never_loads_scipy(served):
    d, root = served
    # the statistics process is started with serving and loads the stack itself
    wait_for(lambda: any(mapped(c, "scipy") for c in children(d.proc.pid)), what="the statistics process to load SciPy")
    status, got = post(d.url, BODY)
    assert status == 200
    store = open_sources([root])
    store.refresh()
    runs = [(r, store.scores(r)) for r in BODY["run_ids"]]
    expected = compare_runs(runs, test="bootstrap", n_resamples=2000, alpha=0.05, correction="holm", seed=20240101,
                            lower_is_better=["ResponseLength"], max_work=2_000_000_000)
    assert got == json.loads(json.dumps(expected))
    assert not mapped(d.proc.pid, "scipy")  # not even after a comparison
    assert not mapped(d.proc.pid, "_ufuncs")


def test_a_dead_statistics_process_is_replaced(served):
    d, _root = served
    assert post(d.url, BODY)[0] == 200
    stats_pids = [c for c in children(d.proc.pid) if mapped(c, "scipy")]
    assert stats_pids
    for pid in stats_pids:
        os.kill(pid, signal.SIGKILL)
    # the comparison that finds it dead is answered 503 (or already by a new process), the next one works
    status, body = post(d.url, BODY)
    assert status in (200, 503), body
    if status == 503:
        assert "statistics process" in body["detail"]
        status, body = post(d.url, BODY)
    assert status == 200 and len(body["pairwise_results"]) >= 1
    assert d.proc.poll() is None


def test_a_killed_daemon_leaves_no_worker_process_behind(served):
    d, _root = served
    wait_for(lambda: any(mapped(c, "scipy") for c in children(d.proc.pid)), what="the statistics process")
    workers = children(d.proc.pid)
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(30)
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                             for pid in workers), what="the worker processes to end with their parent")
