#!/usr/bin/env python
"""One daemon process on realistic Themis 1.x stores (a report, not a test).

    python bench/bench_v1_scale.py [--store DIR] [--runs 200] [--samples 1000]
        [--big-store DIR] [--duration 5] [--rounds 3] [--load wrk|python] [--skip-stall] [--starts 3]

Stores come from ``../shared/tools/make_scale_store.py`` (byte-identical to what Themis 1.4
writes): STORE = RUNS x SAMPLES with 2 runs left in progress (default bench/out/scale-RUNSxSAMPLES),
BIG = 2 runs x 10,000 samples, run ids prefixed "big-" (default bench/out/scale-2x10000); missing
ones are built.

1. cold start: process start until ``GET /api/runs`` lists every run, with an empty cache dir;
   the median of ``--starts`` (3) starts, each with a new empty cache dir;
2. restart: the same with the persistent cache the last cold start left (median of as many
   restarts), and the list must be byte-identical to the cold one;
3. warm ``GET /api/runs`` with 32 connections and the same client against a bare Tornado
   handler returning a small JSON dict, in turn for ``--rounds`` (3) rounds of ``--duration``
   (5 s) each: the median of the rounds' ratios is the comparable figure
   (and against a bare Tornado handler returning the daemon's own list body, which tells the
   cost of sending that body from the daemon's own); for each, the serving process's user and
   kernel CPU per answer;
4. resident memory of the daemon;
5. the loop under load: a daemon serving STORE and BIG from an empty cache, probed with
   ``GET /`` every 10 ms while its cold scan, a cold detail of a 10,000-sample run and a cold
   2 x 10,000 bootstrap compare run at the same time: max and p99 of ``GET /``.

Prints the load average it ran under. Only 127.0.0.1 is used; every loop has a deadline and
every process it starts is stopped in a finally block.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _common import HOST, DaemonProcess, loadavg, log, proc_cpu_times  # noqa: E402
from bench_rest import run_load  # noqa: E402
from bench_v4 import BareTornado  # noqa: E402

BUILDER = REPO.parent / "shared" / "tools" / "make_scale_store.py"
CONNECTIONS = 32
PAGE_CACHE_PASSES = 4  # reads of the store before the cold start, at most
PAGE_CACHE_PASS_S = 8.0  # a pass this short found the store in the page cache


def run_ids(store: Path) -> List[str]:
    out = []
    for exp in sorted((store / "experiments").iterdir()):
        runs = exp / "runs"
        if runs.is_dir():
            out += [p.name for p in sorted(runs.iterdir()) if (p / "metadata.json").is_file()]
    return out


def ensure(store: Path, runs: int, samples: int, in_progress: int) -> List[str]:
    if not (store / "experiments").is_dir():
        builder = Path(os.environ.get("THEMIS_SCALE_BUILDER", BUILDER))
        log("building %s: %d runs x %d samples with %s (about 90 s per 200 x 1,000)" % (store, runs, samples, builder))
        cmd = [sys.executable, str(builder), str(store), "--runs", str(runs), "--samples", str(samples)]
        if in_progress:
            cmd += ["--in-progress", str(in_progress)]
        subprocess.run(cmd, check=True, timeout=6 * 3600)
    return run_ids(store)


def ensure_big(store: Path) -> List[str]:
    """2 runs x 10,000 samples, their folders (run ids) prefixed with "big-" so that they do
    not collide with the main store's run ids (the builder names runs after their model)."""
    if not (store / "experiments").is_dir():
        ensure(store, 2, 10000, 0)
        for exp in (store / "experiments").iterdir():
            for run in list((exp / "runs").iterdir()):
                meta_path = run / "metadata.json"
                if not run.name.startswith("big-") and meta_path.is_file():
                    meta = json.loads(meta_path.read_text())
                    meta["run_id"] = "big-" + run.name
                    meta_path.write_text(json.dumps(meta, indent=2))
                    run.rename(run.with_name("big-" + run.name))
    return run_ids(store)


def get(port: int, path: str, timeout: float = 120.0, conn: Optional[http.client.HTTPConnection] = None):
    own = conn is None
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - t0
    finally:
        if own:
            conn.close()


def post(port: int, path: str, doc: Any, timeout: float = 300.0):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("POST", path, body=json.dumps(doc), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - t0
    finally:
        conn.close()


def start(storage: List[Path], cache_dir: str) -> DaemonProcess:
    env = {"THEMIS_STORAGE_CACHE_DIR": cache_dir, "PYTHONPATH": str(REPO)}
    d = DaemonProcess(storage[0], poll_interval=1.0, env=env)
    for extra in storage[1:]:
        d.cmd += ["--storage", str(extra)]
    d.start(120)
    return d


def until_complete(d: DaemonProcess, expected: int, timeout: float = 300.0) -> Dict[str, Any]:
    """Seconds from process start until GET /api/runs lists `expected` runs, and that list."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body, _ = get(d.port, "/api/runs", timeout=max(1.0, deadline - time.monotonic()))
            if status == 200 and len(json.loads(body)) >= expected:
                return {"seconds": time.perf_counter() - d.t_start, "body": body}
        except (OSError, http.client.HTTPException):
            pass
        if d.proc.poll() is not None:
            raise RuntimeError("daemon exited:\n" + d.log_text())
        time.sleep(0.01)
    raise RuntimeError("no complete list within %.0f s" % timeout)


def pct(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100.0 * len(values)))]


def stall(store: Path, big: Path, expected: int, big_ids: List[str]) -> Dict[str, Any]:
    """GET / every 10 ms during a cold scan + a cold 10,000-sample detail + a cold compare."""
    cache = tempfile.mkdtemp(prefix="bench-v1-stall-")
    d = start([store, big], cache)
    out: Dict[str, Any] = {}
    lat: List[float] = []
    errors: List[str] = []
    stop = threading.Event()

    def probe() -> None:
        conn = None
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn = conn or http.client.HTTPConnection(HOST, d.port, timeout=30)
                status, _, el = get(d.port, "/", conn=conn)
                lat.append(el) if status == 200 else errors.append("HTTP %d" % status)
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
                conn = None
            stop.wait(0.01)

    def detail() -> None:
        status, body, el = get(d.port, "/api/runs/" + big_ids[0], timeout=600)
        out["detail"] = {"status": status, "seconds": el, "bytes": len(body)}

    def compare() -> None:
        status, body, el = post(d.port, "/api/compare", {"run_ids": big_ids[:2], "statistical_test": "bootstrap"})
        out["compare"] = {"status": status, "seconds": el}

    threads = [threading.Thread(target=f, daemon=True) for f in (probe, detail, compare)]
    try:
        for t in threads:
            t.start()
        out["cold"] = until_complete(d, expected)["seconds"]
        for t in threads[1:]:
            t.join(600)
        stop.set()
        threads[0].join(60)
    finally:
        stop.set()
        d.stop()
        shutil.rmtree(cache, ignore_errors=True)
    out.update(probes=len(lat), errors=len(errors), max_ms=max(lat) * 1000 if lat else None,
               p99_ms=(pct(lat, 99) or 0) * 1000, p50_ms=(pct(lat, 50) or 0) * 1000)
    return out


def bare_body_main(path: str, max_seconds: float) -> int:
    """``--_bare-body FILE SECONDS``: a bare Tornado handler answering GET / with FILE's bytes
    (the daemon's own list body) and an ETag computed once, to tell the cost of moving the body
    from the daemon's own."""
    import asyncio

    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    import hashlib

    body = Path(path).read_bytes()
    etag = '"%s"' % hashlib.sha1(body).hexdigest()

    class Body(tornado.web.RequestHandler):
        def compute_etag(self) -> str:
            return etag  # computed once, as the daemon does (Tornado's default hashes every answer)

        def get(self) -> None:
            self.set_header("Content-Type", "application/json")
            self.finish(body)

    async def serve() -> None:
        socks = tornado.netutil.bind_sockets(0, HOST)
        tornado.httpserver.HTTPServer(tornado.web.Application([(r"/", Body)])).add_sockets(socks)
        print("on http://%s:%d" % (HOST, socks[0].getsockname()[1]), file=sys.stderr, flush=True)
        await asyncio.sleep(max_seconds)

    asyncio.run(serve())
    return 0


class BareBody(BareTornado):
    def __init__(self, path: str, max_seconds: float):
        super().__init__(max_seconds)
        self.cmd = [sys.executable, str(Path(__file__).resolve()), "--_bare-body", path, str(max_seconds)]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--big-store", type=Path)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per figure and round (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the list loads (default 3)")
    p.add_argument("--load", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    p.add_argument("--skip-stall", action="store_true")
    p.add_argument("--starts", type=int, default=3,
                   help="cold starts (each with an empty cache dir) and restarts measured; medians are judged (default 3)")
    p.add_argument("--from-disk", action="store_true",
                   help="do not read the stores into the page cache before the cold start (then the disk's speed is measured too)")
    args = p.parse_args(argv)
    if args.starts < 1 or args.rounds < 1:
        p.error("--starts and --rounds must be at least 1")
    store = args.store or HERE / "out" / ("scale-%dx%d" % (args.runs, args.samples))
    big = args.big_store or HERE / "out" / "scale-2x10000"
    ids = ensure(store, args.runs, args.samples, 2)
    big_ids = [] if args.skip_stall else ensure_big(big)
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e6
    log("store %s: %d runs, %.0f MB; load average %s" % (store, len(ids), size, loadavg()))
    res: Dict[str, Any] = {"load_before": loadavg()}
    if not args.from_disk:
        # A daemon (re)started next to a Themis that writes the store finds it in the page cache.
        # This machine's memory manager evicts files idle for minutes, and a first read of the
        # 1,000-run store takes longer than that: read again until a pass finds it all cached
        # (under PAGE_CACHE_PASS_S), so that the cold start does not wait for the disk.
        passes: List[float] = []
        while len(passes) < PAGE_CACHE_PASSES:
            t0 = time.perf_counter()
            for root in [store] + ([big] if big_ids else []):
                for f in root.rglob("*"):
                    if f.is_file():
                        with open(f, "rb") as fh:
                            while fh.read(1 << 20):
                                pass
            passes.append(time.perf_counter() - t0)
            if passes[-1] < PAGE_CACHE_PASS_S:
                break
        res["page_cache_s"] = passes[0]
        res["page_cache_passes"] = passes
        log("store read into the page cache: %s s" % ", ".join("%.2f" % x for x in passes))
    caches: List[str] = []
    try:
        # Medians of --starts starts, as bench_v4 judges: this machine's speed moves by up to
        # half between minutes, and one start tells the minute more than the daemon.
        colds: List[float] = []
        for i in range(args.starts):
            cache = tempfile.mkdtemp(prefix="bench-v1-cache-")  # empty: a cold start
            caches.append(cache)
            d = start([store], cache)
            try:
                cold = until_complete(d, len(ids))
            finally:
                d.stop()  # also writes the cache, which the first scan already did
            colds.append(cold["seconds"])
            log("cold start %d of %d: %.2f s" % (i + 1, args.starts, cold["seconds"]))
        res["cold"], res["cold_all"] = statistics.median(colds), colds
        res["list_bytes"] = len(cold["body"])
        restarts: List[float] = []
        res["restart_identical"] = True
        body_file = Path(caches[-1]) / "list.json"
        body_file.write_bytes(cold["body"])
        # Both bare Tornado servers wait beside the daemon; each round loads them and the daemon
        # in turn, so the ratio compares the same minutes of this machine.
        bares = {"bare": BareTornado(max_seconds=3600), "bare_body": BareBody(str(body_file), 3600)}
        try:
            for b in bares.values():
                b.start(30)
            for i in range(args.starts):
                d = start([store], cache)  # the last cold start's cache
                try:
                    warm = until_complete(d, len(ids))
                    restarts.append(warm["seconds"])
                    res["restart_identical"] &= warm["body"] == cold["body"]
                    log("restart %d of %d: %.2f s (list identical: %s)" % (
                        i + 1, args.starts, warm["seconds"], warm["body"] == cold["body"]))
                    if i == args.starts - 1:
                        res.update(list_rounds(args, d, bares))
                        res["rss_mb"] = d.status().get("VmRSS", 0) / 1024
                        res["hwm_mb"] = d.status().get("VmHWM", 0) / 1024
                        res["tree_mb"] = d.status().get("TreeRSS", 0) / 1024
                finally:
                    d.stop()
        finally:
            for b in bares.values():
                b.stop()
        res["restart"], res["restart_all"] = statistics.median(restarts), restarts
    finally:
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
    if not args.skip_stall:
        res["stall"] = stall(store, big, len(ids) + len(big_ids), big_ids)
    res["load_after"] = loadavg()
    report(res, store, len(ids), args)
    return 0


def load_with_cpu(kind: str, pid: int, port: int, path: str, duration: float, **kw: Any) -> Dict[str, Any]:
    """run_load, plus the serving process's user and kernel CPU per answer (microseconds):
    where an answer's cost goes, in the daemon and in bare Tornado alike."""
    before = proc_cpu_times(pid)
    got = run_load(kind, port, path, duration, CONNECTIONS, 2, **kw)
    after = proc_cpu_times(pid)
    answers = got["answers"] = (got.get("rps") or 0) * duration
    if answers and before is not None and after is not None:
        got["user_us"] = (after[0] - before[0]) / answers * 1e6
        got["sys_us"] = (after[1] - before[1]) / answers * 1e6
    return got


def list_rounds(args: Any, d: DaemonProcess, bares: Dict[str, Any]) -> Dict[str, Any]:
    """--rounds rounds of wrk against bare Tornado (small dict), the daemon's list, the same
    with gzip and bare Tornado sending the list's bytes, in turn (the daemon first in odd rounds);
    each figure is the median over the rounds, the ratio the median of the rounds' ratios."""
    targets = [("bare", bares["bare"].pid, bares["bare"].port, "/", {}),
               ("list", d.pid, d.port, "/api/runs", {}),
               ("list_gzip", d.pid, d.port, "/api/runs", {"headers": {"Accept-Encoding": "gzip"}}),
               ("bare_body", bares["bare_body"].pid, bares["bare_body"].port, "/", {})]
    for _, _, port, path, kw in targets:  # warm-up
        run_load(args.load, port, path, 2, CONNECTIONS, 2, **kw)
    got: Dict[str, List[Dict[str, Any]]] = {t[0]: [] for t in targets}
    for r in range(args.rounds):
        order = targets if r % 2 == 0 else targets[1:3] + targets[:1] + targets[3:]
        for name, pid, port, path, kw in order:
            got[name].append(load_with_cpu(args.load, pid, port, path, args.duration, **kw))
        log("round %d: bare %.0f, list %.0f (%.2f x), gzip %.0f, bare with the list's body %.0f req/s" % (
            r + 1, got["bare"][-1]["rps"] or 0, got["list"][-1]["rps"] or 0,
            (got["list"][-1]["rps"] or 0) / (got["bare"][-1]["rps"] or 1), got["list_gzip"][-1]["rps"] or 0,
            got["bare_body"][-1]["rps"] or 0))
    out: Dict[str, Any] = {}
    for name, rounds in got.items():
        merged = dict(rounds[-1])
        merged["rps"] = statistics.median([x["rps"] or 0 for x in rounds])
        merged["p99_ms"] = statistics.median([x.get("p99_ms") or 0 for x in rounds])
        answers = sum(x.get("answers", 0) for x in rounds)
        if answers and all("user_us" in x for x in rounds):
            merged["user_us"] = sum(x["user_us"] * x["answers"] for x in rounds) / answers
            merged["sys_us"] = sum(x["sys_us"] * x["answers"] for x in rounds) / answers
        merged["rounds"] = [x["rps"] or 0 for x in rounds]
        out[name] = merged
    out["ratios"] = [(a["rps"] or 0) / b["rps"] if b["rps"] else 0 for a, b in zip(got["list"], got["bare"])]
    out["ratios_gzip"] = [(a["rps"] or 0) / b["rps"] if b["rps"] else 0 for a, b in zip(got["list_gzip"], got["bare"])]
    return out


def _cpu(got: Dict[str, Any]) -> str:
    if "user_us" not in got:
        return ""
    return "; per answer %.0f us user + %.0f us kernel" % (got["user_us"], got["sys_us"])


def _each(values: List[float]) -> str:
    """Every start of a median, in the order they ran."""
    return "median of %d: %s" % (len(values), ", ".join("%.2f" % v for v in values))


def report(res: Dict[str, Any], store: Path, n: int, args) -> None:
    rate, bare = res["list"]["rps"] or 0, res["bare"]["rps"] or 0
    ratio = statistics.median(res["ratios"]) if res.get("ratios") else (rate / bare if bare else None)
    big_store = n >= 1000
    rows = [
        ("cold start to the first complete GET /api/runs", "< 20 s (1,000 x 1,000)" if big_store else "< 5 s (200 x 1,000)", "%.2f s (%s; %s)" % (
            res["cold"], _each(res["cold_all"]), "store in the page cache: read before in %s s" % ", ".join(
                "%.1f" % x for x in res["page_cache_passes"])
            if "page_cache_s" in res else "--from-disk: store read from disk")),
        ("restart (persistent cache) to a complete, identical list", "< 2 s" if big_store else "< 1 s",
         "%.2f s (%s; identical: %s)" % (res["restart"], _each(res["restart_all"]),
                                          "yes" if res["restart_identical"] else "NO")),
        ("GET /api/runs warm, %d connections (%s)" % (CONNECTIONS, res["list"]["tool"]), ">= 0.85 x bare Tornado",
         "%.0f req/s, p99 %.1f ms = %.2f x bare Tornado %.0f req/s (median of the rounds' ratios: %s)%s" % (
             rate, res["list"].get("p99_ms") or 0, ratio or 0, bare,
             ", ".join("%.2f" % x for x in res.get("ratios", [])), _cpu(res["list"]))),
        ("  bare Tornado returning a small dict, same client", "(reference)",
         "%.0f req/s%s" % (bare, _cpu(res["bare"]))),
        ("  the same, client sends Accept-Encoding: gzip (browsers, curl --compressed, requests)", "(info)",
         "%.0f req/s, p99 %.1f ms = %.2f x bare Tornado" % (
             res["list_gzip"]["rps"] or 0, res["list_gzip"].get("p99_ms") or 0,
             statistics.median(res["ratios_gzip"]) if res.get("ratios_gzip") else 0)),
        ("  the same client, bare Tornado answering the same %.0f KB body" % (res["list_bytes"] / 1024), "(info)",
         "%.0f req/s (the daemon: %.2f x that)%s" % (res["bare_body"]["rps"] or 0,
                                                      rate / res["bare_body"]["rps"] if res["bare_body"]["rps"] else 0,
                                                      _cpu(res["bare_body"]))),
        ("resident memory after the above, with its worker processes", "< 600 MB",
         "%.0f MB (the daemon process %.0f MB, its peak %.0f MB)" % (res["tree_mb"], res["rss_mb"], res["hwm_mb"])),
    ]
    st = res.get("stall")
    if st:
        rows += [
            ("GET / during cold scan + cold 10k detail + cold 2x10k bootstrap compare", "max < 100 ms, p99 < 20 ms",
             "max %.1f ms, p99 %.1f ms, p50 %.1f ms (%d probes, %d errors)" % (
                 st["max_ms"] or 0, st["p99_ms"], st["p50_ms"], st["probes"], st["errors"])),
            ("  cold start of that daemon (both stores)", "(info)", "%.2f s" % st["cold"]),
            ("  first GET /api/runs/{10,000-sample run}, sent at start", "(info)",
             "%.2f s, HTTP %s, %.1f MB" % (st["detail"]["seconds"], st["detail"]["status"], st["detail"]["bytes"] / 1e6)),
            ("  2 x 10,000 bootstrap compare, sent at start", "(info)",
             "%.2f s, HTTP %s" % (st["compare"]["seconds"], st["compare"]["status"])),
        ]
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\nThemis 1.x store %s (%d runs); %d cores; load average %s before, %s after" % (
        store, n, os.cpu_count() or 0, res["load_before"], res["load_after"]))
    print("| " + " | ".join(h.ljust(x) for h, x in zip(("measure", "target", "this run"), w)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_bare-body":
        sys.exit(bare_body_main(sys.argv[2], float(sys.argv[3])))
    sys.exit(main())
