"""Faults injected into a served copy of a Themis 1.x store: the damaged run says what is
wrong, the others stay served and correct, repairs are picked up without a restart, and
nothing is written into the store."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest


RUNS = ("experiments", "default", "runs")
from conftest import PLAIN  # noqa: E402


def run_path(root, run_id, *parts):
    return os.path.join(root, *RUNS, run_id, *parts)


def read_lines(path):
    with open(path, "rb") as fh:
        return [ln for ln in fh.read().split(b"\n") if ln.strip()]


async def get(http_client, url):
    resp = await http_client.fetch(url, raise_error=False)
    return resp.code, (json.loads(resp.body) if resp.body else None)


async def until(predicate, timeout=60.0):
    """Poll an async predicate until it returns something truthy (generous bound)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await predicate()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def listed(http_client, base_url, run_id):
    code, body = await get(http_client, base_url + "/api/runs")
    assert code == 200
    return next((s for s in body if s["run_id"] == run_id), None)


@pytest.mark.gen_test(timeout=120)
async def test_a_run_that_vanishes_and_returns_is_never_served_from_its_old_versions(http_client, base_url, plain_store):
    ev = run_path(plain_store, "fake-direct", "evaluations", "default", "evaluation.jsonl")
    meta = run_path(plain_store, "fake-direct", "metadata.json")
    full = read_lines(ev)

    def keep(n):  # header + n evaluation lines
        with open(ev, "wb") as fh:
            fh.write(b"".join(ln + b"\n" for ln in full[:n + 1]))

    async def detail_count(n):
        await until(lambda: _count(http_client, base_url, n))
        code, detail = await get(http_client, base_url + "/api/runs/fake-direct")
        assert code == 200
        return detail["num_samples"], len(detail["samples"])

    keep(5)
    assert await detail_count(5) == (5, 5)
    keep(6)
    assert await detail_count(6) == (6, 6)  # the run's detail has been rendered at a few versions

    os.rename(meta, meta + ".away")
    await until(lambda: _gone(http_client, base_url))
    keep(10)
    os.rename(meta + ".away", meta)
    assert await detail_count(10) == (10, 10)
    keep(15)
    assert await detail_count(15) == (15, 15)
    keep(len(full) - 1)
    assert await detail_count(len(full) - 1) == (len(full) - 1, len(full) - 1)


async def _count(http_client, base_url, n):
    s = await listed(http_client, base_url, "fake-direct")
    return s if s is not None and s["num_samples"] == n else None


async def _gone(http_client, base_url):
    code, _ = await get(http_client, base_url + "/api/runs/fake-direct")
    return code == 404


def _rekey(line: bytes, old_hash: bytes, new_hash: bytes) -> bytes:
    return line.replace(b"::" + old_hash, b"::" + new_hash)


@pytest.mark.gen_test(timeout=120)
async def test_a_run_evaluated_again_with_other_metrics_counts_each_sample_once(http_client, base_url, plain_store):
    """Themis generates again when the manifest (part of every key) changes: 20 samples, 40
    records. `generated` counts samples, so an in-progress re-run never passes 100 %."""
    meta = json.load(open(run_path(plain_store, "fake-direct", "metadata.json")))
    old_hash = meta["config_snapshot"]["manifest_hash"].encode()
    new_hash = b"f" * 64
    for rel in (("generation", "records.jsonl"), ("generation", "tasks.jsonl")):
        path = run_path(plain_store, "fake-direct", *rel)
        lines = read_lines(path)
        assert all(old_hash in ln for ln in lines[1:])
        with open(path, "ab") as fh:
            fh.write(b"".join(_rekey(ln, old_hash, new_hash) + b"\n" for ln in lines[1:]))
    summary = await until(lambda: listed(http_client, base_url, "fake-direct"))
    assert summary["generated"] == summary["expected_samples"] == 20
    code, detail = await get(http_client, base_url + "/api/runs/fake-direct?include_pending=true")
    assert code == 200 and detail["samples_total"] == 20
    assert not any(s.get("pending") for s in detail["samples"])


def _age(path, seconds=60):
    """Make a damaged file look old: not one a writer is rewriting right now."""
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.mark.gen_test(timeout=120)
async def test_an_invalid_line_is_counted_and_shown_and_the_rest_is_served(http_client, base_url, plain_store):
    ev = run_path(plain_store, "fake-direct", "evaluations", "default", "evaluation.jsonl")
    lines = read_lines(ev)
    lines[3] = lines[3][: len(lines[3]) // 2]  # a torn line in the middle: not JSON
    with open(ev, "wb") as fh:
        fh.write(b"".join(ln + b"\n" for ln in lines))
    s = await until(lambda: listed(http_client, base_url, "fake-direct"))
    assert s["num_samples"] == 19 and s["error"] is None
    assert s["warnings"] == ["evaluations/default/evaluation.jsonl: 1 invalid line skipped"]
    other = await listed(http_client, base_url, "fake-failed")
    assert other["warnings"] == [] and other["error"] is None
    resp = await http_client.fetch(base_url + "/metrics")
    metrics = resp.body.decode()
    assert "themis_storage_invalid_lines 1.0" in metrics
    assert "themis_runs_with_warnings 1.0" in metrics
    code, detail = await get(http_client, base_url + "/api/runs/fake-direct")
    assert code == 200 and detail["warnings"] == s["warnings"] and len(detail["samples"]) == 19
    # Repaired (the writer's file restored): the warning goes, without a restart.
    with open(ev, "wb") as fh:
        fh.write(b"".join(ln + b"\n" for ln in read_lines(run_path(PLAIN, "fake-direct", "evaluations",
                                                                            "default", "evaluation.jsonl"))))
    s = await until(lambda: _where(http_client, base_url, "fake-direct", lambda s: s["num_samples"] == 20))
    assert s["warnings"] == [] and s["error"] is None


@pytest.mark.gen_test(timeout=120)
async def test_an_invalid_metadata_file_is_reported_not_hidden(http_client, base_url, plain_store):
    meta = run_path(plain_store, "fake-live", "metadata.json")
    good = open(meta, "rb").read()
    s = await until(lambda: listed(http_client, base_url, "fake-live"))
    assert s["status"] == "in_progress"
    with open(meta, "wb") as fh:
        fh.write(good[:40])
    _age(meta)
    s = await until(lambda: _where(http_client, base_url, "fake-live", lambda s: s["warnings"]))
    assert s["status"] == "in_progress"  # its last readable content
    assert s["warnings"][0].startswith("metadata.json unreadable")
    with open(meta, "wb") as fh:
        fh.write(good)
    s = await until(lambda: _where(http_client, base_url, "fake-live", lambda s: not s["warnings"]))
    assert s["error"] is None


@pytest.mark.gen_test(timeout=120)
async def test_a_run_whose_metadata_is_invalid_at_start_up_is_listed_with_the_error(http_client, base_url, plain_store, caplog):
    meta = run_path(plain_store, "fake-terse", "metadata.json")
    good = open(meta, "rb").read()
    with open(meta, "wb") as fh:
        fh.write(b"{not json")
    _age(meta)
    s = await until(lambda: listed(http_client, base_url, "fake-terse"), timeout=30)
    assert s["error"].startswith("metadata.json unreadable")
    code, detail = await get(http_client, base_url + "/api/runs/fake-terse")
    assert code == 200 and detail["error"] == s["error"]
    assert "metadata.json unreadable" in caplog.text
    with open(meta, "wb") as fh:
        fh.write(good)
    s = await until(lambda: _where(http_client, base_url, "fake-terse", lambda s: s["error"] is None))
    assert s["status"] == json.loads(good)["status"]


async def _where(http_client, base_url, run_id, cond):
    s = await listed(http_client, base_url, run_id)
    return s if s is not None and cond(s) else None


class TestHugeLine:
    """A small gzip member that expands to one enormous line (a decompression bomb)."""

    @pytest.fixture
    def store_root(self, gzip_store):
        return gzip_store

    @pytest.fixture
    def app_settings(self, monkeypatch):
        from themis_daemon.storage.themis1.jsonl import Limits

        monkeypatch.setattr(Limits, "max_line_bytes", Limits.max_line_bytes)  # restored afterwards
        return {"poll_interval": 0.05, "storage": {"max_line_bytes": 1 << 20}}

    @pytest.mark.gen_test(timeout=120)
    async def test_a_big_dataset_is_no_long_line(self, http_client, base_url, gzip_store):
        """Themis writes the whole dataset as one gzip member: the bound is per line."""
        import gzip as gz

        path = run_path(gzip_store, "gz-direct", "generation", "dataset.jsonl.gz")
        rows = [ln for ln in gz.decompress(open(path, "rb").read()).split(b"\n") if ln.strip()]
        pad = b"x" * 200
        many = rows[:1] + [b'{"id": "r%06d", "answer": "1", "pad": "%s"}' % (i, pad) for i in range(20000)]
        with open(path, "wb") as fh:
            fh.write(gz.compress(b"".join(ln + b"\n" for ln in many)))
        assert sum(len(ln) + 1 for ln in many) > 2 << 20
        s = await until(lambda: _where(http_client, base_url, "gz-direct", lambda s: s["expected_samples"] == 20000))
        assert s["error"] is None

    @pytest.mark.gen_test(timeout=120)
    async def test_the_run_is_errored_memory_stays_bounded_and_the_others_are_served(self, http_client, base_url,
                                                                                      gzip_store):
        import gzip as gz
        import resource

        rec = run_path(gzip_store, "gz-direct", "generation", "records.jsonl.gz")
        s = await until(lambda: listed(http_client, base_url, "gz-direct"))
        generated = s["generated"]
        good = open(rec, "rb").read()
        line = b'{"cache_key": "k", "output": {"text": "' + b"x" * (256 << 20) + b'"}}\n'
        bomb = gz.compress(line, 9)
        assert len(bomb) < 1 << 20
        del line
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with open(rec, "ab") as fh:
            fh.write(bomb)
        s = await until(lambda: _where(http_client, base_url, "gz-direct", lambda s: s["error"]))
        assert "max_line_bytes" in s["error"] and s["generated"] == generated
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mb < 64, f"resident memory grew by {grown_mb:.0f} MB"
        for other in ("gz-live", "gz-swapped"):
            o = await listed(http_client, base_url, other)
            assert o is not None and o["error"] is None
        code, _ = await get(http_client, base_url + "/api/runs/gz-live")
        assert code == 200
        # Still there at later polls (not decoded again), gone once the file is repaired.
        await asyncio.sleep(0.3)
        assert (await listed(http_client, base_url, "gz-direct"))["error"] == s["error"]
        with open(rec, "wb") as fh:
            fh.write(good)
        s = await until(lambda: _where(http_client, base_url, "gz-direct", lambda s: s["error"] is None))
        assert s["generated"] == generated


def _outside_copies(plain_store, outside):
    """A records file and a whole run folder outside the store, linked into it."""
    os.makedirs(outside, exist_ok=True)
    rec = run_path(plain_store, "fake-direct", "generation", "records.jsonl")
    secret = os.path.join(outside, "records.jsonl")
    with open(secret, "wb") as fh:
        fh.write(open(rec, "rb").read().replace(b'\\"answer\\": \\"', b'\\"answer\\": \\"SECRET-'))
    os.unlink(rec)
    os.symlink(secret, rec)
    import shutil

    shutil.copytree(run_path(plain_store, "fake-terse"), os.path.join(outside, "linked-run"))
    meta_path = os.path.join(outside, "linked-run", "metadata.json")
    meta = json.load(open(meta_path))
    meta["run_id"] = "linked-run"
    json.dump(meta, open(meta_path, "w"))
    os.symlink(os.path.join(outside, "linked-run"), run_path(plain_store, "linked-run"))


class TestSymlinksOutside:
    @pytest.fixture
    def outside(self, tmp_path):
        return str(tmp_path / "outside")

    @pytest.fixture
    def store_root(self, plain_store, outside):
        _outside_copies(plain_store, outside)
        return plain_store

    @pytest.mark.gen_test(timeout=120)
    async def test_links_leading_outside_the_store_are_not_followed(self, http_client, base_url, plain_store, caplog):
        s = await until(lambda: _where(http_client, base_url, "fake-direct", lambda s: s["error"]))
        assert "outside the storage root" in s["error"]
        code, detail = await get(http_client, base_url + "/api/runs/fake-direct")
        assert code == 200 and "SECRET" not in json.dumps(detail)
        code, body = await get(http_client, base_url + "/api/runs")
        assert "linked-run" not in {r["run_id"] for r in body}
        assert (await get(http_client, base_url + "/api/runs/linked-run"))[0] == 404
        assert "leads outside the storage root" in caplog.text
        for other in ("fake-failed", "fake-live", "fake-terse"):
            o = await listed(http_client, base_url, other)
            assert o is not None and o["error"] is None


class TestSymlinksIntoAllowedRoots(TestSymlinksOutside):
    @pytest.fixture
    def app_settings(self, outside):
        return {"poll_interval": 0.05, "storage": {"extra_roots": [outside]}}

    @pytest.mark.gen_test(timeout=120)
    async def test_links_leading_outside_the_store_are_not_followed(self, http_client, base_url, plain_store, caplog):
        s = await until(lambda: listed(http_client, base_url, "linked-run"))
        assert s["error"] is None
        s = await listed(http_client, base_url, "fake-direct")
        assert s["error"] is None
        code, detail = await get(http_client, base_url + "/api/runs/fake-direct")
        assert code == 200 and "SECRET" in json.dumps(detail)


@pytest.mark.gen_test(timeout=120)
async def test_a_fifo_in_place_of_a_file_is_an_error_not_a_hang(http_client, base_url, plain_store):
    rec = run_path(plain_store, "fake-direct", "generation", "records.jsonl")
    good = open(rec, "rb").read()
    os.unlink(rec)
    os.mkfifo(rec)  # nobody ever writes to it: a blocking open would wait forever
    s = await until(lambda: _where(http_client, base_url, "fake-direct", lambda s: s["error"]))
    assert "not a regular file" in s["error"]
    code, detail = await get(http_client, base_url + "/api/runs/fake-direct")
    assert code == 200
    for other in ("fake-failed", "fake-live", "fake-terse"):
        assert (await listed(http_client, base_url, other))["error"] is None
    assert (await http_client.fetch(base_url + "/readyz", raise_error=False)).code == 200
    os.unlink(rec)
    with open(rec, "wb") as fh:
        fh.write(good)
    s = await until(lambda: _where(http_client, base_url, "fake-direct", lambda s: s["error"] is None))
    assert s["generated"] == 20
