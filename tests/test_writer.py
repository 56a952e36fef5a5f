"""The demo writer must produce what Themis 1.4.0 writes (compared with the real fixtures)."""

import datetime as dt
import gzip
import json
import os
import re
import sqlite3
import struct
import zlib
from pathlib import Path

import pytest

from themis_daemon.demo.live import DemoWriterThread
from themis_daemon.demo.writer import (
    FixedStepClock,
    ThemisRunWriter,
    gzip_member,
    make_arith_dataset,
    write_completed_run,
)

DATA = Path(__file__).resolve().parent / "data"
PLAIN = DATA / "themis-v1" / "experiments" / "default" / "runs"
GZ = DATA / "themis-v1-gzip" / "experiments" / "default" / "runs"

TASK_KEY_RE = re.compile(
    r"^k2::(?P<id>[^:]*)::default::(?P<model>[^:]+:[^:]+)::\d+\.\d{3}-\d+\.\d{3}-\d+"
    r"::[0-9a-f]{12}::[0-9a-f]{12}::[0-9a-f]{64}$"
)
EVAL_SUFFIX_RE = re.compile(r"::eval:[0-9a-f]{12}$")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$")
HEADER = '{"_type": "header", "_format_version": "2.0.0", "_file_type": "%s"}'

JSONL = ["generation/dataset", "generation/templates", "generation/tasks", "generation/records",
         "evaluations/default/evaluation"]


# ----------------------------------------------------------------------------- helpers


def fixture_rows():
    lines = (PLAIN / "fake-direct" / "generation" / "dataset.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


def gzip_members(data):
    """Split a multi-member gzip file: list of (member bytes, decompressed bytes)."""
    out, off = [], 0
    while off < len(data):
        d = zlib.decompressobj(wbits=31)
        text = d.decompress(data[off:])
        assert d.eof, "truncated gzip member at offset %d" % off
        used = len(data) - off - len(d.unused_data)
        out.append((data[off:off + used], text))
        off += used
    return out


def member_fname(member):
    assert member[:4] == b"\x1f\x8b\x08\x08"  # deflate, FNAME flag
    end = member.index(b"\x00", 10)
    return member[10:end].decode("latin-1")


def read_lines(path):
    """Text lines of a plain or gzip JSONL file (gzip decoded member by member)."""
    data = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        data = b"".join(text for _m, text in gzip_members(data))
    assert data.endswith(b"\n")
    return data.decode("utf-8").splitlines()


def shape(obj):
    """Key order of an object, recursively (lists: shape of their first element)."""
    if isinstance(obj, dict):
        return [(k, shape(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return ["list", shape(obj[0])] if obj else ["list"]
    return type(obj).__name__ if obj is not None else "null"


def tree(root):
    """{relative path: (size, mtime_ns)} of every file and dir under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size if name in files else -1, st.st_mtime_ns)
    return out


def direct_like_fixture(root, run_id="fake-direct", compression="none", **kw):
    kw.setdefault("accuracy", 1.0)
    w = ThemisRunWriter(root, run_id, compression=compression, dataset=fixture_rows(), **kw)
    w.start()
    return w


# ----------------------------------------------------------------------------- byte format


def test_gzip_member_reproduces_every_fixture_member_exactly():
    n = 0
    for path in GZ.rglob("*.jsonl.gz"):
        for member, text in gzip_members(path.read_bytes()):
            mtime = struct.unpack("<I", member[4:8])[0]
            assert gzip_member(text, member_fname(member), mtime) == member
            n += 1
    assert n > 100


def test_plain_files_byte_identical_to_fixture_where_deterministic(tmp_path):
    w = direct_like_fixture(tmp_path)
    w.step(20)
    w.complete()
    fx = PLAIN / "fake-direct"
    for rel in ("generation/dataset.jsonl", "generation/templates.jsonl", "generation/tasks.jsonl"):
        assert (w.run_dir / rel).read_bytes() == (fx / rel).read_bytes(), rel
    # records / evaluations: identical keys, outputs and scores; only timings differ
    mine = [json.loads(x) for x in read_lines(w.run_dir / "generation/records.jsonl")[1:]]
    theirs = [json.loads(x) for x in read_lines(fx / "generation/records.jsonl")[1:]]
    assert [r["cache_key"] for r in mine] == [r["cache_key"] for r in theirs]
    assert [r["output"] for r in mine] == [r["output"] for r in theirs]
    mine = [json.loads(x) for x in read_lines(w.run_dir / "evaluations/default/evaluation.jsonl")[1:]]
    theirs = [json.loads(x) for x in read_lines(fx / "evaluations/default/evaluation.jsonl")[1:]]
    assert [e["cache_key"] for e in mine] == [e["cache_key"] for e in theirs]
    strip = lambda e: [(s["metric_name"], s["value"], s["details"]) for s in e["evaluation"]["scores"]]
    assert [strip(e) for e in mine] == [strip(e) for e in theirs]
    meta, fmeta = json.loads((w.run_dir / "metadata.json").read_text()), json.loads((fx / "metadata.json").read_text())
    assert meta["config_snapshot"] == fmeta["config_snapshot"]
    report = json.loads((w.run_dir / "report.json").read_text())
    assert report["metrics"] == json.loads((fx / "report.json").read_text())["metrics"]


def test_failed_generation_lines_byte_identical_to_gzip_fixture(tmp_path):
    w = ThemisRunWriter(tmp_path, "gz-swapped", dataset=fixture_rows(), accuracy=1.0,
                        template="What is {b} {op} {a}?", provider="fake-flaky")
    w.start()
    w.step(20, fail_ids={"q05"})
    w.complete()
    fx = GZ / "gz-swapped"
    for rel in ("generation/records.jsonl.gz", "evaluations/default/evaluation.jsonl.gz"):
        mine = [x for x in read_lines(w.run_dir / rel) if '"q05"' in x or "::q05::" in x]
        theirs = [x for x in read_lines(fx / rel) if '"q05"' in x or "::q05::" in x]
        assert mine == theirs and len(mine) == 1, rel
    ev = json.loads(mine[0])["evaluation"]
    assert ev == {"sample_id": "q05", "scores": [], "failures": ["Missing model output"]}
    assert read_lines(w.run_dir / "generation/tasks.jsonl.gz") == read_lines(fx / "generation/tasks.jsonl.gz")
    rec = [json.loads(x) for x in read_lines(w.run_dir / "generation/records.jsonl.gz")[1:]]
    failed = [r for r in rec if r["error"]]
    assert len(failed) == 1 and failed[0]["output"] is None and failed[0]["error"]["kind"] == "provider_error"
    report = json.loads((w.run_dir / "report.json").read_text())
    assert report["summary"]["failed_generations"] == 1
    assert report["metrics"] == json.loads((fx / "report.json").read_text())["metrics"]


@pytest.mark.parametrize("compression,fixture", [("gzip", GZ / "gz-direct"), ("none", PLAIN / "fake-direct")])
def test_same_files_headers_and_key_order_as_fixture(tmp_path, compression, fixture):
    w = ThemisRunWriter(tmp_path, "r1", compression=compression, seed=3)
    w.start()
    w.step(20, fail_ids={"q0004"})
    w.complete()
    ext = ".jsonl.gz" if compression == "gzip" else ".jsonl"
    expected = {".lock", ".index.json", "metadata.json", "report.json"} | {p + ext for p in JSONL}
    mine = {str(p.relative_to(w.run_dir)) for p in w.run_dir.rglob("*") if p.is_file()}
    theirs = {str(p.relative_to(fixture)) for p in fixture.rglob("*") if p.is_file()}
    assert mine == theirs == expected
    assert (w.run_dir / ".lock").stat().st_size == 0
    for rel in JSONL:
        ml, fl = read_lines(w.run_dir / (rel + ext)), read_lines(fixture / (rel + ext))
        ftype = rel.rsplit("/", 1)[1].rstrip("s") if rel.endswith("templates") else rel.rsplit("/", 1)[1]
        ftype = {"template": "templates", "task": "tasks", "record": "records"}.get(ftype, ftype)
        assert ml[0] == fl[0] == HEADER % ftype
        # every data line has the same key order (recursively) as some fixture line of that
        # file type (all fixture runs of both stores: includes failed generations)
        fshapes = set()
        for store in (PLAIN, GZ):
            for path in store.glob("*/" + rel + ".jsonl*"):
                fshapes |= {json.dumps(shape(json.loads(x))) for x in read_lines(path)[1:]}
        for line in ml[1:]:
            assert json.dumps(shape(json.loads(line))) in fshapes, (rel, line[:120])
        assert all("\\u" not in x or x.isascii() for x in ml) and all(x.isascii() for x in ml)
    for name in ("metadata.json", "report.json", ".index.json"):
        a, b = json.loads((w.run_dir / name).read_text()), json.loads((fixture / name).read_text())
        assert list(a) == list(b), name
    assert shape(json.loads((w.run_dir / "metadata.json").read_text())) == shape(
        json.loads((fixture / "metadata.json").read_text()))
    text = (w.run_dir / "metadata.json").read_text()
    assert text.startswith('{\n  "run_id": "r1",\n  "experiment_id": "default",\n') and not text.endswith("\n")
    meta = json.loads(text)
    assert meta["status"] == "completed" and TS_RE.match(meta["completed_at"]) and TS_RE.match(meta["created_at"])
    assert (meta["total_samples"], meta["successful_generations"], meta["failed_generations"]) == (0, 0, 0)


def test_gzip_files_are_one_member_per_line(tmp_path):
    w = ThemisRunWriter(tmp_path, "gz", seed=1, eval_batch=7)
    w.start()
    w.step(20)
    w.complete()
    for rel in JSONL:
        path = w.run_dir / (rel + ".jsonl.gz")
        members = gzip_members(path.read_bytes())
        base = path.name[:-3]
        assert member_fname(members[0][0]) == base
        assert all(m[8:10] == b"\x02\xff" for m, _ in members)  # level 9, OS unknown: as Themis
        if rel.endswith("dataset"):
            assert len(members) == 1 and members[0][1].count(b"\n") == 21
            continue
        assert members[0][1] == (HEADER % json.loads(members[0][1])["_file_type"]).encode() + b"\n"
        for member, text in members[1:]:
            assert text.count(b"\n") == 1 and text.endswith(b"\n")
            assert re.match(r"^\.tmp_[a-z0-9_]{8}\.json$", member_fname(member))
        # Python's multi-member reader agrees
        assert gzip.decompress(path.read_bytes()) == b"".join(t for _, t in members)
    assert len(gzip_members((w.run_dir / "generation/records.jsonl.gz").read_bytes())) == 21
    assert len(gzip_members((w.run_dir / "generation/templates.jsonl.gz").read_bytes())) == 2


# ----------------------------------------------------------------------------- keys, sample ids


def test_cache_keys_link_evaluations_to_records(tmp_path):
    w = ThemisRunWriter(tmp_path, "keys", dataset=make_arith_dataset(30, seed=5), seed=5, eval_batch=10)
    w.start()
    returned = w.step(30, fail_ids={"q0003"})
    w.complete()
    recs = [json.loads(x) for x in read_lines(w.paths["records"])[1:]]
    tasks = [json.loads(x) for x in read_lines(w.paths["tasks"])[1:]]
    evals = [json.loads(x) for x in read_lines(w.paths["evaluation"])[1:]]
    assert returned == [r["cache_key"] for r in recs]
    assert [t["task_key"] for t in tasks] == [r["task_key"] for r in recs] == [r["cache_key"] for r in recs]
    manifest_hash = json.loads(w.paths["metadata"].read_text())["config_snapshot"]["manifest_hash"]
    for r, t in zip(recs, tasks):
        m = TASK_KEY_RE.match(r["cache_key"])
        assert m and m.group("id") == t["task"]["metadata"]["dataset_id"]
        assert r["cache_key"].endswith("::" + manifest_hash)
        assert m.group("model") == "fake:fake-math-llm"
    suffixes = set()
    for e, r in zip(evals, recs):
        assert EVAL_SUFFIX_RE.search(e["cache_key"])
        assert EVAL_SUFFIX_RE.sub("", e["cache_key"]) == r["cache_key"]
        suffixes.add(e["cache_key"][-18:])
        assert e["evaluation"]["sample_id"] == r["cache_key"].split("::")[1]
        if r["error"]:
            assert e["evaluation"]["scores"] == [] and e["evaluation"]["failures"] == ["Missing model output"]
        else:
            assert [s["metric_name"] for s in e["evaluation"]["scores"]] == list(w.metrics)
            assert all(isinstance(s["value"], float) for s in e["evaluation"]["scores"])
    assert len(suffixes) == 1
    assert sum(1 for r in recs if r["error"]) == 1


def test_sample_id_rule_for_odd_ids(tmp_path):
    rows = [
        {"id": 0, "a": 1, "op": "+", "b": 1, "answer": "2"},
        {"a": 2, "op": "+", "b": 2, "answer": "4"},
        {"id": 7, "a": 3, "op": "+", "b": 3, "answer": "6"},
        {"id": "x β", "a": 4, "op": "+", "b": 4, "answer": "8"},
    ]
    w = ThemisRunWriter(tmp_path, "odd", compression="none", dataset=rows, accuracy=1.0)
    w.start()
    w.step(4)
    w.complete()
    recs = [json.loads(x) for x in read_lines(w.paths["records"])[1:]]
    evals = [json.loads(x) for x in read_lines(w.paths["evaluation"])[1:]]
    tasks = [json.loads(x) for x in read_lines(w.paths["tasks"])[1:]]
    assert [r["cache_key"].split("::")[1] for r in recs] == ["", "", "7", "x \u03b2"]
    assert [e["evaluation"]["sample_id"] for e in evals] == [None, None, 7, "x \u03b2"]
    assert tasks[0]["task"]["metadata"]["dataset_id"] == 0 and "dataset_id" not in tasks[1]["task"]["metadata"]
    assert "\\u03b2" in w.paths["tasks"].read_text()  # non-ASCII escaped as json.dumps does
    report = json.loads(w.paths["report"].read_text())
    assert [s["sample_id"] for s in report["samples"]] == ["", "", 7, "x \u03b2"]


def test_make_arith_dataset():
    rows = make_arith_dataset(40, seed=2)
    assert rows == make_arith_dataset(40, seed=2) and rows != make_arith_dataset(40, seed=3)
    assert rows[0]["id"] == "q0001" and rows[-1]["id"] == "q0040"
    assert all(list(r) == ["id", "a", "op", "b", "answer"] for r in rows)
    assert [r["op"] for r in rows[::10]] == ["+", "-", "*", "/"]
    for r in rows:
        val = eval("%d %s %d" % (r["a"], r["op"], r["b"]))
        assert float(r["answer"]) == val and isinstance(r["answer"], str)


# ----------------------------------------------------------------------------- lifecycle


def test_in_progress_failed_and_batching(tmp_path):
    w = ThemisRunWriter(tmp_path, "gz-live", dataset=fixture_rows(), eval_batch=5)
    w.start()
    meta = json.loads(w.paths["metadata"].read_text())
    assert meta["status"] == "in_progress" and meta["completed_at"] is None and meta["error_message"] is None
    assert w.paths["dataset"].exists() and not w.paths["records"].exists()
    w.step(4)
    assert w.generated == 4 and w.evaluated == 0 and not w.paths["evaluation"].exists()
    w.step(8)
    assert (w.generated, w.evaluated, w.pending) == (12, 10, 2)
    assert len(read_lines(w.paths["records"])) == 13 and len(read_lines(w.paths["evaluation"])) == 11
    assert not w.paths["report"].exists()
    index = json.loads(w.paths["index"].read_text())
    assert len(index["task_keys"]) == 12 and list(index) == ["task_keys", "template_ids", "last_updated"]
    w.fail("results sink unavailable: connection refused")
    meta = json.loads(w.paths["metadata"].read_text())
    assert meta["status"] == "failed" and meta["error_message"] == "results sink unavailable: connection refused"
    assert meta["completed_at"] is None and not w.paths["report"].exists()
    with pytest.raises(RuntimeError):
        w.step(1)


def test_generate_and_evaluate_pending_explicitly(tmp_path):
    w = ThemisRunWriter(tmp_path, "explicit", compression="none", dataset=make_arith_dataset(5))
    w.start()
    keys = w.generate(3, fail_ids={"q0002"})
    assert len(keys) == 3 and w.evaluated == 0
    ekeys = w.evaluate_pending()
    assert [EVAL_SUFFIX_RE.sub("", k) for k in ekeys] == keys
    assert w.evaluate_pending() == []
    assert len(w.generate(10)) == 2 and w.done_generating and w.generate(1) == []
    w.complete()
    assert w.evaluated == 5 and json.loads(w.paths["metadata"].read_text())["status"] == "completed"
    assert len(read_lines(w.paths["templates"])) == 2


def test_bulk_writer_is_byte_identical_to_step_by_step(tmp_path):
    for compression in ("gzip", "none"):
        for status in ("completed", "in_progress", "failed"):
            a_root, b_root = tmp_path / ("a-" + compression + status), tmp_path / ("b-" + compression + status)
            kw = dict(compression=compression, seed=11, eval_batch=10, fail_ids={"q0007"},
                      metrics=("ExactMatch", "MathVerifyAccuracy", "ResponseLength", "BLEU"))
            w = ThemisRunWriter(a_root, "run", dataset=make_arith_dataset(35, seed=11),
                                clock=FixedStepClock(), **kw)
            w.start()
            if status == "completed":
                for _ in range(35):
                    w.step(1)
                w.complete()
            else:
                w.step(17)
                if status == "failed":
                    w.fail("boom")
            b = write_completed_run(b_root, "run", 35, status=status, clock=FixedStepClock(),
                                    error_message="boom", **kw)
            files_a = {p.relative_to(a_root): p.read_bytes() for p in a_root.rglob("*") if p.is_file()}
            files_b = {p.relative_to(b_root): p.read_bytes() for p in b_root.rglob("*") if p.is_file()}
            assert files_a.keys() == files_b.keys()
            for k in files_a:
                assert files_a[k] == files_b[k], (compression, status, k)
            assert b.status == status


def test_sqlite_index_optional(tmp_path):
    w = ThemisRunWriter(tmp_path, "nosql", dataset=make_arith_dataset(3))
    w.start()
    w.step(3)
    w.complete()
    assert not (tmp_path / "experiments.db").exists()
    w = ThemisRunWriter(tmp_path, "withsql", dataset=make_arith_dataset(3), sqlite=True)
    w.start()
    conn = sqlite3.connect(str(tmp_path / "experiments.db"))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT status FROM runs WHERE run_id='withsql'").fetchone() == ("in_progress",)
        w.step(3)
        w.complete()
        row = conn.execute("SELECT status, completed_at, config_snapshot FROM runs").fetchone()
        meta = json.loads(w.paths["metadata"].read_text())
        assert row[0] == "completed" and row[1] == meta["completed_at"]
        assert json.loads(row[2]) == meta["config_snapshot"]
        assert conn.execute("SELECT experiment_id, name FROM experiments").fetchall() == [("default", "default")]
    finally:
        conn.close()


# ----------------------------------------------------------------------------- torn writes (§8)


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_append_partial_record_then_finish(tmp_path, compression):
    clock_a, clock_b = FixedStepClock(), FixedStepClock()
    w = ThemisRunWriter(tmp_path / "a", "torn", compression=compression, dataset=make_arith_dataset(8),
                        clock=clock_a, seed=4)
    ref = ThemisRunWriter(tmp_path / "b", "torn", compression=compression, dataset=make_arith_dataset(8),
                          clock=clock_b, seed=4)
    for x in (w, ref):
        x.start()
        x.step(3)
    before = w.paths["records"].read_bytes()
    info = w.append_partial("record", 0.5)
    torn = w.paths["records"].read_bytes()
    assert torn.startswith(before) and 0 < len(torn) - len(before) < info["size"]
    # the task line of the torn record is complete (tasks <= records)
    assert len(read_lines(w.paths["tasks"])) == 5
    if compression == "gzip":
        members = gzip_members(before)
        d = zlib.decompressobj(wbits=31)
        d.decompress(torn[len(before):])
        assert not d.eof  # a truncated member, as a racing reader would see it
        assert len(members) == 4
    else:
        assert not torn.endswith(b"\n") and torn.count(b"\n") == before.count(b"\n")
    with pytest.raises(RuntimeError):
        w.step(1)
    w.finish_partial()
    ref.step(1)
    assert w.paths["records"].read_bytes() == ref.paths["records"].read_bytes()
    assert len(read_lines(w.paths["records"])) == 5
    for x in (w, ref):
        x.step(4)
        x.complete()
    for rel in JSONL:
        p = rel + (".jsonl.gz" if compression == "gzip" else ".jsonl")
        assert (w.run_dir / p).read_bytes() == (ref.run_dir / p).read_bytes()


def test_append_partial_evaluation_task_and_metadata(tmp_path):
    w = ThemisRunWriter(tmp_path, "torn2", compression="none", dataset=make_arith_dataset(6), eval_batch=100)
    w.start()
    w.step(2)
    w.append_partial("evaluation", 0.3)
    data = w.paths["evaluation"].read_bytes()
    assert data.count(b"\n") == 1 and not data.endswith(b"\n")  # header + torn first line
    w.finish_partial()
    assert len(read_lines(w.paths["evaluation"])) == 2 and w.pending == 1
    w.append_partial("task", 0.5)
    assert not w.paths["tasks"].read_bytes().endswith(b"\n")
    records_before = w.paths["records"].read_bytes()
    w.finish_partial()
    assert len(read_lines(w.paths["tasks"])) == 4
    assert len(read_lines(w.paths["records"])) == 4 and w.paths["records"].read_bytes() != records_before
    full = w.paths["metadata"].read_bytes()
    w.append_partial("metadata", 0.5)
    half = w.paths["metadata"].read_bytes()
    assert 0 < len(half) < len(full) and full.startswith(half)
    with pytest.raises(ValueError):
        json.loads(half)
    w.finish_partial()
    assert w.paths["metadata"].read_bytes() == full
    with pytest.raises(RuntimeError):
        w.finish_partial()
    with pytest.raises(RuntimeError):
        w.append_partial("template")  # already written
    with pytest.raises(ValueError):
        w.append_partial("bogus")


# ----------------------------------------------------------------------------- isolation


def test_writer_touches_nothing_outside_its_run_dir(tmp_path):
    root = tmp_path / "store"
    other = ThemisRunWriter(root, "other", dataset=make_arith_dataset(4))
    other.start()
    other.step(4)
    other.complete()
    (tmp_path / "outside.txt").write_text("x")
    snapshot = tree(tmp_path)
    w = ThemisRunWriter(root, "mine", dataset=make_arith_dataset(12), eval_batch=5, tmp_files=True)
    w.start()
    w.step(7, fail_ids={"q0002"})
    w.append_partial("record")
    w.finish_partial()
    w.step(4)
    w.complete()
    after = tree(tmp_path)
    prefix = os.path.relpath(w.run_dir, tmp_path)
    changed = {k for k in set(snapshot) | set(after) if snapshot.get(k) != after.get(k)}
    parent_dir = os.path.dirname(prefix)
    assert all(k == prefix or k.startswith(prefix + os.sep) or k == parent_dir for k in changed), changed
    assert not list(w.run_dir.rglob(".tmp_*"))  # temp files are removed after the append
    with pytest.raises(FileExistsError):
        ThemisRunWriter(root, "mine").start()


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        ThemisRunWriter(tmp_path, "a/b")
    with pytest.raises(ValueError):
        ThemisRunWriter(tmp_path, "x", compression="zstd")
    w = ThemisRunWriter(tmp_path, "x")
    with pytest.raises(RuntimeError):
        w.step(1)


# ----------------------------------------------------------------------------- live demo thread


def test_demo_thread_ticks_complete_fail_and_prune(tmp_path):
    root = tmp_path / "root"
    foreign = ThemisRunWriter(root, "foreign", dataset=make_arith_dataset(2))
    foreign.start()
    t = DemoWriterThread(root, interval=0.01, samples=12, max_runs=3, per_tick=(4, 4), seed=1)
    for _ in range(60):
        t.tick()
    assert t.last_error is None
    statuses = [s for _, s in t.finished]
    assert len(statuses) >= 8 and "failed" in statuses and "completed" in statuses
    assert statuses[3] == "failed" and statuses[0] == "completed"  # every 4th run fails
    runs = sorted(p.name for p in (root / "experiments/default/runs").iterdir())
    assert "foreign" in runs and len(runs) <= 4
    assert all(re.match(r"^demo-\d{8}-\d{6}-\d+", r) for r in runs if r != "foreign")
    for run_id, status in t.finished[-3:]:
        run_dir = root / "experiments/default/runs" / run_id
        meta = json.loads((run_dir / "metadata.json").read_text())
        assert meta["status"] == status
        records = read_lines(run_dir / "generation/records.jsonl.gz")
        if status == "failed":
            assert meta["error_message"] and "demo run" in meta["error_message"]
            assert 1 < len(records) < 13 and not (run_dir / "report.json").exists()
        else:
            assert len(records) == 13 and (run_dir / "report.json").exists()
            assert len(read_lines(run_dir / "evaluations/default/evaluation.jsonl.gz")) == 13


def test_demo_thread_runs_and_stops_promptly(tmp_path):
    t = DemoWriterThread(tmp_path, interval=0.02, samples=10)
    t.start()
    deadline = dt.datetime.now() + dt.timedelta(seconds=5)
    while not t.finished and dt.datetime.now() < deadline:
        t.join(0.02)
    started = dt.datetime.now()
    t.stop()
    assert not t.is_alive() and (dt.datetime.now() - started).total_seconds() < 2
    assert t.finished and t.last_error is None
