"""Warm timings of the samples endpoints over HTTP on a realistic Themis 1.x store.

    python3 ../shared/tools/make_scale_store.py STORE --runs 2 --samples 10000 --metrics 3 --report none
    python bench/bench_samples.py STORE

GET /api/compare/samples (first page of 50, every kind of the first 0/1 metric and by_delta) and
the full CSV / JSONL download of one run (bytes and time), median of 5 after one warm-up; one
daemon process on 127.0.0.1; it stops itself at the end.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

p = subprocess.Popen([sys.executable, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", "0",
                      "--storage", sys.argv[1], "--log-level", "warning"], stderr=subprocess.PIPE, text=True,
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    port = None
    deadline = time.time() + 120
    while time.time() < deadline and port is None:
        out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        m = re.search(r"127\.0\.0\.1:(\d+).*pid=%d," % p.pid, out)
        port = int(m.group(1)) if m else None
        time.sleep(0.2)
    assert port, "the daemon did not start listening"

    def fetch(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=300) as resp:
            return resp.read()

    for _ in range(600):  # bounded: 2 minutes
        try:
            if json.loads(fetch("/readyz"))["status"] == "ready":
                break
        except Exception:
            pass
        time.sleep(0.2)
    runs = json.loads(fetch("/api/runs"))
    a, b = runs[0]["run_id"], runs[1]["run_id"]
    metric = sorted(runs[0]["metrics"])[0]

    def timed(path):
        fetch(path)
        ts, size = [], 0
        for _ in range(5):
            t = time.perf_counter()
            size = len(fetch(path))
            ts.append(time.perf_counter() - t)
        return statistics.median(ts), size

    for kind in ("a_only", "b_only", "both", "neither", "by_delta"):
        q = urllib.parse.urlencode({"run_a": a, "run_b": b, "metric": metric, "kind": kind, "limit": 50})
        t, size = timed("/api/compare/samples?" + q)
        body = json.loads(fetch("/api/compare/samples?" + q))
        print(f"compare/samples {kind:9s} median {t * 1000:7.1f} ms  total {body['total']:6d}  n {body['n']}")
    for fmt in ("csv", "jsonl"):
        t, size = timed(f"/api/runs/{urllib.parse.quote(a)}/samples?format={fmt}")
        print(f"download {fmt:5s} median {t * 1000:7.1f} ms  {size / 1e6:6.1f} MB  ({runs[0]['num_samples']} samples)")
finally:
    p.terminate()
    p.wait(30)
