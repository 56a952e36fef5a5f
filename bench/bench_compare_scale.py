"""Warm `POST /api/compare` timings, end to end over HTTP, on a realistic Themis 1.x store.

    python3 ../shared/tools/make_scale_store.py STORE --runs 2 --samples 10000 --metrics 3 --report none
    python bench/bench_compare_scale.py STORE

Every test over both runs and all three metrics (3 rows, about 9,800 pairs each), median of 5
after one warm-up; one daemon process on 127.0.0.1; it stops itself at the end.
"""
import os
import json, re, statistics, subprocess, sys, time, urllib.request
p = subprocess.Popen([sys.executable, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", "0",
                      "--storage", sys.argv[1], "--log-level", "warning"], stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
port = None
deadline = time.time() + 120
while time.time() < deadline and port is None:
    try:
        out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
        m = re.search(r"127\.0\.0\.1:(\d+).*pid=%d," % p.pid, out)
        port = int(m.group(1)) if m else None
    except Exception:
        pass
    time.sleep(0.2)
def call(path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET",
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=300).read())
assert port, "the daemon did not start listening"
for _ in range(600):  # bounded: 2 minutes
    try:
        if call("/readyz")["status"] == "ready":
            break
    except Exception:
        pass
    time.sleep(0.2)
runs = [r["run_id"] for r in call("/api/runs")]
for test in ("bootstrap", "permutation", "t_test", "wilcoxon"):
    body = json.dumps({"run_ids": runs, "statistical_test": test}).encode()
    call("/api/compare", body)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); r = call("/api/compare", body); ts.append(time.perf_counter() - t)
    print(f"{test:12s} median {statistics.median(ts)*1000:7.1f} ms  rows {len(r['pairwise_results'])}  n {r['pairwise_results'][0]['n']}")
p.terminate(); p.wait(30)
