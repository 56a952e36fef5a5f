"""The partial decoding of hot events folds exactly as decoding them in full does.

Real events of the fixture stores (written by Themis 4.0.2) and odd ones made here are folded
twice through `apply_rows`: with the partial decoder, and with it switched off (every event
decoded in full by orjson). The folds must agree on everything they hold.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from themis_daemon.storage.themis4 import source
from themis_daemon.storage.themis4.fold import _CASE_STATE, summary_fields
from themis_daemon.storage.themis4.slim import HOT_EVENTS, slim_event

DATA = Path(__file__).parent / "data" / "themis-v4"


def fold_state(run):
    fold = run.fold
    return {
        "status": fold.status, "events": fold.events, "unknown": fold.unknown_events, "bad": fold.bad_events,
        "last_bad": fold.last_bad, "times": (fold.created_at, fold.updated_at, fold.completed_at),
        "finals": fold.finals, "positions": (fold.started_pos, fold.final_pos, fold.last_pos),
        "cases": {cid: _CASE_STATE(case) for cid, case in fold.cases.items()},
        "summary": summary_fields(fold), "order": fold.sample_order(True), "error": run.error,
    }


def fold_both(snapshots, rows, monkeypatch):
    """{run_id: state} folded with the partial decoder, and the same with full decoding only."""
    out = []
    for partial in (True, False):
        with monkeypatch.context() as m:
            if not partial:
                m.setattr(source, "slim_event", lambda data: None)
            runs = {rid: source.V4Run.from_snapshot(rid, raw, 0) for rid, raw in snapshots.items()}
            source.apply_rows(runs, rows, {})
            out.append({rid: fold_state(run) for rid, run in runs.items()})
    return out


def sqlite_store():
    db = sqlite3.connect(f"file:{DATA / 'sqlite' / 'themis.sqlite3'}?mode=ro", uri=True)
    try:
        snapshots = dict(db.execute("SELECT run_id, CAST(snapshot_json AS BLOB) FROM run_snapshots"))
        rows = db.execute("SELECT id, run_id, CAST(event_json AS BLOB) FROM run_events ORDER BY id").fetchall()
    finally:
        db.close()
    return snapshots, rows


def jsonl_store():
    snapshots, rows = {}, []
    for run_dir in sorted((DATA / "jsonl" / "store" / "runs").iterdir()):
        snapshots[run_dir.name] = (run_dir / "snapshot.json").read_bytes()
        offset = 0
        events = run_dir / "events.jsonl"  # a run submitted but never started has none
        for line in (events.read_bytes() if events.exists() else b"").splitlines(keepends=True):
            if line.strip():
                rows.append((offset, run_dir.name, line))
            offset += len(line)
    rows.sort(key=lambda r: (r[1], r[0]))
    return snapshots, rows


@pytest.mark.parametrize("store", [sqlite_store, jsonl_store], ids=["sqlite", "jsonl"])
def test_fixture_stores_fold_the_same_with_partial_decoding(store, monkeypatch):
    snapshots, rows = store()
    partial, full = fold_both(snapshots, rows, monkeypatch)
    assert partial == full
    hot = sum(1 for _, _, data in rows if slim_event(data) is not None)
    kinds = {json.loads(data)["event_type"] for _, _, data in rows}
    assert HOT_EVENTS <= kinds and hot > len(rows) // 2  # the partial path did the bulk of the work


SNAPSHOT = {
    "datasets": [{"dataset_id": "ds", "cases": [{"case_id": f"c{i}", "input": {"q": i}} for i in range(3)]}],
    "component_refs": {"metrics": [{"component_id": "m1"}, {"component_id": "m2"}],
                       "generator": {"component_id": "generator/x"}},
}

BASE = [
    {"event_type": "run_started", "occurred_at": "2026-01-01T00:00:00Z"},
    {"event_type": "generation_completed", "case_id": "c0", "candidate_index": 0, "occurred_at": "t1",
     "result": {"final_output": "a", "conversation": [{"role": "assistant", "content": "a"}]}},
    {"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "occurred_at": "t2",
     "score": {"metric_id": "m1", "value": 1.0}},
    {"event_type": "run_completed", "occurred_at": "t3", "completed_through_stage": "score"},
]

# Each one after BASE, as text: odd types, nulls, missing keys, values the fold tests for.
ODD = [
    '{"event_type": "generation_completed", "case_id": "c1", "candidate_index": 0, "result": null}',
    '{"event_type": "generation_completed", "case_id": "c1", "candidate_index": 0}',
    '{"event_type": "generation_completed", "case_id": "c1", "candidate_index": 1, "result": "text"}',
    '{"event_type": "generation_completed", "case_id": "c1", "candidate_index": true, "result": {}}',
    '{"event_type": "generation_completed", "case_id": "c1", "candidate_index": 0.0, "result": {"value": 1}}',
    '{"event_type": "generation_completed", "case_id": "c1", "result": {"metadata": [1]}}',
    '{"event_type": "generation_completed", "case_id": 7, "candidate_index": 0, "result": {}}',
    '{"event_type": "generation_completed", "case_id": null, "result": {}}',
    '{"event_type": "generation_completed", "case_id": "c1", "occurred_at": 5, "result": {}}',
    '{"event_type": "reduction_completed", "case_id": "c1", "result": null}',
    '{"event_type": "reduction_completed", "case_id": "c1", "result": {"final_output": "x"}}',
    '{"event_type": "reduction_completed", "case_id": "c1", "result": [1, 2]}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": {"value": null, "metadata": {}}}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": {"value": "1", "metadata": {"invalid": true}}}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": {"value": "1", "metadata": {"invalid": "true"}}}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": {"value": "1", "metadata": {"invalid": 1}}}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": {"value": "1", "metadata": "invalid"}}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": {"value": {"deep": [1, {"x": null}]}}}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": {"metadata": {"invalid": false}}}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": "ok"}',
    '{"event_type": "parse_completed", "case_id": "c0", "result": null}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m2", "score": {"value": 0}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m2", "score": {"value": true}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": "0.5"}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": null}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": [1]}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": 123456789012345678901234567890}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": NaN}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": 1e400}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": 0.5, "details": {"why": "x"}}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": 0.5, "details": {}}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": 0.5, "details": ["x"]}}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": "1"}',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": 3, "score": {"value": 1}}',
    '{"event_type": "score_completed", "case_id": "c0", "score": {"value": 1}}',
    '{"event_type": "score_failed", "case_id": "c0", "metric_id": "m1", "error": {"reason": "boom"}}',
    '{"event_type": "generation_failed", "case_id": "c2", "candidate_id": "k", "error_message": "down"}',
    '{"event_type": "evaluation_completed", "case_id": "c0", "metric_id": "m1", "execution": {}}',
    '{"event_type": "run_started", "occurred_at": "t9"}',
    '{"event_type": "something_new", "case_id": "c0"}',
    '{"event_type": 5}',
    '{"case_id": "c0"}',
    '[1, 2]',
    '"text"',
    'not json',
    '{"event_type": "score_completed", "case_id": "c0", "metric_id": "m1", "score": {"value": 1}',
    '{"event_type": "generation_completed", "case_id": "c\\u00e9", "candidate_index": 0, "result": {"x": "\\ud83d"}}',
]


@pytest.mark.parametrize("odd", ODD)
@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_odd_events_fold_the_same_with_partial_decoding(odd, as_text, monkeypatch):
    rows = [(i + 1, "r", json.dumps(ev).encode()) for i, ev in enumerate(BASE)]
    rows.append((len(rows) + 1, "r", odd if as_text else odd.encode()))
    rows.append((len(rows) + 1, "r", b'\xff{"event_type": "score_completed"}'))  # not UTF-8
    partial, full = fold_both({"r": json.dumps(SNAPSHOT).encode()}, rows, monkeypatch)
    assert partial == full


def test_only_hot_events_of_the_expected_shape_are_decoded_partially():
    assert slim_event(b'{"event_type": "generation_completed", "case_id": "c", "result": {"final_output": "x"}}') \
        == {"event_type": "generation_completed", "case_id": "c", "result": {}}
    assert slim_event('{"event_type": "parse_completed", "result": {"value": "7", "metadata": {"invalid": true}, '
                      '"raw": "long"}}') == {"event_type": "parse_completed",
                                             "result": {"value": "7", "metadata": {"invalid": True}}}
    for text in ('{"event_type": "run_started"}', '{"event_type": "score_failed", "case_id": "c"}',
                 '{"event_type": "score_completed", "score": {"value": "x"}}', '{"case_id": "c"}', '[]', 'nan'):
        assert slim_event(text) is None, text


def share_views(share, page):
    """What a sample reads of a dataset share: each page case's reference and input."""
    if share is None:
        return None
    return {cid: (share["references"].get(cid), share["inputs"].get(cid)) for cid in page}, \
        sorted(share["references"]), sorted(share["inputs"])


ODD_SNAPSHOTS = [
    {"datasets": [{"cases": [{"case_id": "a", "input": {"q": [1, None, {"x": 1.5}]}, "expected_output": {"k": 1}},
                             {"case_id": "b"}, {"case_id": "a", "input": "second", "expected_output": "wins"}]},
                  {"cases": [{"case_id": "c", "input": None, "expected_output": None}]},
                  {"cases": None}, {}]},
    {"datasets": [{"cases": [{"case_id": 5, "input": 1}, {"case_id": None}, {"input": "no id"}]}]},
    {"datasets": [{"cases": ["not a case", {"case_id": "a"}]}]},
    {"datasets": ["not a dataset"]},
    {"datasets": {"cases": []}},
    {"datasets": None},
    {},
    [1, 2],
]


@pytest.mark.parametrize("snapshot", [json.dumps(s) for s in ODD_SNAPSHOTS] + ["not json", '{"datasets": [{"cases": '
                                      '[{"case_id": "a", "input": NaN}]}]}'])
def test_a_partially_read_snapshot_gives_the_same_dataset_share(snapshot):
    page = ["a", "b", "c", "d"]
    expected = source._dataset_share(source.describe_snapshot(source._json_or_none(snapshot)), page)
    got = source.dataset_share(snapshot.encode(), page)
    if got is None:  # shapes it does not read: the caller describes the snapshot in full
        got = expected
    assert share_views(got, page) == share_views(expected, page)


@pytest.mark.parametrize("store", [sqlite_store, jsonl_store], ids=["sqlite", "jsonl"])
def test_fixture_snapshots_give_the_same_dataset_share(store):
    snapshots, _rows = store()
    for raw in snapshots.values():
        described = source.describe_snapshot(source.decode(raw))
        page = described["case_ids"][1::2] + ["missing"]
        got = source.dataset_share(raw, page)
        assert got is not None and got["references"]  # read partially: Themis writes the expected shape
        assert share_views(got, page) == share_views(source._dataset_share(described, page), page)


def test_rows_that_are_not_json_text_fold_the_same_with_partial_decoding(monkeypatch):
    # A driver may hand over None or an already decoded object: the full decoder says what it is.
    rows = [(i + 1, "r", json.dumps(ev).encode()) for i, ev in enumerate(BASE)]
    rows += [(len(rows) + 1, "r", None), (len(rows) + 2, "r", dict(BASE[1], case_id="c2"))]
    partial, full = fold_both({"r": json.dumps(SNAPSHOT).encode()}, rows, monkeypatch)
    assert partial == full and partial["r"]["bad"] == 1 and "c2" in partial["r"]["cases"]
    assert source.dataset_share({"datasets": []}, ["a"]) is None
