"""POST /api/compare over HTTP on the real stores, against the original server's answers."""

from __future__ import annotations

import asyncio
import json
import math
import os

import pytest
import scipy.stats

from conftest import PLAIN_EXPECTED, load_expected

INDEX = load_expected(PLAIN_EXPECTED, "index.json")
POSTS = [c for c in INDEX["captures"] if c["method"] == "POST"]
def _repeats(file):
    ids = load_expected(PLAIN_EXPECTED, file)["request"]["json"].get("run_ids") or []
    return len(set(ids)) != len(ids)


# The original compared a run with itself when its id was repeated; the daemon refuses repeated
# ids (the contract says distinct ids): that case is checked separately below.
DETERMINISTIC_OK = [c["file"] for c in POSTS if c["status_code"] == 200 and c["deterministic"]
                    and load_expected(PLAIN_EXPECTED, c["file"])["request"]["json"].get("statistical_test") in ("t_test", "none")
                    and not _repeats(c["file"])]
REPEATED_IDS = [c["file"] for c in POSTS if c["status_code"] == 200 and _repeats(c["file"])]


async def post(http_client, base_url, body, raw=None):
    resp = await http_client.fetch(base_url + "/api/compare", method="POST", raise_error=False,
                                   body=raw if raw is not None else json.dumps(body),
                                   headers={"Content-Type": "application/json"})
    return resp, json.loads(resp.body)


def aligned(daemon, run_a, run_b, metric):
    """Per-sample means on the common sample ids, as the engine aligns them."""
    def per_sample(run_id):
        vals = daemon.store.scores(run_id)[metric]
        return {k: sum(v) / len(v) for k, v in vals.items() if v and all(math.isfinite(x) for x in v)}
    a, b = per_sample(run_a), per_sample(run_b)
    common = sorted(set(a) & set(b), key=lambda k: (type(k).__name__, k))
    return [a[k] for k in common], [b[k] for k in common]


@pytest.mark.gen_test
@pytest.mark.parametrize("name", DETERMINISTIC_OK)
async def test_matches_upstream_means_deltas_and_shapes(http_client, base_url, daemon, name):
    cap = load_expected(PLAIN_EXPECTED, name)
    theirs = cap["response"]["body"]
    resp, ours = await post(http_client, base_url, cap["request"]["json"])
    assert resp.code == 200, ours
    for key in ("run_ids", "metrics", "best_run_per_metric", "overall_best_run", "pairwise_results",
                "win_loss_summary", "metadata"):
        assert key in ours
    assert ours["run_ids"] == theirs["run_ids"] and ours["metrics"] == theirs["metrics"]
    assert len(ours["pairwise_results"]) == len(theirs["pairwise_results"])
    test = cap["request"]["json"]["statistical_test"]
    for a, b in zip(ours["pairwise_results"], theirs["pairwise_results"]):
        assert (a["metric"], a["run_a"], a["run_b"]) == (b["metric"], b["run_a"], b["run_b"])
        for key in ("run_a_mean", "run_b_mean", "delta"):
            assert a[key] == pytest.approx(b[key], abs=1e-12), key
        if b["run_b_mean"] > 0:
            assert a["delta_percent"] == pytest.approx(b["delta_percent"])
        for key in set(b) - {"p_value", "corrected_p_value", "winner", "significant", "corrected_significant"}:
            assert key in a
        if test == "none":
            assert (a["winner"], a["significant"], a["p_value"]) == ("tie", False, None)
            assert a["corrected_p_value"] is None
        else:
            xa, xb = aligned(daemon, a["run_a"], a["run_b"], a["metric"])
            assert a["n"] == len(xa)
            if len(set(x - y for x, y in zip(xa, xb))) > 1:
                exact = scipy.stats.ttest_rel(xa, xb).pvalue
                assert a["p_value"] == pytest.approx(exact, rel=1e-9)
            if b["winner"] != "tie":  # what the original found significant, we find too
                expected = b["winner"]
                if a["metric"] == "ResponseLength":  # lower is better by default; the original ignored direction
                    expected = a["run_b"] if expected == a["run_a"] else a["run_a"]
                assert a["winner"] == expected
            if a["significant"]:
                assert a["corrected_p_value"] < cap["request"]["json"].get("alpha", 0.05)
                better = a["run_a"] if a["delta"] > 0 else a["run_b"]
                if a["metric"] == "ResponseLength":  # lower is better by default
                    better = a["run_b"] if a["delta"] > 0 else a["run_a"]
                assert a["winner"] == better
            else:
                assert a["winner"] == "tie"


@pytest.mark.gen_test
async def test_clear_winner_is_significant(http_client, base_url):
    resp, body = await post(http_client, base_url, {"run_ids": ["fake-direct", "fake-terse"],
                                                    "metrics": ["ExactMatch"], "statistical_test": "permutation"})
    row = body["pairwise_results"][0]
    assert row["significant"] and row["winner"] == "fake-direct"
    assert body["overall_best_run"] == "fake-direct"
    assert row["n"] == 20 and row["ci_low"] > 0
    # a 0/1 metric's interval is the one matching the exact sign test (issue 13; was Newcombe's),
    # inside [-1, 1] (a t-interval would reach past 1 here)
    assert row["ci_method"] == "exact_conditional" and row["ci_matches_test"] is True
    assert row["ci_high"] <= 1.0


@pytest.mark.gen_test
@pytest.mark.parametrize("test", ["bootstrap", "permutation", "t_test", "wilcoxon", "auto", "none"])
async def test_identical_requests_give_identical_bodies(http_client, base_url, test):
    req = {"run_ids": ["fake-direct", "fake-swapped", "fake-terse"], "statistical_test": test}
    r1, _ = await post(http_client, base_url, req)
    r2, _ = await post(http_client, base_url, req)
    assert r1.code == 200 and r1.body == r2.body
    assert b"NaN" not in r1.body and b"Infinity" not in r1.body


@pytest.mark.gen_test
async def test_seed_and_options_are_reported(http_client, base_url):
    req = {"run_ids": ["fake-direct", "fake-swapped"], "statistical_test": "bootstrap", "seed": 7,
           "n_resamples": 2000, "correction": "bh", "lower_is_better": []}
    resp, body = await post(http_client, base_url, req)
    assert resp.code == 200
    md = body["metadata"]
    assert (md["seed"], md["n_resamples"], md["correction"]) == (7, 2000, "bh")
    assert body["best_run_per_metric"]["ResponseLength"] == "fake-swapped"  # higher wins when not lower_is_better


@pytest.mark.gen_test
async def test_mcnemar_on_binary_and_continuous(http_client, base_url):
    resp, body = await post(http_client, base_url, {"run_ids": ["fake-direct", "fake-terse"], "statistical_test": "mcnemar",
                                                    "metrics": ["ExactMatch"]})
    assert resp.code == 200 and body["pairwise_results"][0]["test"] == "mcnemar"
    resp, body = await post(http_client, base_url, {"run_ids": ["fake-direct", "fake-terse"], "statistical_test": "mcnemar",
                                                    "metrics": ["ResponseLength"]})
    assert resp.code == 400 and "ResponseLength" in body["detail"]


ERRORS = [c for c in POSTS if c["status_code"] in (400, 404, 422)]


@pytest.mark.gen_test
@pytest.mark.parametrize("name", [c["file"] for c in ERRORS])
async def test_error_statuses_and_messages_match_upstream(http_client, base_url, name):
    cap = load_expected(PLAIN_EXPECTED, name)
    resp, body = await post(http_client, base_url, cap["request"]["json"])
    if cap["request"]["json"].get("statistical_test") == "wilcoxon" and cap["response"]["status_code"] == 400:
        # The original knew four tests; wilcoxon is one of ours.
        assert resp.code == 200 and body["pairwise_results"][0]["test"] == "wilcoxon"
        return
    assert resp.code == cap["response"]["status_code"]
    theirs = cap["response"]["body"]
    if resp.code in (400, 404):
        assert body["detail"] == theirs["detail"]
    else:
        assert body["errors"] and all("pointer" in e for e in body["errors"])


@pytest.mark.gen_test
async def test_original_500s_are_now_client_errors(http_client, base_url):
    cap = load_expected(PLAIN_EXPECTED, "041-error-compare-unknown-metric.json")
    resp, body = await post(http_client, base_url, cap["request"]["json"])
    assert resp.code == 400 and "fake-direct" in body["detail"] or "metric" in body["detail"].lower()
    cap = load_expected(PLAIN_EXPECTED, "042-error-compare-empty-metrics-list.json")
    resp, body = await post(http_client, base_url, cap["request"]["json"])
    assert resp.code == 422 and body["errors"][0]["pointer"] == "/metrics"


@pytest.mark.gen_test
@pytest.mark.parametrize("body,status,needle", [
    (None, 400, "Invalid JSON"),
    ({"run_ids": ["fake-direct", "fake-terse"], "alpha": 1.5}, 422, "/alpha"),
    ({"run_ids": ["fake-direct", "fake-terse"], "bogus": 1}, 422, "/bogus"),
    ({"run_ids": ["fake-direct", "fake-terse"], "statistical_test": "T_TEST"}, 400, "Invalid statistical test: T_TEST"),
    ({"run_ids": ["fake-direct", "fake-terse"], "n_resamples": 10 ** 9}, 422, "/n_resamples"),
    ({"run_ids": ["fake-direct", "fake-terse"], "correction": "magic"}, 422, "/correction"),
])
async def test_bad_requests(http_client, base_url, body, status, needle):
    resp, out = await post(http_client, base_url, body, raw="{not json" if body is None else None)
    assert resp.code == status
    assert needle in json.dumps(out)


@pytest.mark.gen_test
async def test_no_overlap_is_400_with_counts(http_client, base_url, store_root):
    # A run whose sample ids share nothing with the others.
    runs = os.path.join(store_root, "experiments", "default", "runs")
    import shutil
    shutil.copytree(os.path.join(runs, "fake-direct"), os.path.join(runs, "disjoint"))
    path = os.path.join(runs, "disjoint", "evaluations", "default", "evaluation.jsonl")
    lines = open(path).read().splitlines()
    with open(path, "w") as fh:
        for ln in lines:
            obj = json.loads(ln)
            if "evaluation" in obj:
                obj["evaluation"]["sample_id"] = "other-" + obj["evaluation"]["sample_id"]
            fh.write(json.dumps(obj) + "\n")
    meta_path = os.path.join(runs, "disjoint", "metadata.json")
    meta = json.load(open(meta_path))
    meta["run_id"] = "disjoint"
    json.dump(meta, open(meta_path, "w"), indent=2)
    await asyncio.sleep(0.2)
    resp, body = await post(http_client, base_url, {"run_ids": ["fake-direct", "disjoint"], "statistical_test": "t_test"})
    assert resp.code == 400 and "20" in body["detail"]


@pytest.mark.gen_test(timeout=60)
async def test_health_answers_while_a_comparison_runs(http_client, base_url):
    req = {"run_ids": ["fake-direct", "fake-swapped", "fake-terse", "fake-failed", "fake-live"],
           "statistical_test": "bootstrap", "n_resamples": 100000}
    compare = asyncio.ensure_future(post(http_client, base_url, req))
    await asyncio.sleep(0.05)
    health = await http_client.fetch(base_url + "/")
    assert health.code == 200
    resp, body = await compare
    assert resp.code == 200 and len(body["pairwise_results"]) == 30


@pytest.mark.gen_test
@pytest.mark.parametrize("name", REPEATED_IDS)
async def test_upstream_repeated_run_ids_are_now_refused(http_client, base_url, name):
    resp, body = await post(http_client, base_url, load_expected(PLAIN_EXPECTED, name)["request"]["json"])
    assert resp.code == 400 and "repeated" in body["detail"]


@pytest.mark.gen_test(timeout=60)
async def test_repeated_run_ids_and_too_many_runs_are_refused(http_client, base_url, daemon):
    listing = json.loads((await http_client.fetch(base_url + "/api/runs")).body)
    ids = [s["run_id"] for s in listing if s["num_samples"]][:2]
    assert len(ids) == 2
    body = json.dumps({"run_ids": ids * 50})  # what once ran 84 s and answered 40 MB
    resp = await http_client.fetch(base_url + "/api/compare", method="POST", body=body, raise_error=False)
    assert resp.code == 400 and "repeated" in json.loads(resp.body)["detail"]
    daemon.settings.compare.max_runs = 2
    three = [s["run_id"] for s in listing][:3]
    resp = await http_client.fetch(base_url + "/api/compare", method="POST",
                                   body=json.dumps({"run_ids": three}), raise_error=False)
    assert resp.code == 400 and "compare.max_runs" in json.loads(resp.body)["detail"]


@pytest.mark.gen_test
async def test_get_compare_names_the_configured_defaults(http_client, base_url, daemon):
    """Clients (the dashboard's metric marks) learn lower-is-better metrics before comparing."""
    resp = await http_client.fetch(base_url + "/api/compare")
    body = json.loads(resp.body)
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("application/json")
    conf = daemon.settings.compare
    assert body == {"default_test": conf.default_test, "correction": conf.correction, "n_resamples": conf.n_resamples,
                    "max_runs": conf.max_runs, "lower_is_better": ["ResponseLength"]}
    daemon.settings.compare.lower_is_better = ["ExactMatch", "ResponseLength"]  # as after a reload
    body = json.loads((await http_client.fetch(base_url + "/api/compare")).body)
    assert body["lower_is_better"] == ["ExactMatch", "ResponseLength"]
