"""REST endpoints against the real Themis stores, compared with the original server's answers."""

from __future__ import annotations

import json
import math
import urllib.parse

import pytest

from themis_daemon import __version__
from conftest import GZIP_EXPECTED, PLAIN_EXPECTED, load_expected, snapshot_tree


async def fetch(http_client, base_url, path, **kw):
    kw.setdefault("raise_error", False)
    resp = await http_client.fetch(base_url + path, **kw)
    body = json.loads(resp.body) if resp.body else None
    return resp, body


def close(a, b, tol=1e-9):
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


@pytest.mark.gen_test
async def test_health(http_client, base_url):
    resp, body = await fetch(http_client, base_url, "/")
    assert resp.code == 200
    assert body == {"status": "ok", "service": "themis-api", "version": __version__}
    assert resp.headers["Content-Type"].startswith("application/json")


@pytest.mark.gen_test
async def test_list_runs_matches_upstream(http_client, base_url):
    expected = load_expected(PLAIN_EXPECTED, "002-list-runs.json")["response"]["body"]
    resp, body = await fetch(http_client, base_url, "/api/runs")
    assert resp.code == 200
    assert [r["run_id"] for r in body] == [r["run_id"] for r in expected]
    for ours, theirs in zip(body, expected):
        for key in ("run_id", "experiment_id", "status", "num_samples", "created_at"):
            assert ours[key] == theirs[key], key
        assert list(ours["metrics"]) == list(theirs["metrics"])
        for name, value in theirs["metrics"].items():
            assert close(ours["metrics"][name], value)
    assert resp.headers["X-Total-Count"] == "5"


@pytest.mark.gen_test
async def test_list_runs_progress_fields(http_client, base_url):
    _, body = await fetch(http_client, base_url, "/api/runs")
    runs = {r["run_id"]: r for r in body}
    live = runs["fake-live"]
    assert (live["expected_samples"], live["generated"], live["evaluated"]) == (20, 14, 10)
    assert live["progress"] == pytest.approx(0.7)
    assert runs["fake-failed"]["error_message"] == "results sink unavailable: connection refused"
    assert runs["fake-failed"]["progress"] == pytest.approx(11 / 20)
    assert runs["fake-swapped"]["failed"] == 2
    assert runs["fake-swapped"]["model"] == "fake-flaky:fake-math-llm"
    assert runs["fake-direct"]["progress"] == 1.0
    assert runs["fake-direct"]["completed_at"] is not None
    assert all(r["error"] is None for r in body)


@pytest.mark.gen_test
async def test_list_runs_filters_sort_and_paging(http_client, base_url):
    _, body = await fetch(http_client, base_url, "/api/runs?status=completed")
    assert {r["run_id"] for r in body} == {"fake-direct", "fake-swapped", "fake-terse"}
    _, body = await fetch(http_client, base_url, "/api/runs?status=failed,in_progress")
    assert {r["run_id"] for r in body} == {"fake-failed", "fake-live"}
    _, body = await fetch(http_client, base_url, "/api/runs?experiment_id=nope")
    assert body == []
    _, body = await fetch(http_client, base_url, "/api/runs?sort=run_id")
    assert [r["run_id"] for r in body] == sorted(r["run_id"] for r in body)
    resp, body = await fetch(http_client, base_url, "/api/runs?sort=run_id&limit=2&offset=1")
    assert [r["run_id"] for r in body] == ["fake-failed", "fake-live"]
    assert resp.headers["X-Total-Count"] == "5"


@pytest.mark.gen_test
@pytest.mark.parametrize("query", ["status=bogus", "sort=nope", "limit=-1", "limit=abc", "offset=1.5"])
async def test_list_runs_bad_query(http_client, base_url, query):
    resp, body = await fetch(http_client, base_url, "/api/runs?" + query)
    assert resp.code == 400
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert body["status"] == 400 and body["detail"]


@pytest.mark.gen_test
@pytest.mark.parametrize("run_id", ["fake-direct", "fake-swapped", "fake-terse", "fake-failed", "fake-live"])
async def test_run_detail_matches_upstream(http_client, base_url, run_id):
    expected = load_expected(PLAIN_EXPECTED, f"0{ {'fake-direct': '03', 'fake-failed': '04', 'fake-live': '05', 'fake-swapped': '06', 'fake-terse': '07'}[run_id]}-run-detail-default-{run_id}.json")
    theirs = expected["response"]["body"]
    resp, ours = await fetch(http_client, base_url, "/api/runs/" + run_id)
    assert resp.code == 200
    for key in ("run_id", "experiment_id", "status", "num_samples"):
        assert ours[key] == theirs[key]
    assert ours["metadata"]["created_at"] == theirs["metadata"]["created_at"]
    # additive: the rest of metadata.json users need (the original sent created_at only)
    assert ours["metadata"]["config_snapshot"]["reproducibility_manifest"]["model"]["identifier"] == "fake-math-llm"
    assert "updated_at" in ours["metadata"] and "completed_at" in ours["metadata"]
    assert len(ours["samples"]) == len(theirs["samples"]) == ours["samples_total"]
    for a, b in zip(ours["samples"], theirs["samples"]):
        assert (a["id"], a["prompt"], a["response"]) == (b["id"], b["prompt"], b["response"])
        assert a["scores"].keys() == b["scores"].keys()
        for name in b["scores"]:
            assert close(a["scores"][name], b["scores"][name])


@pytest.mark.gen_test
async def test_run_detail_failed_generation_has_error(http_client, base_url):
    _, body = await fetch(http_client, base_url, "/api/runs/fake-swapped")
    failed = [s for s in body["samples"] if s.get("error")]
    assert [s["id"] for s in failed] == ["q03", "q12"]
    assert all(s["scores"] == {} and s["response"] == "" for s in failed)
    assert "HTTP 503" in failed[0]["error"]


@pytest.mark.gen_test
async def test_run_detail_paging(http_client, base_url):
    _, full = await fetch(http_client, base_url, "/api/runs/fake-direct")
    _, page = await fetch(http_client, base_url, "/api/runs/fake-direct?samples_offset=5&samples_limit=3")
    assert page["samples"] == full["samples"][5:8]
    assert page["samples_total"] == 20
    resp, _ = await fetch(http_client, base_url, "/api/runs/fake-direct?samples_limit=-3")
    assert resp.code == 400


@pytest.mark.gen_test
async def test_etag_revalidation(http_client, base_url):
    for path in ("/api/runs", "/api/runs/fake-direct"):
        resp, _ = await fetch(http_client, base_url, path)
        etag = resp.headers["ETag"]
        again, _ = await fetch(http_client, base_url, path, headers={"If-None-Match": etag})
        assert again.code == 304


@pytest.mark.gen_test
@pytest.mark.parametrize("path", [
    "/api/runs/nope", "/api/runs/..", "/api/runs/..%2F..%2Fetc%2Fpasswd", "/api/runs/%2Fetc%2Fpasswd",
    "/api/runs/fake-direct%00", "/api/runs/%2E%2E", "/no/such/route",
])
async def test_unknown_and_traversal_are_json_404(http_client, base_url, path):
    resp, body = await fetch(http_client, base_url, path)
    assert resp.code == 404
    assert body["status"] == 404 and "detail" in body
    assert b"<html" not in resp.body.lower()


@pytest.mark.gen_test
async def test_unknown_run_detail_keeps_original_message(http_client, base_url):
    expected = load_expected(PLAIN_EXPECTED, "008-error-run-detail-unknown.json")
    resp, body = await fetch(http_client, base_url, expected["request"]["path"])
    assert resp.code == expected["response"]["status_code"] == 404
    assert body["detail"] == expected["response"]["body"]["detail"]


@pytest.mark.gen_test
async def test_delete_is_read_only(http_client, base_url, store_root):
    before = snapshot_tree(store_root)
    resp, body = await fetch(http_client, base_url, "/api/runs/fake-direct", method="DELETE")
    assert resp.code == 501 and "read-only" in body["detail"]
    resp, body = await fetch(http_client, base_url, "/api/runs/nope", method="DELETE")
    assert resp.code == 404
    assert snapshot_tree(store_root) == before


@pytest.mark.gen_test
async def test_benchmarks_default_to_themis_presets(http_client, base_url):
    expected = load_expected(PLAIN_EXPECTED, "009-benchmarks.json")["response"]["body"]
    _, body = await fetch(http_client, base_url, "/api/benchmarks")
    assert body == expected


@pytest.mark.gen_test
async def test_health_endpoints(http_client, base_url):
    resp, body = await fetch(http_client, base_url, "/healthz")
    assert resp.code == 200 and body["status"] == "ok"
    await fetch(http_client, base_url, "/api/runs")
    resp, body = await fetch(http_client, base_url, "/readyz")
    assert resp.code == 200 and body["checks"]["first_scan_done"] is True


class TestGzipStore:
    @pytest.fixture
    def store_root(self, gzip_store):
        return gzip_store

    @pytest.mark.gen_test
    async def test_list_and_details_match_upstream(self, http_client, base_url):
        index = load_expected(GZIP_EXPECTED, "index.json")
        for cap in index["captures"]:
            if cap["method"] != "GET" or cap["status_code"] != 200 or not cap["path"].startswith("/api/runs"):
                continue
            theirs = load_expected(GZIP_EXPECTED, cap["file"])["response"]["body"]
            resp, ours = await fetch(http_client, base_url, cap["path"])
            assert resp.code == 200
            if isinstance(theirs, list):
                assert [r["run_id"] for r in ours] == [r["run_id"] for r in theirs]
                pairs = zip(ours, theirs)
            else:
                pairs = [(ours, theirs)]
                assert [s["id"] for s in ours["samples"]] == [s["id"] for s in theirs["samples"]]
                assert [s["prompt"] for s in ours["samples"]] == [s["prompt"] for s in theirs["samples"]]
            for a, b in pairs:
                assert a["status"] == b["status"] and a["num_samples"] == b["num_samples"]
                for name, value in b["metrics"].items():
                    assert close(a["metrics"][name], value)


@pytest.mark.gen_test
async def test_run_ids_with_reserved_characters(http_client, base_url, store_root):
    import shutil, os
    runs = os.path.join(store_root, "experiments", "default", "runs")
    odd = "odd run+β@#%(1),x"
    shutil.copytree(os.path.join(runs, "fake-direct"), os.path.join(runs, odd))
    meta_path = os.path.join(runs, odd, "metadata.json")
    meta = json.load(open(meta_path))
    meta["run_id"] = odd
    with open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=2)
    # the poll interval is short: the new run appears on the next request
    resp, body = await fetch(http_client, base_url, "/api/runs/" + urllib.parse.quote(odd, safe=""))
    assert resp.code == 200, body
    assert body["run_id"] == odd and body["num_samples"] == 20


@pytest.mark.gen_test(timeout=60)
async def test_full_tour_leaves_the_store_untouched(http_client, base_url, store_root):
    """Every route, compare and a WebSocket session: the served tree keeps its bytes and mtimes."""
    import tornado.websocket

    before = snapshot_tree(store_root)
    for path in ("/api/runs", "/", "/healthz", "/readyz", "/api/benchmarks", "/metrics", "/openapi.json",
                 "/api/runs?status=completed&sort=run_id"):
        resp, _ = await http_client.fetch(base_url + path, raise_error=False), None
        assert resp.code == 200, path
    _, runs = await fetch(http_client, base_url, "/api/runs")
    for run in runs:
        resp, _ = await fetch(http_client, base_url, "/api/runs/" + urllib.parse.quote(run["run_id"], safe=""))
        assert resp.code == 200
    for test in ("t_test", "bootstrap", "permutation", "none", "auto"):
        resp = await http_client.fetch(base_url + "/api/compare", method="POST", raise_error=False,
                                       body=json.dumps({"run_ids": [r["run_id"] for r in runs], "statistical_test": test}))
        assert resp.code == 200, test
    conn = await tornado.websocket.websocket_connect(base_url.replace("http", "ws", 1) + "/ws")
    await conn.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
    await conn.read_message()
    conn.close()
    await fetch(http_client, base_url, "/api/runs/fake-direct", method="DELETE")
    assert snapshot_tree(store_root) == before


@pytest.mark.gen_test
async def test_pending_samples_of_a_live_run(http_client, base_url):
    # fake-live: 14 generated, 10 evaluated (evaluation runs in batches)
    _, plain = await fetch(http_client, base_url, "/api/runs/fake-live")
    assert len(plain["samples"]) == plain["samples_total"] == 10
    _, full = await fetch(http_client, base_url, "/api/runs/fake-live?include_pending=true")
    assert full["samples_total"] == 14
    assert [s["pending"] for s in full["samples"]] == [False] * 10 + [True] * 4
    pending = full["samples"][10:]
    assert [s["id"] for s in pending] == ["q11", "q12", "q13", "q14"]
    assert all(s["scores"] == {} and s["prompt"].startswith("What is") and s["response"] for s in pending)
    _, page = await fetch(http_client, base_url, "/api/runs/fake-live?include_pending=1&samples_offset=9&samples_limit=2")
    assert [(s["id"], s["pending"]) for s in page["samples"]] == [("q10", False), ("q11", True)]
    resp, _ = await fetch(http_client, base_url, "/api/runs/fake-live?include_pending=maybe")
    assert resp.code == 400
