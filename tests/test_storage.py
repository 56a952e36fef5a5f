"""The storage reader on real Themis files, including what a reader racing a writer sees."""

from __future__ import annotations

import builtins
import gzip
import json
import logging
import os
import shutil

import pytest

from themis_daemon.storage.themis1 import Store, jsonl as jsonl_mod, run as run_mod
from conftest import snapshot_tree

RUNS = ("experiments", "default", "runs")


def run_path(root, run_id, *parts):
    return os.path.join(root, *RUNS, run_id, *parts)


def lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        return [ln for ln in fh.read().split(b"\n") if ln.strip()]


def truncate_file(path, keep_lines):
    """Rewrite a plain JSONL file with only its first `keep_lines` lines; return the others."""
    all_lines = lines(path)
    with open(path, "wb") as fh:
        fh.write(b"".join(ln + b"\n" for ln in all_lines[:keep_lines]))
    return all_lines[keep_lines:]


def gz_members(path):
    """The raw bytes of each gzip member of a file, in order."""
    import zlib

    data = open(path, "rb").read()
    members, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(wbits=31)
        d.decompress(data[pos:])
        length = len(data) - pos - len(d.unused_data)
        members.append(data[pos:pos + length])
        pos += length
    return members


def truncate_gz(path, keep_members):
    """Keep the first `keep_members` gzip members; return the raw bytes of the others."""
    members = gz_members(path)
    with open(path, "wb") as fh:
        fh.write(b"".join(members[:keep_members]))
    return members[keep_members:]


def summary(store, run_id):
    return store.summary(run_id)


def test_torn_plain_line_is_picked_up_later(plain_store):
    rec = run_path(plain_store, "fake-direct", "generation", "records.jsonl")
    rest = truncate_file(rec, 1 + 5)  # header + 5 records
    store = Store(plain_store)
    store.refresh()
    assert summary(store, "fake-direct")["generated"] == 5
    half = len(rest[0]) // 2
    with open(rec, "ab") as fh:
        fh.write(rest[0][:half])
    store.refresh()
    s = summary(store, "fake-direct")
    assert s["generated"] == 5 and s["error"] is None
    with open(rec, "ab") as fh:
        fh.write(rest[0][half:] + b"\n")
    store.refresh()
    assert summary(store, "fake-direct")["generated"] == 6


def test_truncated_gzip_member_is_picked_up_later(gzip_store):
    rec = run_path(gzip_store, "gz-direct", "generation", "records.jsonl.gz")
    rest = truncate_gz(rec, 1 + 7)
    store = Store(gzip_store)
    store.refresh()
    assert summary(store, "gz-direct")["generated"] == 7
    for cut in (5, len(rest[0]) - 3):  # inside the header, then inside the deflate data
        with open(rec, "ab") as fh:
            fh.write(rest[0][:cut])
        store.refresh()
        s = summary(store, "gz-direct")
        assert s["generated"] == 7 and s["error"] is None
        with open(rec, "rb+") as fh:
            fh.truncate(os.path.getsize(rec) - cut)
    with open(rec, "ab") as fh:
        fh.write(b"".join(rest))
    store.refresh()
    assert summary(store, "gz-direct")["generated"] == 20


def test_only_appended_bytes_are_read(gzip_store, monkeypatch):
    store = Store(gzip_store)
    store.refresh()
    opened = []
    real_open = builtins.open

    def counting_open(path, *a, **kw):
        opened.append(path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(jsonl_mod, "open", counting_open, raising=False)
    monkeypatch.setattr(run_mod, "open", counting_open, raising=False)
    store.refresh()
    store.summaries()
    assert opened == []  # nothing moved: no file is opened
    ev = run_path(gzip_store, "gz-live", "evaluations", "default", "evaluation.jsonl.gz")
    tail = store.get("gz-live")._evals["default"]
    before = tail.offset
    member = gzip.compress(json.dumps({"cache_key": "k2::extra::eval:0123456789ab", "evaluation": {
        "sample_id": "extra", "scores": [{"metric_name": "ExactMatch", "value": 1.0}], "failures": []}}).encode() + b"\n")
    with real_open(ev, "ab") as fh:
        fh.write(member)
    store.refresh()
    assert opened == [ev]
    assert tail.offset == before + len(member)
    assert summary(store, "gz-live")["num_samples"] == 11


def test_half_written_metadata_keeps_last_good_value(plain_store):
    meta = run_path(plain_store, "fake-live", "metadata.json")
    good = open(meta, "rb").read()
    store = Store(plain_store)
    store.refresh()
    with open(meta, "wb") as fh:
        fh.write(good[: len(good) // 2])
    store.refresh()
    s = summary(store, "fake-live")
    assert s["status"] == "in_progress" and s["error"] is None
    doc = json.loads(good)
    doc["status"] = "completed"
    with open(meta, "w") as fh:
        json.dump(doc, fh, indent=2)
    store.refresh()
    assert summary(store, "fake-live")["status"] == "completed"


def test_stray_files_lock_only_folders_and_sqlite_ignored(plain_store):
    os.makedirs(run_path(plain_store, "lock-only"))
    open(run_path(plain_store, "lock-only", ".lock"), "w").close()
    with open(run_path(plain_store, "fake-direct", "generation", ".tmp_abcd1234.json"), "w") as fh:
        fh.write('{"task_key": "k2::bogus", "output": {"text": "x"}')
    os.remove(os.path.join(plain_store, "experiments.db"))
    store = Store(plain_store)
    store.refresh()
    assert sorted(store.run_ids()) == ["fake-direct", "fake-failed", "fake-live", "fake-swapped", "fake-terse"]
    assert summary(store, "fake-direct")["generated"] == 20


def test_runs_missing_from_sqlite_are_listed(plain_store):
    src = run_path(plain_store, "fake-direct")
    dst = os.path.join(plain_store, "experiments", "other", "runs", "copied-run")
    shutil.copytree(src, dst)
    store = Store(plain_store)
    store.refresh()
    assert store.summary("copied-run")["experiment_id"] == "other"


def test_nan_tokens_duplicate_keys_and_null_ids(plain_store):
    ev = run_path(plain_store, "fake-terse", "evaluations", "default", "evaluation.jsonl")
    recs = [json.loads(ln) for ln in lines(ev)[1:]]
    first = recs[0]
    # Same cache key again with a NaN score and a duplicated key: the last line and value win.
    raw = json.dumps(first)
    raw = raw.replace('"value": 0.0', '"value": NaN', 1)
    raw = raw[:-1] + ', "cache_key": %s}' % json.dumps(first["cache_key"])
    with open(ev, "ab") as fh:
        fh.write(raw.encode() + b"\n")
    store = Store(plain_store)
    store.refresh()
    s = summary(store, "fake-terse")
    assert s["num_samples"] == 20
    assert s["metrics"]["ExactMatch"] == 0.0  # the NaN sample is left out of the mean
    detail = store.detail("fake-terse")
    assert json.loads(json.dumps(detail, allow_nan=True))  # structure intact


def test_null_sample_id_links_through_cache_key(plain_store):
    ev = run_path(plain_store, "fake-direct", "evaluations", "default", "evaluation.jsonl")
    out = []
    for ln in lines(ev):
        obj = json.loads(ln)
        if "evaluation" in obj:
            obj["evaluation"]["sample_id"] = None
        out.append(json.dumps(obj).encode())
    with open(ev, "wb") as fh:
        fh.write(b"".join(ln + b"\n" for ln in out))
    store = Store(plain_store)
    store.refresh()
    detail = store.detail("fake-direct")
    assert [s["id"] for s in detail["samples"]][:3] == ["q01", "q02", "q03"]
    assert detail["samples"][0]["prompt"] == "What is 12 + 7?"
    assert detail["samples"][0]["response"].startswith('{"answer": "19"')


def test_multiple_evaluation_configs(plain_store):
    src = run_path(plain_store, "fake-direct", "evaluations", "default", "evaluation.jsonl")
    dst_dir = run_path(plain_store, "fake-direct", "evaluations", "rescored")
    os.makedirs(dst_dir)
    with open(os.path.join(dst_dir, "evaluation.jsonl"), "wb") as fh:
        for ln in lines(src):
            obj = json.loads(ln)
            if "evaluation" in obj:
                obj["cache_key"] = obj["cache_key"][:-12] + "ffffffffffff"
                obj["evaluation"]["scores"] = [{"metric_name": "BLEU", "value": 0.5}]
            fh.write(json.dumps(obj).encode() + b"\n")
    store = Store(plain_store)
    store.refresh()
    s = summary(store, "fake-direct")
    assert s["num_samples"] == 20  # not 40: samples are counted once
    assert s["metrics"]["BLEU"] == 0.5 and s["metrics"]["ExactMatch"] == pytest.approx(0.9)
    sample = store.detail("fake-direct")["samples"][0]
    assert set(sample["scores"]) == {"ExactMatch", "MathVerifyAccuracy", "ResponseLength", "BLEU"}


def test_corrupt_run_does_not_break_others(gzip_store, caplog):
    rec = run_path(gzip_store, "gz-swapped", "generation", "records.jsonl.gz")
    with open(rec, "ab") as fh:
        fh.write(b"\x1f\x8b\x08\x00garbage-that-is-not-deflate" * 3)
    store = Store(gzip_store)
    with caplog.at_level(logging.WARNING, logger="themis_daemon.storage"):
        store.refresh()
        store.refresh()
    bad = summary(store, "gz-swapped")
    assert bad["error"] and "gzip" in bad["error"]
    assert summary(store, "gz-direct")["error"] is None
    assert summary(store, "gz-direct")["num_samples"] == 20
    assert sum("gz-swapped" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_resumed_dataset_rewrite_and_vanished_run(plain_store):
    store = Store(plain_store)
    store.refresh()
    shutil.rmtree(run_path(plain_store, "fake-terse"))
    res = store.refresh()
    assert res.removed == ["fake-terse"]
    assert "fake-terse" not in store


def test_unreadable_root_keeps_last_state(tmp_path, plain_store):
    store = Store(plain_store)
    store.refresh()
    moved = str(tmp_path / "moved")
    os.rename(plain_store, moved)
    res = store.refresh()
    assert res.error and len(store.run_ids()) == 5
    os.rename(moved, plain_store)
    res = store.refresh()
    assert res.error is None and store.root_error is None


def test_reader_never_writes(plain_store, gzip_store):
    before = (snapshot_tree(plain_store), snapshot_tree(gzip_store))
    for root in (plain_store, gzip_store):
        store = Store(root)
        store.refresh()
        for run_id in store.run_ids():
            store.detail(run_id)
            store.scores(run_id)
        store.refresh()
    assert (snapshot_tree(plain_store), snapshot_tree(gzip_store)) == before


def test_parallel_cold_scan_matches_serial(tmp_path):
    from themis_daemon.demo.writer import write_completed_run

    root = str(tmp_path / "many")
    for i in range(34):
        write_completed_run(root, f"run-{i:02d}", 6, seed=i, status="failed" if i % 7 == 0 else "completed")
    serial, parallel = Store(root, scan_workers=1), Store(root, scan_workers=2)
    serial.refresh()
    parallel.refresh()
    assert len(parallel.run_ids()) == 34
    assert parallel.summaries() == serial.summaries()
    assert parallel.detail("run-03") == serial.detail("run-03")
    # the states that came back from worker processes keep following their files
    assert parallel.refresh().changed == []


def test_quiet_finished_runs_are_cheap_but_changes_are_seen(plain_store, monkeypatch):
    from themis_daemon.storage.themis1 import store as store_mod

    monkeypatch.setattr(run_mod, "QUIET_AFTER_S", 0.0)  # every finished fixture run counts as quiet
    store = Store(plain_store)
    store.refresh()
    # a status change shows at the next refresh (one stat of metadata.json per quiet run)
    meta_path = run_path(plain_store, "fake-terse", "metadata.json")
    doc = json.load(open(meta_path))
    doc["status"] = "failed"
    doc["error_message"] = "late failure"
    with open(meta_path, "w") as fh:
        json.dump(doc, fh, indent=2)
    assert "fake-terse" in store.refresh().changed
    assert store.summary("fake-terse")["status"] == "failed"
    # a resume appends records without touching metadata.json: seen within one round of passes
    rec = run_path(plain_store, "fake-direct", "generation", "records.jsonl")
    extra = json.loads(lines(rec)[1])
    extra["cache_key"] = extra["task_key"] = extra["cache_key"].replace("k2::q01::", "k2::q99::")
    with open(rec, "ab") as fh:
        fh.write(json.dumps(extra).encode() + b"\n")
    seen = False
    for _ in range(store_mod.FULL_PASS_EVERY):
        if "fake-direct" in store.refresh().changed:
            seen = True
            break
    assert seen and store.summary("fake-direct")["generated"] == 21


def test_huge_scores_do_not_break_summaries(tmp_path, monkeypatch):
    """Scores near 1e308 made fsum overflow while summaries were built: every listing failed."""
    from themis_daemon.demo.writer import ThemisRunWriter, make_arith_dataset

    root = str(tmp_path / "store")
    monkeypatch.setattr(ThemisRunWriter, "_score", lambda self, name, extracted, ref: (1.6e308, {}))
    writer = ThemisRunWriter(root, "huge", dataset=make_arith_dataset(6), eval_batch=3, compression="none")
    writer.start()
    writer.step(6)
    writer.evaluate_pending()
    store = Store(root)
    store.refresh()
    summary = store.summary("huge")
    assert summary["error"] is None and summary["num_samples"] == 6
    assert all(value == 1.6e308 for value in summary["metrics"].values())
    detail = store.detail("huge")
    assert all(v == 1.6e308 for s in detail["samples"] for v in s["scores"].values())


def _units(path):
    """A record or evaluation file as its units: gzip members, or lines with their newline."""
    if path.endswith(".gz"):
        return gz_members(path)
    return [ln + b"\n" for ln in lines(path)]


def _tables(store, run_id):
    state = store.get(run_id)
    with state.lock:
        state._thaw()
        return state.gen, state.evals, state.tasks, store.summary(run_id)


@pytest.mark.parametrize("kind", ["plain", "gzip"])
def test_tables_are_the_same_whichever_pass_read_a_sample_s_lines(kind, plain_store, gzip_store, tmp_path):
    """An evaluation line links to its generation line by the digest of its key. A pass that reads
    both looks the digest up from the records it just read, a later pass computes it: every
    order in which a writer can append them gives the same tables as one read of the whole run."""
    root = plain_store if kind == "plain" else gzip_store
    ext = "" if kind == "plain" else ".gz"
    whole = Store(root)
    whole.refresh()
    checked = 0
    for run_id in whole.run_ids():
        rec = run_path(root, run_id, "generation", "records.jsonl" + ext)
        ev = run_path(root, run_id, "evaluations", "default", "evaluation.jsonl" + ext)
        if not (os.path.exists(rec) and os.path.exists(ev)):
            continue
        recs, evs = _units(rec), _units(ev)
        assert len(recs) > 4 and len(evs) > 4
        grown = str(tmp_path / kind / run_id)
        os.makedirs(os.path.join(grown, *RUNS))
        shutil.copytree(run_path(root, run_id), os.path.join(grown, *RUNS, run_id))
        g_rec = run_path(grown, run_id, "generation", "records.jsonl" + ext)
        g_ev = run_path(grown, run_id, "evaluations", "default", "evaluation.jsonl" + ext)
        half_r, half_e = len(recs) // 2, len(evs) // 2
        steps = [
            (recs[:1], evs[:1]),  # headers only
            ([], evs[1:half_e]),  # evaluations whose records come in a later pass
            (recs[1:half_r], []),  # records alone
            (recs[half_r:], evs[half_e:]),  # both in one pass
        ]
        for path in (g_rec, g_ev):
            open(path, "wb").close()
        store = Store(grown)
        for new_recs, new_evs in steps:
            for path, units in ((g_rec, new_recs), (g_ev, new_evs)):
                with open(path, "ab") as fh:
                    fh.write(b"".join(units))
            store.refresh()
        assert open(g_rec, "rb").read() == open(rec, "rb").read()
        assert open(g_ev, "rb").read() == open(ev, "rb").read()
        assert _tables(store, run_id) == _tables(whole, run_id)
        checked += 1
    assert checked >= 2
