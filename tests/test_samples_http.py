"""GET /api/compare/samples and GET /api/runs/{id}/samples over HTTP on the real fixture stores.

Expected cells are computed here from the store files themselves (Themis 1.x evaluation.jsonl,
the Themis 4 event oracle) and cross-checked with the McNemar counts POST /api/compare reports.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
from urllib.parse import urlencode

import pytest

from conftest import DATA, PLAIN

V4 = os.path.join(DATA, "themis-v4")
with open(os.path.join(V4, "expected.json"), encoding="utf-8") as _fh:
    V4_EXPECTED = json.load(_fh)


async def get(http_client, base_url, path, **params):
    url = base_url + path + ("?" + urlencode(params) if params else "")
    resp = await http_client.fetch(url, raise_error=False)
    ctype = resp.headers.get("Content-Type", "")
    body = json.loads(resp.body) if "json" in ctype and "ndjson" not in ctype else resp.body
    return resp, body


async def compare_row(http_client, base_url, run_a, run_b, metric):
    resp = await http_client.fetch(base_url + "/api/compare", method="POST", raise_error=False,
                                   body=json.dumps({"run_ids": [run_a, run_b], "metrics": [metric],
                                                    "statistical_test": "mcnemar"}))
    assert resp.code == 200, resp.body
    (row,) = json.loads(resp.body)["pairwise_results"]
    return row


async def all_pages(http_client, base_url, limit, **params):
    """Every item of a kind, following next_offset."""
    items, offset, pages = [], 0, 0
    while offset is not None and pages < 100:
        resp, body = await get(http_client, base_url, "/api/compare/samples", limit=limit, offset=offset, **params)
        assert resp.code == 200, body
        assert len(body["items"]) <= limit
        items.extend(body["items"])
        offset = body["next_offset"]
        pages += 1
    assert offset is None
    return items, body


def v1_file_scores(run_id, metric):
    """Per sample id, the mean of the metric's values in the run's evaluation file."""
    path = os.path.join(PLAIN, "experiments", "default", "runs", run_id, "evaluations", "default", "evaluation.jsonl")
    values = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            ev = obj.get("evaluation")
            if not isinstance(ev, dict):
                continue
            for sc in ev["scores"]:
                if sc["metric_name"] == metric:
                    values.setdefault(ev["sample_id"], []).append(sc["value"])
    return {k: sum(v) / len(v) for k, v in values.items()}


def cells(a, b):
    common = sorted(set(a) & set(b), key=lambda k: (type(k).__name__, k))
    out = {"a_only": [], "b_only": [], "both": [], "neither": []}
    for k in common:
        key = {(1.0, 0.0): "a_only", (0.0, 1.0): "b_only", (1.0, 1.0): "both", (0.0, 0.0): "neither"}[(a[k], b[k])]
        out[key].append(k)
    return out


# ---------------------------------------------------------------------------- Themis 1.x


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("run_a,run_b", [("fake-direct", "fake-swapped"), ("fake-swapped", "fake-direct"),
                                         ("fake-direct", "fake-terse"), ("fake-live", "fake-swapped")])
@pytest.mark.parametrize("metric", ["ExactMatch", "MathVerifyAccuracy"])
async def test_v1_cells_match_the_files_and_mcnemar(http_client, base_url, run_a, run_b, metric):
    sa, sb = v1_file_scores(run_a, metric), v1_file_scores(run_b, metric)
    want = cells(sa, sb)
    row = await compare_row(http_client, base_url, run_a, run_b, metric)
    assert (row["discordant_a_only"], row["discordant_b_only"]) == (len(want["a_only"]), len(want["b_only"]))
    for kind, ids in want.items():
        items, last = await all_pages(http_client, base_url, 3, run_a=run_a, run_b=run_b, metric=metric, kind=kind)
        assert [it["id"] for it in items] == ids, kind
        assert last["counts"] == {k: len(v) for k, v in want.items()}
        assert last["total"] == len(ids) and last["n"] == row["n"] == sum(map(len, want.values()))
        assert (last["n_only_a"], last["n_only_b"]) == (row["n_only_a"], row["n_only_b"])
        assert last["mean_a"] == pytest.approx(row["run_a_mean"]) and last["mean_b"] == pytest.approx(row["run_b_mean"])
        for it in items:
            assert (it["score_a"], it["score_b"]) == (sa[it["id"]], sb[it["id"]])
            assert it["a"]["scores"][metric] == sa[it["id"]] and it["b"]["scores"][metric] == sb[it["id"]]


@pytest.mark.gen_test(timeout=60)
async def test_v1_items_carry_prompt_responses_reference_and_details(http_client, base_url):
    resp, body = await get(http_client, base_url, "/api/compare/samples", run_a="fake-direct",
                           run_b="fake-swapped", metric="ExactMatch", kind="a_only", limit=500)
    assert resp.code == 200
    run_dir = os.path.join(PLAIN, "experiments", "default", "runs")
    dataset = {}
    with open(os.path.join(run_dir, "fake-direct", "generation", "dataset.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if "id" in row:
                dataset[row["id"]] = row
    _, direct = await get(http_client, base_url, "/api/runs/fake-direct")
    _, swapped = await get(http_client, base_url, "/api/runs/fake-swapped")
    da = {s["id"]: s for s in direct["samples"]}
    db = {s["id"]: s for s in swapped["samples"]}
    assert body["items"]
    for it in body["items"]:
        sid = it["id"]
        assert it["reference"] == dataset[sid]["answer"]
        assert it["prompt"] == da[sid]["prompt"] and it["prompt_b"] == db[sid]["prompt"] != it["prompt"]
        assert it["a"]["response"] == da[sid]["response"] and it["b"]["response"] == db[sid]["response"]
        # ExactMatch's details name the reference it matched (A right) or none (B wrong).
        assert it["a"]["details"]["ExactMatch"]["matched_reference"] == dataset[sid]["answer"]
        assert it["b"]["details"]["ExactMatch"]["matched_reference"] is None


@pytest.mark.gen_test(timeout=60)
async def test_v1_by_delta_sorts_by_size_of_difference(http_client, base_url):
    sa, sb = v1_file_scores("fake-direct", "ResponseLength"), v1_file_scores("fake-terse", "ResponseLength")
    items, last = await all_pages(http_client, base_url, 4, run_a="fake-direct", run_b="fake-terse",
                                  metric="ResponseLength", kind="by_delta")
    common = set(sa) & set(sb)
    assert {it["id"] for it in items} == common and len(items) == len(common)
    sizes = [abs(it["delta"]) for it in items]
    assert sizes == sorted(sizes, reverse=True)
    for it in items:
        assert it["delta"] == pytest.approx(sa[it["id"]] - sb[it["id"]])
    assert last["binary"] is False and last["counts"] is None
    assert last["n_different"] == sum(1 for k in common if sa[k] != sb[k])
    # by_delta is valid for 0/1 metrics too: discordant pairs first.
    items, last = await all_pages(http_client, base_url, 50, run_a="fake-direct", run_b="fake-swapped",
                                  metric="ExactMatch", kind="by_delta")
    discordant = last["counts"]["a_only"] + last["counts"]["b_only"]
    assert all(it["delta"] != 0 for it in items[:discordant]) and all(it["delta"] == 0 for it in items[discordant:])


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("params,status,needle", [
    ({"run_a": "nope", "run_b": "fake-direct", "metric": "ExactMatch", "kind": "a_only"}, 404, "Run not found: nope"),
    ({"run_a": "fake-direct", "run_b": "nope", "metric": "ExactMatch"}, 404, "Run not found: nope"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "Bogus"}, 404, "Metric 'Bogus' not found"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "\x03"}, 404, "not found"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "ExactMatch", "kind": "sideways"}, 400, "Unknown kind"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "ExactMatch", "kind": ""}, 400, "Unknown kind"),
    ({"run_a": "fake-direct", "run_b": "fake-direct", "metric": "ExactMatch"}, 400, "same run"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "ResponseLength", "kind": "a_only"}, 400,
     "needs a 0/1 metric"),
    ({"run_b": "fake-swapped", "metric": "ExactMatch"}, 400, "'run_a' is required"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped"}, 400, "'metric' is required"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "ExactMatch", "limit": "0"}, 400, "'limit'"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "ExactMatch", "limit": "501"}, 400, "'limit'"),
    ({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "ExactMatch", "offset": "-1"}, 400, "'offset'"),
])
async def test_bad_requests_get_clear_json_errors(http_client, base_url, params, status, needle):
    resp, body = await get(http_client, base_url, "/api/compare/samples", **params)
    assert resp.code == status
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert body["status"] == status and needle in body["detail"]


@pytest.mark.gen_test(timeout=60)
async def test_paging_past_the_end_is_empty(http_client, base_url):
    resp, body = await get(http_client, base_url, "/api/compare/samples", run_a="fake-direct",
                           run_b="fake-swapped", metric="ExactMatch", kind="both", offset=1000)
    assert resp.code == 200 and body["items"] == [] and body["next_offset"] is None and body["total"] > 0


# ---------------------------------------------------------------------------- downloads


def v1_detail_ids(run_id):
    return [s for s in v1_file_scores(run_id, "ExactMatch")]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("run_id", ["fake-direct", "fake-swapped", "fake-live"])
async def test_v1_downloads_parse_back_to_the_detail(http_client, base_url, run_id):
    _, detail = await get(http_client, base_url, f"/api/runs/{run_id}")
    resp, raw = await get(http_client, base_url, f"/api/runs/{run_id}/samples", format="jsonl")
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{run_id}-samples.jsonl"'
    lines = [json.loads(x) for x in raw.decode("utf-8").splitlines()]
    assert lines == detail["samples"]
    assert int(resp.headers["X-Total-Count"]) == len(lines) == detail["samples_total"]

    resp, raw = await get(http_client, base_url, f"/api/runs/{run_id}/samples", format="csv")
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{run_id}-samples.csv"'
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    metrics = sorted(detail["metrics"])
    assert list(rows[0].keys()) == ["id", "prompt", "response", "reference", "error"] + metrics
    assert len(rows) == len(detail["samples"])
    for row, s in zip(rows, detail["samples"]):
        assert row["id"] == str(s["id"]) and row["prompt"] == s["prompt"] and row["response"] == s["response"]
        assert row["reference"] == s["reference"] and row["error"] == s.get("error", "")
        for m in metrics:
            assert row[m] == ("" if m not in s["scores"] else repr(float(s["scores"][m])))


def http_chunks(raw: bytes):
    """The chunks of a raw HTTP/1.1 chunked response (headers, then size-prefixed chunks)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    chunks = []
    for _ in range(10_000):
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return head.decode("latin-1"), chunks
        chunks.append(rest[:size])
        rest = rest[size + 2:]
    raise AssertionError("no terminating chunk")


@pytest.mark.gen_test(timeout=60)
async def test_download_is_streamed_in_chunks(base_url, monkeypatch):
    import asyncio

    from themis_daemon.web import samples

    monkeypatch.setattr(samples, "EXPORT_CHUNK", 3)
    host, port = base_url.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/runs/fake-direct/samples?format=jsonl HTTP/1.1\r\nHost: x\r\n"
                 b"Accept-Encoding: identity\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, chunks = http_chunks(raw)
    assert head.startswith("HTTP/1.1 200") and "Transfer-Encoding: chunked" in head
    # One chunk per flush, each holding whole lines of 3 samples (the last one 2).
    assert [len(c.splitlines()) for c in chunks] == [3] * 6 + [2]
    assert all(c.endswith(b"\n") for c in chunks)


@pytest.mark.gen_test(timeout=60)
async def test_download_errors(http_client, base_url):
    resp, body = await get(http_client, base_url, "/api/runs/nope/samples", format="csv")
    assert resp.code == 404 and "Run not found: nope" in body["detail"]
    resp, body = await get(http_client, base_url, "/api/runs/fake-direct/samples", format="xlsx")
    assert resp.code == 400 and "Unknown format" in body["detail"]
    resp, body = await get(http_client, base_url, "/api/runs/fake-direct/samples", format="")
    assert resp.code == 400 and "Unknown format" in body["detail"]


# ---------------------------------------------------------------------------- Themis 4


class TestThemis4:
    @pytest.fixture(params=("sqlite", "jsonl", "postgres"))
    def backend(self, request):
        return request.param

    @pytest.fixture
    def store_root(self, backend, tmp_path, request):
        if backend == "postgres":
            return request.getfixturevalue("pg_fixture_db")
        if backend == "sqlite":
            dst = tmp_path / "themis.sqlite3"
            shutil.copyfile(os.path.join(V4, "sqlite", "themis.sqlite3"), dst)
            return str(dst)
        dst = tmp_path / "store"
        shutil.copytree(os.path.join(V4, "jsonl", "store"), dst)
        return str(dst)

    def ids(self, backend):
        with open(os.path.join(V4, backend, "manifest.json"), encoding="utf-8") as fh:
            return {name: run["run_id"] for name, run in json.load(fh)["runs"].items()}

    def oracle_scores(self, backend, name, metric):
        """Per case, the non-error score Themis' own event reader reports."""
        per_case = V4_EXPECTED["backends"][backend]["per_case"][name]["reader_scores_from_events"]
        return {cid: s[metric] for cid, s in per_case.items()
                if metric in s and not isinstance(s[metric], dict)}

    @pytest.mark.gen_test(timeout=60)
    @pytest.mark.parametrize("pair", [("alpha", "beta"), ("beta", "flaky"), ("alpha", "score_errors")])
    async def test_cells_match_the_oracle_and_mcnemar(self, http_client, base_url, backend, pair):
        ids = self.ids(backend)
        metric = "builtin/exact_match"
        a, b = (self.oracle_scores(backend, n, metric) for n in pair)
        want = cells(a, b)
        run_a, run_b = ids[pair[0]], ids[pair[1]]
        row = await compare_row(http_client, base_url, run_a, run_b, metric)
        assert (row["discordant_a_only"], row["discordant_b_only"]) == (len(want["a_only"]), len(want["b_only"]))
        for kind, expected_ids in want.items():
            items, last = await all_pages(http_client, base_url, 5, run_a=run_a[:12], run_b=run_b, metric=metric,
                                          kind=kind)
            assert last["run_a"] == run_a  # a unique hex prefix names the run
            assert [it["id"] for it in items] == expected_ids, kind
            assert last["counts"] == {k: len(v) for k, v in want.items()}
        io_a = V4_EXPECTED["backends"][backend]["per_case"][pair[0]]["io_from_events"]
        for it in items:
            assert it["reference"] == io_a[it["id"]]["reference"]
            assert it["a"]["response"] == (io_a[it["id"]]["reduced_output"] or io_a[it["id"]]["candidate_outputs"][0])

    @pytest.mark.gen_test(timeout=60)
    async def test_continuous_metric_and_cell_refusal(self, http_client, base_url, backend):
        ids = self.ids(backend)
        metric = "builtin/f1"
        a, b = self.oracle_scores(backend, "alpha", metric), self.oracle_scores(backend, "beta", metric)
        binary = all(v in (0.0, 1.0) for v in list(a.values()) + list(b.values()))
        items, last = await all_pages(http_client, base_url, 7, run_a=ids["alpha"], run_b=ids["beta"],
                                      metric=metric, kind="by_delta")
        assert {it["id"] for it in items} == set(a) & set(b)
        sizes = [abs(it["delta"]) for it in items]
        assert sizes == sorted(sizes, reverse=True)
        assert last["binary"] is binary
        if not binary:
            resp, body = await get(http_client, base_url, "/api/compare/samples", run_a=ids["alpha"],
                                   run_b=ids["beta"], metric=metric, kind="b_only")
            assert resp.code == 400 and "by_delta" in body["detail"]

    def stored_details(self, backend, run_id):
        """Per case, per metric, the details of the last score_completed, read from the store
        (for PostgreSQL from the SQLite copy of the same runs: every backend holds the same events)."""
        if backend in ("sqlite", "postgres"):
            import sqlite3

            con = sqlite3.connect(f"file:{os.path.join(V4, 'sqlite', 'themis.sqlite3')}?mode=ro", uri=True)
            try:
                rows = [r[0] for r in con.execute("SELECT event_json FROM run_events WHERE run_id = ? ORDER BY id",
                                                  (run_id,))]
            finally:
                con.close()
        else:
            with open(os.path.join(V4, "jsonl", "store", "runs", run_id, "events.jsonl"), encoding="utf-8") as fh:
                rows = [line for line in fh if line.strip()]
        out = {}
        for raw in rows:
            ev = json.loads(raw)
            if ev.get("event_type") in ("score_completed", "score_failed"):
                out.setdefault(ev["case_id"], {})[ev["metric_id"]] = (ev.get("score") or {}).get("details")
        return {c: {m: d for m, d in per.items() if d} for c, per in out.items()}

    @pytest.mark.gen_test(timeout=60)
    async def test_score_details_reach_detail_pairs_and_downloads(self, http_client, base_url, backend):
        ids = self.ids(backend)
        run_id = ids["score_errors"]
        want = self.stored_details(backend, run_id)
        assert any(want.values()), "the fixture stores details for some scores"
        _, detail = await get(http_client, base_url, f"/api/runs/{run_id}")
        for s in detail["samples"]:
            expected = {m: d for m, d in want.get(s["id"], {}).items() if m in s["scores"]}
            assert s.get("details", {}) == expected, s["id"]
        metric = "metric/format_closeness"
        items, _ = await all_pages(http_client, base_url, 50, run_a=run_id, run_b=ids["alpha"], metric="builtin/exact_match",
                                   kind="by_delta")
        for it in items:
            assert it["a"].get("details", {}).get(metric) == want.get(it["id"], {}).get(metric)

    @pytest.mark.gen_test(timeout=60)
    async def test_downloads_parse_back(self, http_client, base_url, backend):
        run_id = self.ids(backend)["flaky"]
        _, detail = await get(http_client, base_url, f"/api/runs/{run_id}")
        resp, raw = await get(http_client, base_url, f"/api/runs/{run_id}/samples", format="jsonl")
        assert resp.code == 200
        assert [json.loads(x) for x in raw.decode("utf-8").splitlines()] == detail["samples"]
        resp, raw = await get(http_client, base_url, f"/api/runs/{run_id}/samples", format="csv")
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
        assert [r["id"] for r in rows] == [s["id"] for s in detail["samples"]]
        for row, s in zip(rows, detail["samples"]):
            assert row["error"] == s.get("error", "")
            ref = s.get("reference")
            assert row["reference"] == ("" if ref is None else ref if isinstance(ref, str)
                                        else json.dumps(ref, ensure_ascii=False, sort_keys=True))
            for m, v in s["scores"].items():
                assert float(row[m]) == v


    @pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # SQLite's own locking
    @pytest.mark.gen_test(timeout=60)
    async def test_reads_wait_for_a_committing_writer(self, http_client, base_url, backend, store_root):
        """A Themis writer holds SQLite's exclusive lock while it commits: a run's details, a
        download or a page of pairs asked for at that moment wait for the commit instead of
        answering 503."""
        import sqlite3
        ids = self.ids(backend)
        run_id = ids["flaky"]
        _, detail = await get(http_client, base_url, f"/api/runs/{run_id}")
        loop = asyncio.get_running_loop()
        for path, params in ((f"/api/runs/{ids['alpha']}", {}),
                             (f"/api/runs/{run_id}/samples", {"format": "jsonl"}),
                             ("/api/compare/samples", {"run_a": ids["alpha"], "run_b": run_id,
                                                       "metric": "builtin/exact_match", "kind": "by_delta"})):
            writer = sqlite3.connect(store_root, isolation_level=None, timeout=30)
            writer.execute("BEGIN EXCLUSIVE")
            released = asyncio.Event()

            def release(w=writer):
                w.rollback()
                w.close()
                released.set()

            loop.call_later(0.6, release)
            resp, raw = await get(http_client, base_url, path, **params)
            assert released.is_set(), "the request was answered while the writer held the lock"
            assert resp.code == 200, raw
            if not params:
                assert raw["samples"]
            elif "format" in params:
                assert [json.loads(x) for x in raw.decode("utf-8").splitlines()] == detail["samples"]
            else:
                assert raw["items"]


class TestApiKeys:
    KEY = "samples-key-0001"

    @pytest.fixture
    def app_settings(self):
        return {"poll_interval": 0.05, "api_keys": [self.KEY]}

    @pytest.mark.gen_test(timeout=60)
    async def test_both_endpoints_need_the_key(self, http_client, base_url):
        paths = ["/api/compare/samples?run_a=fake-direct&run_b=fake-swapped&metric=ExactMatch&kind=a_only",
                 "/api/runs/fake-direct/samples?format=csv"]
        for path in paths:
            for headers, status in (({}, 401), ({"X-API-Key": "wrong-key-9999"}, 403),
                                    ({"X-API-Key": self.KEY}, 200), ({"Authorization": f"Bearer {self.KEY}"}, 200)):
                resp = await http_client.fetch(base_url + path, headers=headers, raise_error=False)
                assert resp.code == status, (path, headers)
                if status != 200:
                    assert resp.headers["Content-Type"].startswith("application/problem+json")
        # a key in the query string is not accepted for downloads (it would land in logs)
        resp = await http_client.fetch(base_url + paths[1] + "&token=" + self.KEY, raise_error=False)
        assert resp.code == 401
