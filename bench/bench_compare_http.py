"""End-to-end benchmark of POST /api/compare over HTTP on loopback (a report, not a test).

Builds (or reuses) a store with 2 runs x 10,000 samples and 5 runs x 1,000 samples written in
the Themis format, starts one daemon process, warms its caches with one request per body, then
times each comparison (median of --repeat) and the latency of GET / while a large comparison
runs in the daemon's statistics process.

    python bench/bench_compare_http.py [--store DIR] [--repeat 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from _common import DaemonProcess, verdict  # noqa: E402

from themis_daemon.demo.writer import write_completed_run  # noqa: E402


def build_store(root: str) -> None:
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return
    print(f"[bench] building store in {root}", flush=True)
    for i, acc in enumerate((0.80, 0.78)):
        write_completed_run(root, f"big-{i}", 10_000, metrics=("ExactMatch", "BLEU"), accuracy=acc, seed=i)
    for i in range(5):
        write_completed_run(root, f"mid-{i}", 1_000, metrics=("ExactMatch", "BLEU", "ROUGE"),
                            accuracy=0.6 + 0.05 * i, seed=100 + i)
    open(marker, "w").close()


def request(port: int, method: str, path: str, body=None, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, payload, time.perf_counter() - t0
    finally:
        conn.close()


def timed(port: int, body, repeat: int):
    status, payload, _ = request(port, "POST", "/api/compare", body)  # warm caches
    if status != 200:
        raise SystemExit(f"compare failed: {status} {payload[:300]!r}")
    times = []
    for _ in range(repeat):
        status, _, dt = request(port, "POST", "/api/compare", body)
        times.append(dt)
    return statistics.median(times)


def health_during_compare(port: int, body):
    latencies = []
    done = threading.Event()

    def big():
        request(port, "POST", "/api/compare", body, timeout=300)
        done.set()

    t = threading.Thread(target=big)
    t.start()
    time.sleep(0.05)
    deadline = time.monotonic() + 120
    while not done.is_set() and time.monotonic() < deadline:
        _, _, dt = request(port, "GET", "/")
        latencies.append(dt)
        time.sleep(0.01)
    t.join(130)
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=os.path.join(HERE, "out", "compare-store"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    build_store(args.store)
    daemon = DaemonProcess(args.store, env={"THEMIS_LOGGING_ACCESS_LOG": "false"})
    try:
        port = daemon.start(60)
        two = ["big-0", "big-1"]
        five = [f"mid-{i}" for i in range(5)]
        cases = [
            ("2 x 10k, bootstrap, continuous (BLEU)", {"run_ids": two, "metrics": ["BLEU"], "statistical_test": "bootstrap"}, 1.0),
            ("2 x 10k, bootstrap, 0/1 (ExactMatch)", {"run_ids": two, "metrics": ["ExactMatch"], "statistical_test": "bootstrap"}, 0.05),
            ("2 x 10k, permutation (BLEU)", {"run_ids": two, "metrics": ["BLEU"], "statistical_test": "permutation"}, 0.5),
            ("2 x 10k, t_test (BLEU)", {"run_ids": two, "metrics": ["BLEU"], "statistical_test": "t_test"}, 0.02),
            ("5 x 3 metrics x 1k, bootstrap", {"run_ids": five, "statistical_test": "bootstrap"}, 1.0),
        ]
        rows = []
        for name, body, target in cases:
            t = timed(port, body, args.repeat)
            rows.append((name, f"< {target * 1000:.0f} ms", f"{t * 1000:.1f} ms", t < target))
        lat = health_during_compare(port, {"run_ids": two, "metrics": ["BLEU"], "statistical_test": "bootstrap",
                                           "n_resamples": 100_000})
        worst = max(lat) if lat else float("nan")
        rows.append(("GET / while a 2 x 10k, B=100k bootstrap runs", "< 50 ms",
                     f"max {worst * 1000:.1f} ms over {len(lat)} probes", bool(lat) and worst < 0.05))
    finally:
        daemon.stop()
    width = max(len(r[0]) for r in rows)
    print(f"\n{'case'.ljust(width)} | target    | measured (median of {args.repeat}, warm) | pass")
    for name, target, measured, ok in rows:
        print(f"{name.ljust(width)} | {target:9} | {measured:32} | {verdict(ok)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
