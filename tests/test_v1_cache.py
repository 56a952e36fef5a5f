"""The persistent cache of Themis 1.x per-run state: used only while the files still match it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from themis_daemon.storage.themis1 import Store, jsonl as jsonl_mod
from themis_daemon.storage.themis1 import cache as cache_mod
from conftest import GZIP, PLAIN, copy_store, snapshot_tree
from helpers import end_process
from test_storage import RUNS, gz_members, run_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def everything(store):
    """What users see of every run: the list and each full detail."""
    out = {"list": store.summaries()}
    for run_id in store.run_ids():
        detail = store.detail(run_id, include_pending=True)
        out[run_id] = detail
    return json.loads(json.dumps(out, default=str))


def fresh_view(root):
    store = Store(root)
    store.refresh()
    return everything(store)


def first_and_close(root, cache_dir):
    store = Store(root, cache_dir=cache_dir)
    store.refresh()
    seen = everything(store)
    store.close()
    return seen


@pytest.fixture
def both(tmp_path):
    root = str(tmp_path / "store")
    copy_store(PLAIN, root)
    for name in os.listdir(os.path.join(GZIP, *RUNS)):
        shutil.copytree(os.path.join(GZIP, *RUNS, name), os.path.join(root, *RUNS, name))
    return root


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def test_restart_restores_every_run_from_the_cache_and_agrees_with_the_files(both, cache_dir):
    before = snapshot_tree(both)
    first = first_and_close(both, cache_dir)
    assert os.listdir(cache_dir) == [os.path.basename(cache_mod.cache_file(cache_dir, both))]
    store = Store(both, cache_dir=cache_dir)
    store.refresh()
    assert store.restored == len(first["list"]) == 8
    assert everything(store) == first == fresh_view(both)
    assert snapshot_tree(both) == before  # nothing written into the store


def test_an_appended_file_is_read_from_where_the_cache_left_off(both, cache_dir, monkeypatch):
    rec = run_path(both, "gz-live", "generation", "records.jsonl.gz")
    ev = run_path(both, "gz-live", "evaluations", "default", "evaluation.jsonl.gz")
    rec_members, ev_members = gz_members(rec), gz_members(ev)
    for path, members in ((rec, rec_members), (ev, ev_members)):
        with open(path, "wb") as fh:
            fh.write(b"".join(members[:4]))
    first_and_close(both, cache_dir)
    for path, members in ((rec, rec_members), (ev, ev_members)):
        with open(path, "ab") as fh:
            fh.write(b"".join(members[4:]))
    reads = []
    real = jsonl_mod.decode_lines

    def spy(data, base, gz, parse, **kw):
        reads.append(base)
        return real(data, base, gz, parse, **kw)

    monkeypatch.setattr(jsonl_mod, "decode_lines", spy)
    store = Store(both, cache_dir=cache_dir)
    store.refresh()
    assert store.restored == 8
    kept = len(b"".join(rec_members[:4])), len(b"".join(ev_members[:4]))
    assert sorted(reads) == sorted(kept), "only the two appended tails were decoded, from the cached offsets"
    monkeypatch.setattr(jsonl_mod, "decode_lines", real)
    assert everything(store) == fresh_view(both)
    assert store.summary("gz-live")["generated"] == len(rec_members) - 1


def test_a_file_rewritten_in_place_with_the_same_size_and_mtime_is_read_again(both, cache_dir):
    ev = run_path(both, "fake-direct", "evaluations", "default", "evaluation.jsonl")
    first = first_and_close(both, cache_dir)
    st = os.stat(ev)
    data = open(ev, "rb").read()
    # Same length, same inode, same mtime: only the bytes tell (the last line, scores and
    # timings, as a writer replacing it would leave it).
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    changed = last.replace(b'"value": 1.0', b'"value": 0.0') if b'"value": 1.0' in last else \
        last.replace(b'"value": 0.0', b'"value": 1.0')
    changed = changed[:-30] + changed[-30:].replace(b"7", b"8")
    assert changed[-64:] != last[-64:] and len(changed) == len(last)
    with open(ev, "r+b") as fh:
        fh.write(data[:len(data) - len(last) - 1] + changed + b"\n")
    os.utime(ev, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(ev).st_mtime_ns == st.st_mtime_ns and os.stat(ev).st_ino == st.st_ino
    store = Store(both, cache_dir=cache_dir)
    store.refresh()
    assert store.restored == 7  # every run but the changed one
    now = everything(store)
    assert now == fresh_view(both)
    assert now["fake-direct"]["metrics"] != first["fake-direct"]["metrics"]


def test_a_replaced_file_is_not_taken_for_the_cached_one(both, cache_dir):
    rec = run_path(both, "fake-direct", "generation", "records.jsonl")
    first_and_close(both, cache_dir)
    lines = open(rec, "rb").read().split(b"\n")
    os.unlink(rec)
    with open(rec, "wb") as fh:  # a new file: a new inode, fewer lines
        fh.write(b"\n".join(lines[:4]) + b"\n")
    store = Store(both, cache_dir=cache_dir)
    store.refresh()
    assert store.restored == 7
    assert everything(store) == fresh_view(both)
    assert store.summary("fake-direct")["generated"] == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "format", "other-store"])
def test_a_damaged_or_foreign_cache_is_ignored_and_rebuilt(both, cache_dir, tmp_path, damage, monkeypatch, caplog):
    first = first_and_close(both, cache_dir)
    path = cache_mod.cache_file(cache_dir, both)
    data = open(path, "rb").read()
    if damage == "flip":
        data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x40]) + data[len(data) // 2 + 1:]
    elif damage == "truncate":
        data = data[:len(data) - 100]
    elif damage == "empty":
        data = b""
    elif damage == "garbage":
        data = os.urandom(4096)
    elif damage == "format":
        monkeypatch.setattr(cache_mod, "FORMAT", cache_mod.FORMAT + 1)
        first_and_close(both, cache_dir)
        monkeypatch.setattr(cache_mod, "FORMAT", cache_mod.FORMAT - 1)
        data = open(path, "rb").read()
    elif damage == "other-store":
        other = copy_store(PLAIN, str(tmp_path / "other"))
        first_and_close(other, cache_dir)
        data = open(cache_mod.cache_file(cache_dir, other), "rb").read()
    with open(path, "wb") as fh:
        fh.write(data)
    store = Store(both, cache_dir=cache_dir)
    store.refresh()
    assert store.restored == 0
    assert everything(store) == first
    if damage != "empty":
        assert "ignoring the storage cache" in caplog.text
    store.close()
    again = Store(both, cache_dir=cache_dir)  # rebuilt by the store that ignored it
    again.refresh()
    assert again.restored == 8 and everything(again) == first


def test_runs_gone_or_added_between_starts(both, cache_dir):
    first_and_close(both, cache_dir)
    shutil.rmtree(run_path(both, "fake-terse"))
    shutil.copytree(run_path(both, "fake-direct"), run_path(both, "fake-direct-2"))
    meta_path = run_path(both, "fake-direct-2", "metadata.json")
    meta = json.load(open(meta_path))
    meta["run_id"] = "fake-direct-2"
    json.dump(meta, open(meta_path, "w"))
    store = Store(both, cache_dir=cache_dir)
    store.refresh()
    assert "fake-terse" not in store.run_ids() and "fake-direct-2" in store.run_ids()
    assert store.restored == 7
    assert everything(store) == fresh_view(both)


def test_a_status_change_between_starts_is_seen(both, cache_dir):
    first_and_close(both, cache_dir)
    meta_path = run_path(both, "fake-live", "metadata.json")
    meta = json.load(open(meta_path))
    assert meta["status"] == "in_progress"
    meta["status"] = "completed"
    meta["completed_at"] = meta["updated_at"]
    with open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=2)
    store = Store(both, cache_dir=cache_dir)
    store.refresh()
    assert store.summary("fake-live")["status"] == "completed"
    assert everything(store) == fresh_view(both)


def test_concurrent_writers_never_leave_a_partial_cache(both, cache_dir):
    first_and_close(both, cache_dir)
    stores = []
    for _ in range(2):
        s = Store(both, cache_dir=cache_dir)
        s.refresh()
        stores.append(s)
    path = cache_mod.cache_file(cache_dir, both)
    stop = threading.Event()
    errors = []

    def writer(store):
        for _ in range(40):
            if stop.is_set():
                return
            store.save_cache()

    threads = [threading.Thread(target=writer, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    loads = 0
    try:
        while any(t.is_alive() for t in threads) and loads < 2000:
            entries = cache_mod.RunCache(cache_dir, both).load()
            if len(entries) != 8:
                errors.append(len(entries))
            loads += 1
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert loads and not errors
    assert [n for n in os.listdir(cache_dir)] == [os.path.basename(path)]  # no temp file left behind


def test_a_cache_directory_inside_the_store_is_not_used(both):
    before = snapshot_tree(both)
    inside = os.path.join(both, "experiments", ".cache")
    store = Store(both, cache_dir=inside)
    store.refresh()
    store.close()
    assert len(store.run_ids()) == 8
    assert snapshot_tree(both) == before


class Server:
    """`themis-daemon serve` as a child process; stderr goes to a file."""

    def __init__(self, root, cache_dir, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        env = {**os.environ, "THEMIS_STORAGE_CACHE_DIR": cache_dir, "PYTHONPATH": REPO}
        self.proc = subprocess.Popen([sys.executable, "-m", "themis_daemon", "serve", "--host", "127.0.0.1",
                                      "--port", "0", "--storage", root, "--poll-interval", "0.2"],
                                     stdout=subprocess.DEVNULL, stderr=self.log, env=env, cwd=REPO)
        deadline = time.monotonic() + 60
        self.port = None
        while time.monotonic() < deadline and self.port is None:
            m = re.search(rb"on http://127\.0\.0\.1:(\d+)", open(log_path, "rb").read())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        assert self.port, open(log_path, "rb").read().decode()

    def runs(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/runs", timeout=30) as resp:
            return json.loads(resp.read())

    def stop(self):
        try:
            return end_process(self.proc, 30, kill_wait=10)
        finally:
            self.log.close()


def test_real_daemons_share_a_cache_and_restart_from_it(both, cache_dir, tmp_path):
    before = snapshot_tree(both)
    a = Server(both, cache_dir, str(tmp_path / "a.log"))
    b = Server(both, cache_dir, str(tmp_path / "b.log"))  # two daemons, one cache directory
    try:
        listed_a, listed_b = a.runs(), b.runs()
    finally:
        assert a.stop() == 0 and b.stop() == 0
    assert len(listed_a) == 8 and listed_a == listed_b
    path = cache_mod.cache_file(cache_dir, both)
    assert len(cache_mod.RunCache(cache_dir, both).load()) == 8
    c = Server(both, cache_dir, str(tmp_path / "c.log"))
    try:
        assert c.runs() == listed_a
    finally:
        assert c.stop() == 0
    assert os.path.isfile(path)
    assert snapshot_tree(both) == before
