"""Comparisons whose client went away are cancelled; max_work caps the whole job."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from themis_daemon.demo.writer import write_completed_run
from themis_daemon.stats import CompareError, compare_runs

METRICS = ("BLEU", "Perplexity", "BERTScore")  # continuous scores: the slow bootstrap path
HEAVY = {"run_ids": ["big-0", "big-1", "big-2"], "statistical_test": "bootstrap", "n_resamples": 100_000}


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("big"))
    for i in range(3):
        write_completed_run(root, f"big-{i}", 4000, seed=i, metrics=METRICS)
    return root


@pytest.fixture
def store_root(big_store):
    return big_store


@pytest.fixture
def app_settings():
    # 9 rows x 4,000 pairs x 100,000 resamples: seconds per row, tens of seconds per job.
    return {"poll_interval": 0.2, "compare": {"max_work": 10 ** 12}}


async def wait_for(pred, timeout=60.0, what=""):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def post_and_leave(base_url, body):
    host, port = base_url.rsplit("/", 1)[-1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    data = json.dumps(body).encode()
    writer.write(b"POST /api/compare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    await writer.drain()
    return writer


@pytest.mark.gen_test(timeout=180)
async def test_compare_of_a_departed_client_is_cancelled(http_client, base_url, daemon):
    writers = [await post_and_leave(base_url, HEAVY) for _ in range(2)]
    await wait_for(lambda: daemon.jobs["compare_running"] == 2, what="both comparisons to start")
    started = time.monotonic()
    for w in writers:
        w.close()
    await wait_for(lambda: daemon.jobs["compare_cancelled"] == 2 and daemon.jobs["compare_running"] == 0,
                   what="both comparisons to be cancelled")
    # Both worker threads are free again: a run detail (rendered on them) is answered at once.
    resp = await http_client.fetch(base_url + "/api/runs/big-0?samples_limit=5", request_timeout=60)
    assert resp.code == 200
    assert time.monotonic() - started < 60
    metrics = (await http_client.fetch(base_url + "/metrics")).body.decode()
    assert "themis_compare_cancelled_total 2.0" in metrics
    assert "themis_compare_running 0.0" in metrics


@pytest.mark.gen_test(timeout=180)
async def test_compare_of_a_client_that_stays_is_answered(http_client, base_url, daemon):
    body = dict(HEAVY, n_resamples=1000)
    resp = await http_client.fetch(base_url + "/api/compare", method="POST", body=json.dumps(body),
                                   request_timeout=120)
    result = json.loads(resp.body)
    assert len(result["pairwise_results"]) == 9
    assert daemon.jobs["compare_cancelled"] == 0 and daemon.jobs["compare_running"] == 0


def _runs(k, n, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"r{i}", {"m": {j: [float(x)] for j, x in enumerate(rng.normal(size=n))}}) for i in range(k)]


def test_max_work_counts_every_row_of_the_job():
    runs = _runs(3, 100)  # 3 pairs, one metric: 3 rows of 100 x 1,000
    row = 100 * 1000
    with pytest.raises(CompareError) as err:
        compare_runs(runs, test="bootstrap", n_resamples=1000, max_work=3 * row - 1)
    assert err.value.status == 400 and "in total" in err.value.detail
    assert err.value.extra["work"] == 3 * row and err.value.extra["rows"] == 3
    assert len(compare_runs(runs, test="bootstrap", n_resamples=1000, max_work=3 * row)["pairwise_results"]) == 3


def test_max_work_counts_the_exact_wilcoxon_of_every_row():
    runs = _runs(4, 200, seed=3)  # 6 rows, each an exact signed-rank distribution over 200 differences
    from themis_daemon.stats.paired_tests import wilcoxon_work

    per_row = 200 + wilcoxon_work(200)
    with pytest.raises(CompareError) as err:
        compare_runs(runs, test="wilcoxon", max_work=6 * per_row - 1)
    assert err.value.extra["work"] == 6 * per_row
    out = compare_runs(runs, test="wilcoxon", max_work=6 * per_row)
    assert {r["p_value_method"] for r in out["pairwise_results"]} == {"exact_signed_rank"}


def test_a_cancelled_job_stops_between_batches():
    from themis_daemon.stats import Cancelled

    runs = _runs(2, 4000)
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        compare_runs(runs, test="bootstrap", n_resamples=100_000, cancelled=cancelled)
    assert len(calls) == 4
