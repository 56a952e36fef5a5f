#!/usr/bin/env python
"""End-to-end REST benchmark of themis-daemon on a big store (a report, not a test).

    python bench/bench_rest.py [--store DIR] [--runs 200] [--samples 1000]
        [--big-run-samples 10000] [--load wrk|python|auto] [--duration 10] [--quick]

1. Builds (or reuses) a store of RUNS x SAMPLES runs (3 metrics, gzip) with bench/make_store.py,
   plus one extra run of BIG samples (``big-10k`` for 10,000). Default location
   bench/out/store-RUNSxSAMPLES (git-ignored). ``--quick``: 20 x 1000 and a 2,000-sample big run.
2. Starts ``python -m themis_daemon serve --host 127.0.0.1 --port 0 --storage STORE
   --poll-interval 1`` and measures the cold start (process start until the first complete
   ``GET /api/runs`` listing every run), probing ``GET /`` during the first scan.
3. Warm ``GET /api/runs`` throughput and p99 latency with 32 connections (wrk, or a Python
   asyncio keep-alive load generator).
4. ``GET /api/runs/<big run>``: cold (first request for it) and warm (median of 5), size.
5. VmRSS of the daemon after all of the above.
6. Prints metric | target | measured | pass/fail. Exit status is 0 even when targets are missed.

Only 127.0.0.1 is used; every loop has a deadline and the daemon is killed in a finally block.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from _common import HOST, DaemonProcess, fmt, log, print_misses, print_table, verdict  # noqa: E402

CONNECTIONS = 32
MB = 1024 * 1024

TARGETS = {
    "list_rps": 2000.0,  # requests/s, 32 connections
    "list_p99_ms": 50.0,
    "cold_start_s": 10.0,
    "detail_warm_ms": 250.0,
    "detail_cold_ms": 2000.0,
    "rss_mb": 400.0,
}


# --------------------------------------------------------------------------- store

def _runs_dir(store: Path) -> Path:
    return store / "experiments" / "default" / "runs"


def _run_dirs(store: Path) -> List[str]:
    """Every run folder the daemon will serve (a folder is a run iff it holds metadata.json)."""
    out = []
    exp_root = store / "experiments"
    if not exp_root.is_dir():
        return out
    for exp in sorted(exp_root.iterdir()):
        runs = exp / "runs"
        if not runs.is_dir():
            continue
        for entry in sorted(runs.iterdir()):
            if not entry.name.startswith(".") and entry.is_dir() and (entry / "metadata.json").is_file():
                out.append(entry.name)
    return out


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def big_run_id(n: int) -> str:
    return "big-%dk" % (n // 1000) if n % 1000 == 0 else "big-%d" % n


def _write_big_run(store: Path, run_id: str, n: int, metrics: int) -> None:
    """Write the big run in a scratch root, then move it in, so a half-written run is never served."""
    from themis_daemon.demo.writer import METRIC_CATALOG, FixedStepClock, write_completed_run

    scratch = store / ".bench-tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        clock = FixedStepClock(_dt.datetime(2026, 1, 2, 9, 0, 0), _dt.timedelta(microseconds=1537))
        write_completed_run(str(scratch), run_id, n, seed=4242, clock=clock, compression="gzip",
                            metrics=METRIC_CATALOG[:metrics])
        src = _runs_dir(scratch) / run_id
        _runs_dir(store).mkdir(parents=True, exist_ok=True)
        os.rename(src, _runs_dir(store) / run_id)
        log("wrote %s (%d samples) in %.1fs" % (run_id, n, time.perf_counter() - t0))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_store(store: Path, runs: int, samples: int, big: int, *, rebuild: bool,
                 prefix: str = "bench", metrics: int = 3) -> Tuple[List[str], float]:
    """Build or reuse the store; returns (run ids on disk, build seconds, 0 when reused)."""
    t0 = time.perf_counter()
    big_id = big_run_id(big)
    ids = _run_dirs(store) if store.exists() else []
    n_bench = sum(1 for r in ids if r.startswith(prefix + "-"))
    if store.exists() and n_bench != runs:
        scratch_area = (REPO / "bench" / "out").resolve()
        if rebuild or scratch_area in store.resolve().parents:
            log("store %s has %d %s-* runs, want %d: rebuilding it" % (store, n_bench, prefix, runs))
            shutil.rmtree(store)
        else:
            sys.exit("bench_rest: %s exists with %d %s-* runs (want %d); pass --rebuild to replace it "
                     "or --store another directory" % (store, n_bench, prefix, runs))
    if not store.exists() or n_bench != runs:
        log("building %d runs x %d samples (%d metrics, gzip) in %s ..." % (runs, samples, metrics, store))
        cmd = [sys.executable, str(HERE / "make_store.py"), str(store), "--runs", str(runs),
               "--samples", str(samples), "--metrics", str(metrics), "--compression", "gzip",
               "--prefix", prefix]
        subprocess.run(cmd, check=True, timeout=3 * 3600)
    else:
        log("reusing %s (%d %s-* runs)" % (store, n_bench, prefix))
    if big_id not in _run_dirs(store):
        _write_big_run(store, big_id, big, metrics)
    ids = _run_dirs(store)
    return ids, (time.perf_counter() - t0 if ids and n_bench != runs else 0.0)


# --------------------------------------------------------------------------- HTTP helpers

def http_get(port: int, path: str, timeout: float, headers: Optional[Dict[str, str]] = None,
             conn: Optional[http.client.HTTPConnection] = None) -> Tuple[int, Dict[str, str], bytes, float]:
    """One GET; returns (status, headers, body, seconds). Opens a fresh connection unless given one."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t0
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, elapsed
    finally:
        if own:
            conn.close()


# --------------------------------------------------------------------------- cold start

def measure_cold_start(d: DaemonProcess, expected: int, timeout: float) -> Dict[str, Any]:
    """Start the daemon and time it from spawn until GET /api/runs lists all `expected` runs."""
    port = d.start(timeout)
    res: Dict[str, Any] = {"t_listen": d.t_listen}
    stop = threading.Event()
    probes: List[Dict[str, Any]] = []  # one per GET / probe

    def probe() -> None:
        deadline = time.monotonic() + timeout
        conn = None
        while not stop.is_set() and time.monotonic() < deadline:
            item: Dict[str, Any] = {}
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(HOST, port, timeout=10)
                st, _h, _b, el = http_get(port, "/", 10, conn=conn)
                item.update(ok=(st == 200), latency=el, status=st)
                rst, _h, _b, _el = http_get(port, "/readyz", 10, conn=conn)
                item["scanning"] = rst == 503  # the scan was still running after `/` answered
                if rst == 200 and "t_ready" not in res:
                    res["t_ready"] = time.perf_counter() - d.t_start
            except (OSError, http.client.HTTPException) as exc:
                item.update(ok=False, error=repr(exc), scanning=True)
                if conn is not None:
                    conn.close()
                conn = None
            probes.append(item)
            stop.wait(0.02)
        if conn is not None:
            conn.close()

    th = threading.Thread(target=probe, name="probe", daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                st, hdrs, body, el = http_get(port, "/api/runs", max(0.1, deadline - time.monotonic()))
                if st == 200:
                    n = len(json.loads(body))
                    last = "%d runs listed" % n
                    if n >= expected:
                        res["t_cold"] = time.perf_counter() - d.t_start
                        res["first_list_latency"] = el
                        res["list_bytes"] = len(body)
                        res["listed"] = n
                        break
                else:
                    last = "HTTP %d" % st
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last = repr(exc)
            if d.proc.poll() is not None:
                raise RuntimeError("daemon exited during cold start:\n" + d.log_text())
            time.sleep(0.02)
        else:
            res["error"] = "no complete /api/runs within %.0fs (last: %s)" % (timeout, last)
    finally:
        stop.set()
        th.join(15)
    during = [p for p in probes if p.get("scanning")]
    res["probes_total"] = len(probes)
    res["probes_during_scan"] = len(during)
    res["probe_failures_during_scan"] = sum(1 for p in during if not p.get("ok"))
    lat = [p["latency"] for p in during if p.get("ok")]
    res["root_max_ms_during_scan"] = max(lat) * 1000 if lat else None
    res["root_median_ms_during_scan"] = statistics.median(lat) * 1000 if lat else None
    all_lat = [p["latency"] for p in probes if p.get("ok")]
    res["root_max_ms_all"] = max(all_lat) * 1000 if all_lat else None
    errors = [p["error"] for p in probes if "error" in p]
    if errors:
        res["probe_errors"] = errors[:3]
    return res


# --------------------------------------------------------------------------- load generators

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def run_wrk(port: int, path: str, duration: float, connections: int, threads: int,
            headers: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    url = "http://%s:%d%s" % (HOST, port, path)
    cmd = ["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % max(1, round(duration)),
           "--timeout", "10s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", "%s: %s" % (name, value)]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    res: Dict[str, Any] = {"tool": "wrk (%d threads)" % threads, "raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    for q in ("50", "75", "90", "99"):
        m = re.search(r"^\s+%s(?:\.0+)?%%\s+([\d.]+)(us|ms|s|m)\b" % q, out, re.M)
        res["p%s_ms" % q] = _ms(*m.groups()) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    res["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return res


async def _py_connection(port: int, request: bytes, stop_at: float, lat: List[float],
                         counters: Dict[str, int]) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
            t0 = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k:
                    hdrs[k.strip().lower()] = v.strip()
            if "content-length" in hdrs:
                await asyncio.wait_for(reader.readexactly(int(hdrs["content-length"])), 10)
            elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).split(b";")[0], 16)
                    await asyncio.wait_for(reader.readexactly(size + 2), 10)
                    if size == 0:
                        break
            lat.append(time.perf_counter() - t0)
            counters["ok" if 200 <= status < 400 else "non2xx"] += 1
            if hdrs.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ValueError, IndexError):
            counters["errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def _py_load(port: int, path: str, duration: float, connections: int,
                   headers: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    extra = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: bench_rest\r\nAccept: */*\r\n%s\r\n"
               % (path, HOST, port, extra)).encode()
    lat: List[float] = []
    counters = {"ok": 0, "non2xx": 0, "errors": 0}
    t0 = time.perf_counter()
    stop_at = t0 + duration
    tasks = [asyncio.ensure_future(_py_connection(port, request, stop_at, lat, counters))
             for _ in range(connections)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), duration + 30)
    except asyncio.TimeoutError:
        for t in tasks:
            t.cancel()
    elapsed = time.perf_counter() - t0
    lat.sort()

    def pct(q: float) -> Optional[float]:
        return lat[min(len(lat) - 1, int(q / 100.0 * len(lat)))] * 1000 if lat else None

    return {"tool": "python asyncio (1 process)", "rps": counters["ok"] / elapsed if elapsed else None,
            "requests": counters["ok"] + counters["non2xx"], "non2xx": counters["non2xx"],
            "socket_errors": counters["errors"], "p50_ms": pct(50), "p75_ms": pct(75),
            "p90_ms": pct(90), "p99_ms": pct(99)}


def run_python_load(port: int, path: str, duration: float, connections: int,
                    headers: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    return asyncio.run(_py_load(port, path, duration, connections, headers))


def run_load(kind: str, port: int, path: str, duration: float, connections: int, threads: int,
             headers: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """`headers`: extra request headers (e.g. Accept-Encoding: gzip, as browsers send)."""
    if kind == "wrk":
        return run_wrk(port, path, duration, connections, threads, headers)
    return run_python_load(port, path, duration, connections, headers)


# --------------------------------------------------------------------------- report

def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="store directory (default bench/out/store-RUNSxSAMPLES)")
    p.add_argument("--runs", type=int, default=None, help="runs in the store (default 200, --quick 20)")
    p.add_argument("--samples", type=int, default=None, help="samples per run (default 1000)")
    p.add_argument("--big-run-samples", type=int, default=None, help="samples of the extra big run (default 10000, --quick 2000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 x 1000 runs, 2,000-sample big run, 3 s load")
    p.add_argument("--load", choices=("wrk", "python", "auto"), default="auto", help="load generator (auto: wrk if installed)")
    p.add_argument("--duration", type=float, default=None, help="seconds of measured load (default 10, --quick 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before the measurement (default 2)")
    p.add_argument("--wrk-threads", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)),
                   help="wrk threads (default: half the CPUs, 1..4)")
    p.add_argument("--cold-timeout", type=float, default=300.0, help="give up on the cold start after this many seconds (default 300)")
    p.add_argument("--rebuild", action="store_true", help="rebuild --store if it has the wrong number of runs")
    p.add_argument("--no-access-log", action="store_true", help="run the daemon with THEMIS_LOGGING_ACCESS_LOG=false (default: daemon defaults)")
    p.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    args = p.parse_args(argv)

    runs = args.runs if args.runs is not None else (20 if args.quick else 200)
    samples = args.samples if args.samples is not None else 1000
    big = args.big_run_samples if args.big_run_samples is not None else (2000 if args.quick else 10000)
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    store = Path(args.store) if args.store else REPO / "bench" / "out" / ("store-%dx%d" % (runs, samples))
    load = args.load
    if load == "auto":
        load = "wrk" if shutil.which("wrk") else "python"
    elif load == "wrk" and not shutil.which("wrk"):
        p.error("--load wrk: wrk is not installed (apt-get install -y wrk), use --load python")

    ids, build_s = ensure_store(store, runs, samples, big, rebuild=args.rebuild)
    big_id = big_run_id(big)
    expected = len(ids)
    store_bytes = _dir_size(store)
    log("store: %d runs, %.0f MB on disk%s" % (expected, store_bytes / 1e6,
                                               ", built in %.1fs" % build_s if build_s else ""))

    env = {"THEMIS_LOGGING_ACCESS_LOG": "false"} if args.no_access_log else {}
    R: Dict[str, Any] = {"store": str(store), "runs": expected, "store_mb": store_bytes / 1e6, "load_tool": load}
    d = DaemonProcess(store, poll_interval=1, env=env)
    R["command"] = " ".join(d.cmd)
    try:
        # 2. cold start ------------------------------------------------------------------
        log("starting daemon; measuring cold start ...")
        R["cold"] = cold = measure_cold_start(d, expected, args.cold_timeout)
        log("cold start %s s (listening after %s s)" % (fmt(cold.get("t_cold"), "", 2), fmt(cold.get("t_listen"), "", 2)))
        port = d.port
        # 3. warm list throughput -----------------------------------------------------------
        for _ in range(3):
            http_get(port, "/api/runs", 30)
        if args.warmup > 0:
            run_load(load, port, "/api/runs", args.warmup, CONNECTIONS, args.wrk_threads)
        log("load: %s, %d connections, %.0fs on /api/runs ..." % (load, CONNECTIONS, duration))
        R["list"] = lst = run_load(load, port, "/api/runs", duration, CONNECTIONS, args.wrk_threads)
        log("list: %s req/s, p99 %s ms" % (fmt(lst.get("rps"), "", 0), fmt(lst.get("p99_ms"), "", 1)))
        # 4. big run detail -----------------------------------------------------------------
        path = "/api/runs/" + big_id
        st, hdrs, body, cold_s = http_get(port, path, 120)
        det: Dict[str, Any] = {"status": st, "cold_ms": cold_s * 1000, "bytes": len(body)}
        try:
            doc = json.loads(body)
            det["samples"] = len(doc.get("samples") or [])
            det["samples_total"] = doc.get("samples_total")
        except ValueError:
            det["samples"] = None
        warm = []
        for _ in range(5):
            st2, _h, b2, el = http_get(port, path, 120)
            warm.append(el * 1000)
            det["status"] = det["status"] if st2 == 200 else st2
        det["warm_ms"] = warm
        det["warm_median_ms"] = statistics.median(warm)
        gz = []
        for _ in range(3):
            _s, gh, gb, el = http_get(port, path, 120, headers={"Accept-Encoding": "gzip"})
            gz.append(el * 1000)
            det["gzip_bytes"] = len(gb)
            det["gzip_encoded"] = gh.get("content-encoding") == "gzip"
        det["gzip_median_ms"] = statistics.median(gz)
        R["detail"] = det
        log("detail %s: cold %.0f ms, warm median %.0f ms, %.1f MB" % (big_id, det["cold_ms"], det["warm_median_ms"], len(body) / 1e6))
        # 5. memory --------------------------------------------------------------------------
        R["proc"] = d.status()
        R["alive"] = d.proc.poll() is None
    finally:
        R["daemon_log_tail"] = d.log_text(1500)
        d.stop()

    # 6. report ------------------------------------------------------------------------------
    cold, lst, det, proc = R["cold"], R["list"], R["detail"], R["proc"]
    rows: List[Tuple[str, str, str, str]] = []
    misses: List[str] = []

    def add(metric: str, target: str, measured: str, ok: Optional[bool]) -> None:
        rows.append((metric, target, measured, verdict(ok)))
        if ok is False:
            misses.append("%s: %s (target %s)" % (metric, measured, target))

    rps, p99 = lst.get("rps"), lst.get("p99_ms")
    errs = (lst.get("non2xx") or 0) + (lst.get("socket_errors") or 0)
    add("GET /api/runs throughput, %d conns" % CONNECTIONS, ">= %d req/s" % TARGETS["list_rps"],
        fmt(rps, " req/s", 0) + (" (%d errors)" % errs if errs else ""),
        None if rps is None else (rps >= TARGETS["list_rps"] and errs == 0))
    add("GET /api/runs p99 latency, %d conns" % CONNECTIONS, "< %d ms" % TARGETS["list_p99_ms"], fmt(p99, " ms", 1),
        None if p99 is None else p99 < TARGETS["list_p99_ms"])
    tc = cold.get("t_cold")
    add("cold start (spawn -> full /api/runs)", "< %d s" % TARGETS["cold_start_s"],
        fmt(tc, " s", 2) if tc is not None else cold.get("error", "n/a"),
        False if tc is None else tc < TARGETS["cold_start_s"])
    n_scan, n_fail = cold["probes_during_scan"], cold["probe_failures_during_scan"]
    if n_scan == 0:
        add("GET / answers during first scan", "yes", "no probe landed in the scan window", None)
    else:
        add("GET / answers during first scan", "yes",
            "%d/%d ok, max %s, median %s" % (n_scan - n_fail, n_scan, fmt(cold["root_max_ms_during_scan"], " ms"),
                                            fmt(cold["root_median_ms_during_scan"], " ms")),
            n_fail == 0)
    ok_detail = det["status"] == 200 and det.get("samples") == big
    add("GET /api/runs/%s warm (median of 5)" % big_id, "< %d ms" % TARGETS["detail_warm_ms"],
        fmt(det["warm_median_ms"], " ms") + ("" if ok_detail else " (HTTP %s, %s samples!)" % (det["status"], det.get("samples"))),
        det["warm_median_ms"] < TARGETS["detail_warm_ms"] and ok_detail)
    add("GET /api/runs/%s cold (first request)" % big_id, "< %d ms" % TARGETS["detail_cold_ms"], fmt(det["cold_ms"], " ms"),
        det["cold_ms"] < TARGETS["detail_cold_ms"] and ok_detail)
    rss = proc.get("VmRSS", 0) / 1024.0
    add("daemon RSS after all of the above", "< %d MB" % TARGETS["rss_mb"], fmt(rss, " MB"), rss < TARGETS["rss_mb"])

    info = [
        ("store", "%d runs (%d x %d + %s), %.0f MB" % (R["runs"], runs, samples, big_id, R["store_mb"])),
        ("time to listening socket", fmt(cold.get("t_listen"), " s", 2)),
        ("time to /readyz 200 (probe)", fmt(cold.get("t_ready"), " s", 2) if cold.get("t_ready") else "not seen before the list answered"),
        ("first /api/runs answer latency", fmt((cold.get("first_list_latency") or 0) * 1000 if cold.get("first_list_latency") is not None else None, " ms")),
        ("/api/runs body", "%s runs, %s KB" % (cold.get("listed", "n/a"), fmt((cold.get("list_bytes") or 0) / 1024.0, "", 0))),
        ("`/` probes (all / in scan)", "%d / %d, max overall %s" % (cold["probes_total"], n_scan, fmt(cold.get("root_max_ms_all"), " ms"))),
        ("load generator", "%s, %d conns, %.0f s (+%.0f s warm-up)" % (lst.get("tool"), CONNECTIONS, duration, args.warmup)),
        ("list latency p50 / p90 / p99", "%s / %s / %s ms" % (fmt(lst.get("p50_ms"), "", 2), fmt(lst.get("p90_ms"), "", 2), fmt(p99, "", 2))),
        ("list requests (non-2xx, socket errors)", "%s (%s, %s)" % (lst.get("requests"), lst.get("non2xx"), lst.get("socket_errors"))),
        ("detail size (identity)", "%.2f MB, %s samples" % (det["bytes"] / 1e6, det.get("samples"))),
        ("detail warm runs", ", ".join("%.0f" % x for x in det["warm_ms"]) + " ms"),
        ("detail with Accept-Encoding: gzip", "%.2f MB%s, median %.0f ms" % (det.get("gzip_bytes", 0) / 1e6, "" if det.get("gzip_encoded") else " (not encoded)", det["gzip_median_ms"])),
        ("daemon VmHWM (peak RSS) / threads", "%.0f MB / %s" % (proc.get("VmHWM", 0) / 1024.0, proc.get("Threads"))),
        ("access log", "off" if args.no_access_log else "daemon default (on)"),
    ]
    print()
    print("command: %s" % R["command"])
    print_table(rows, "themis-daemon REST benchmark (%s)" % ("quick" if args.quick else "full"))
    print()
    iw = max(len(k) for k, _ in info)
    for k, v in info:
        print("  %s  %s" % (k.ljust(iw), v))
    print()
    print_misses(misses)
    if not R.get("alive", True):
        print("WARNING: the daemon was not running at the end; log tail:\n" + R["daemon_log_tail"])
    if args.json:
        R.get("list", {}).pop("raw", None)
        with open(args.json, "w") as fh:
            json.dump(R, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
