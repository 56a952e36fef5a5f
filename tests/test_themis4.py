"""Themis 4 stores written by the real themis-eval 4.0.2, served over HTTP, against its oracle.

`tests/data/themis-v4/expected.json` holds, per backend and run, what Themis' own event-based
APIs say (`themis.from_events`, `reader_*`, `io_from_events`, paired comparisons from events).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import pytest

from conftest import DATA

V4 = os.path.join(DATA, "themis-v4")
with open(os.path.join(V4, "expected.json"), encoding="utf-8") as _fh:
    EXPECTED = json.load(_fh)
BACKENDS = ("sqlite", "jsonl", "postgres")
STATUS = {"pending": "pending", "running": "in_progress", "completed": "completed",
          "partial_failure": "completed", "failed": "failed"}


def manifest(backend):
    with open(os.path.join(V4, backend, "manifest.json"), encoding="utf-8") as fh:
        return {name: run["run_id"] for name, run in json.load(fh)["runs"].items()}


def file_digest(path):
    h = hashlib.sha256()
    for dirpath, _dirs, files in sorted(os.walk(path)) if os.path.isdir(path) else [("", [], [path])]:
        for name in sorted(files):
            full = os.path.join(dirpath, name)
            with open(full, "rb") as fh:
                h.update(full.encode() + fh.read())
    return h.hexdigest()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def store_root(backend, tmp_path, request):
    if backend == "sqlite":
        dst = tmp_path / "themis.sqlite3"
        shutil.copyfile(os.path.join(V4, "sqlite", "themis.sqlite3"), dst)
        return str(dst)
    if backend == "jsonl":
        dst = tmp_path / "store"
        shutil.copytree(os.path.join(V4, "jsonl", "store"), dst)
        return str(dst)
    return request.getfixturevalue("pg_fixture_db")


async def get(http_client, base_url, path, **kw):
    kw.setdefault("raise_error", False)
    resp = await http_client.fetch(base_url + path, **kw)
    return resp, (json.loads(resp.body) if resp.body else None)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.gen_test(timeout=60)
async def test_every_fixture_run_matches_the_event_oracle(http_client, base_url, backend):
    runs = EXPECTED["backends"][backend]["runs"]
    ids = manifest(backend)
    resp, listing = await get(http_client, base_url, "/api/runs")
    assert resp.code == 200
    by_id = {r["run_id"]: r for r in listing}
    assert set(by_id) == set(ids.values())
    for name, exp in runs.items():
        run = by_id[ids[name]]
        fold = exp["themis.from_events"]
        progress = exp["reader_progress_from_events"]
        assert run["format"] == "themis-v4" and run["source"], name
        assert run["native_status"] == exp["themis.get_execution_state"]["status"] == fold["status"], name
        assert run["status"] == STATUS[fold["status"]], name
        assert run["experiment_id"] == "arith-24"
        gen = exp["identity"]["provider_metadata.generator"]
        assert run["model"] == (gen.get("model_id") if gen else exp["identity"]["generator_component"]), name
        assert run["expected_samples"] == progress["expected_cases"] == 24
        assert run["generated"] == progress["cases_with_generation_completed"], name
        assert run["evaluated"] == progress["cases_with_every_metric_attempted"], name
        assert set(run["metrics"]) == set(fold["metric_means"]), name
        for metric, mean in fold["metric_means"].items():
            assert close(run["metrics"][metric], mean), (name, metric)
        if name == "pending":
            assert run["progress"] is None and run["created_at"] is None and run["completed_at"] is None
        else:
            assert run["created_at"] == exp["events"]["first_occurred_at"], name
            assert run["updated_at"] == exp["events"]["last_occurred_at"], name
        if run["status"] == "completed":
            assert run["progress"] == 1.0
        final = [t for t in exp["events"]["run_level_sequence"] if t in ("run_completed", "run_failed")]
        assert (run["completed_at"] is None) == (not final), name
        if fold["status"] == "failed":
            assert run["error_message"] == exp["events"]["run_failed_error_messages"][-1]
        # Themis' failed_cases counts cases with a failure record, as the daemon's `failed` does
        assert run["failed"] == fold["progress"]["failed_cases"], name


@pytest.mark.gen_test(timeout=60)
async def test_per_case_scores_and_io_match_the_oracle(http_client, base_url, backend):
    ids = manifest(backend)
    for name, exp in EXPECTED["backends"][backend]["per_case"].items():
        resp, detail = await get(http_client, base_url, f"/api/runs/{ids[name]}?include_pending=true")
        assert resp.code == 200, name
        samples = {s["id"]: s for s in detail["samples"]}
        oracle = exp["reader_scores_from_events"]
        io = exp["io_from_events"]
        for case_id, scores in oracle.items():
            got = samples[case_id]
            for metric, value in scores.items():
                if isinstance(value, dict):
                    assert metric in got["errors"] and metric not in got["scores"], (name, case_id, metric)
                else:
                    assert close(got["scores"][metric], value), (name, case_id, metric)
        for case_id, want in io.items():
            if not want["candidate_outputs"] and not want["generation_failures"] and want["reduced_output"] is None:
                assert case_id not in samples  # a case nothing has happened to yet
                continue
            got = samples[case_id]
            if want["prompt_user_message"] is not None:
                assert got["prompt"] == want["prompt_user_message"], (name, case_id)
            else:  # no generation recorded a conversation: the prompt spec rendered over the input
                assert got["prompt"].startswith("Instructions:\n") and "\n\nInput:\n{" in got["prompt"]
            expected_response = want["reduced_output"] if want["reduced_output"] is not None else \
                (want["candidate_outputs"][0] if want["candidate_outputs"] else "")
            assert got["response"] == expected_response, (name, case_id)
            assert got["reference"] == want["reference"], (name, case_id)
            if len(want["candidate_outputs"]) > 1:
                assert got["candidates"] == want["candidate_outputs"]
            if want["generation_failures"]:
                assert got["error"] == "; ".join(want["generation_failures"].values())
        scored = [s for s in detail["samples"] if not s["pending"]]
        assert detail["num_samples"] == sum(1 for s in oracle.values() if any(not isinstance(v, dict) for v in s.values()))
        assert len(scored) <= detail["samples_total"]


@pytest.mark.gen_test(timeout=60)
async def test_k3_run_lists_every_candidate(http_client, base_url, backend):
    run_id = manifest(backend)["alpha_k3"]
    _, detail = await get(http_client, base_url, f"/api/runs/{run_id}")
    assert len(detail["samples"]) == 24
    assert all(len(s["candidates"]) == 3 for s in detail["samples"])


@pytest.mark.gen_test(timeout=60)
async def test_paired_comparisons_match_themis(http_client, base_url, backend):
    ids = manifest(backend)
    by_id = {v: k for k, v in ids.items()}
    oracle = EXPECTED["backends"][backend]["themis.StatsEngine.paired_compare from events (baseline->candidate)"]
    for label, exp in oracle.items():
        base, cand = exp["baseline_run_id"], exp["candidate_run_id"]
        body = json.dumps({"run_ids": [base, cand], "statistical_test": "bootstrap", "n_resamples": 2000})
        resp, result = await get(http_client, base_url, "/api/compare", method="POST", body=body)
        assert resp.code == 200, (label, result)
        rows = {r["metric"]: r for r in result["pairwise_results"]}
        assert set(rows) == set(exp["metrics"]), label
        for metric, want in exp["metrics"].items():
            row = rows[metric]
            assert row["n"] == want["pairs"], (label, metric)
            # the daemon's delta is run_a - run_b; Themis' mean_delta is candidate - baseline
            assert math.isclose(-row["delta"], want["mean_delta"], abs_tol=1e-9), (label, metric)
            if metric == "builtin/exact_match":
                assert (row["discordant_a_only"], row["discordant_b_only"]) == (want["losses"], want["wins"])
        assert by_id[base] and by_id[cand]


@pytest.mark.gen_test(timeout=60)
async def test_run_id_prefix(http_client, base_url, backend):
    ids = manifest(backend)
    full = ids["alpha"]
    resp, detail = await get(http_client, base_url, f"/api/runs/{full[:8]}")
    assert resp.code == 200 and detail["run_id"] == full
    resp, body = await get(http_client, base_url, f"/api/runs/{full[:7]}")
    assert resp.code == 404  # too short to be a prefix
    # an ambiguous prefix names how many runs it matches
    first = sorted(ids.values())
    common = os.path.commonprefix(first[:2])
    if len(common) >= 8:
        resp, body = await get(http_client, base_url, f"/api/runs/{common}")
        assert resp.code == 404 and "2 runs" in body["detail"]
    # POST /api/compare names runs the same way; the answer carries the full ids
    body = json.dumps({"run_ids": [full[:10], ids["beta"][:12]], "statistical_test": "t_test"})
    resp, result = await get(http_client, base_url, "/api/compare", method="POST", body=body)
    assert resp.code == 200, result
    assert {(r["run_a"], r["run_b"]) for r in result["pairwise_results"]} == {(full, ids["beta"])}
    body = json.dumps({"run_ids": [full[:8], full]})
    resp, result = await get(http_client, base_url, "/api/compare", method="POST", body=body)
    assert resp.code == 400 and "repeated" in result["detail"], result
    if len(common) >= 8:
        body = json.dumps({"run_ids": [common, full]})
        resp, result = await get(http_client, base_url, "/api/compare", method="POST", body=body)
        assert resp.code == 404 and "2 runs" in result["detail"]


@pytest.mark.gen_test(timeout=60)
async def test_pending_status_filter(http_client, base_url, backend):
    resp, body = await get(http_client, base_url, "/api/runs?status=pending")
    assert resp.code == 200
    assert [r["run_id"] for r in body] == [manifest(backend)["pending"]]


@pytest.mark.gen_test(timeout=60)
async def test_serving_never_writes_to_the_store(http_client, base_url, backend, store_root):
    tables = ("run_snapshots", "run_events", "run_projections", "stage_cache", "run_store_meta")

    def pg_counts():
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in tables)
        return store_root.server.psql(store_root.dbname, sql)

    before = pg_counts() if backend == "postgres" else file_digest(store_root)
    ids = manifest(backend)
    for run_id in ids.values():
        resp, _ = await get(http_client, base_url, f"/api/runs/{run_id}?include_pending=true")
        assert resp.code == 200
    await get(http_client, base_url, "/api/compare", method="POST",
              body=json.dumps({"run_ids": [ids["alpha"], ids["beta"]]}))
    if backend == "postgres":
        assert pg_counts() == before
    else:
        assert file_digest(store_root) == before
        assert not os.path.exists(store_root + "-journal")
