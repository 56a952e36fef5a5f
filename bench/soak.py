#!/usr/bin/env python
"""Soak test: one daemon under mixed load for a long time; does memory stay flat?

    python bench/soak.py [--minutes 10] [--mode grow|constant] [--runs 40] [--work DIR]

Load, all on loopback against one ``python -m themis_daemon serve`` process:

* 8 HTTP keep-alive connections, each alternating ``GET /api/runs`` and a run detail;
* a ``POST /api/compare`` of two finished runs every 5 s;
* 200 WebSocket clients subscribed to ``*`` (each must keep receiving events);
* a live writer (``themis_daemon.demo.live``) adding Themis 1.x runs the way Themis writes them.

``--mode grow``: the writer only adds runs, so the store grows and part of any memory growth is
the new runs' own state; the per-run cost is reported (slope of RSS over run count).
``--mode constant``: the writer removes its oldest runs, so the store keeps its size, and RSS
must stay flat after warm-up.

Every 30 s one line: RSS, file descriptors and threads of the daemon, runs, requests, events,
errors. At the end: RSS growth over the last half, the per-run slope, fds after the clients
left against the baseline before they came, and the error counts (all must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import DaemonProcess, log  # noqa: E402
from themis_daemon.demo.live import DemoWriterThread  # noqa: E402
from themis_daemon.demo.writer import write_completed_run  # noqa: E402

HTTP_CONNECTIONS = 8
WS_CLIENTS = 200
COMPARE_EVERY = 5.0
REPORT_EVERY = 30.0


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values: Dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.values[key] = self.values.get(key, 0) + n

    def get(self, key: str) -> int:
        return self.values.get(key, 0)


def proc_figures(pid: int) -> Dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(rest.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": out["VmRSS"] / 1024.0, "threads": out["Threads"], "fds": out["fds"]}


class HttpLoad(threading.Thread):
    """One keep-alive connection: the run list, then a detail of a listed run, again and again."""

    def __init__(self, port: int, stop: threading.Event, counters: Counters, seed: int):
        super().__init__(daemon=True)
        self.port, self.stop, self.counters = port, stop, counters
        self.rng = random.Random(seed)

    def request(self, conn: http.client.HTTPConnection, path: str) -> Optional[bytes]:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 200:
            self.counters.add("http_ok")
            return body
        if resp.status == 404 and path.startswith("/api/runs/"):
            self.counters.add("http_404_removed_run")  # the constant-mode writer removed it meanwhile
            return None
        self.counters.add("http_errors")
        log(f"GET {path}: {resp.status} {body[:200]!r}")
        return None

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            try:
                body = self.request(conn, "/api/runs")
                if body:
                    runs = json.loads(body)
                    if runs:
                        run_id = self.rng.choice(runs)["run_id"]
                        self.request(conn, "/api/runs/" + run_id + "?samples_limit=50")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.counters.add("http_errors")
                log(f"HTTP client error: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()


class CompareLoad(threading.Thread):
    def __init__(self, port: int, stop: threading.Event, counters: Counters):
        super().__init__(daemon=True)
        self.port, self.stop, self.counters = port, stop, counters
        self.rng = random.Random(7)

    def run(self) -> None:
        while not self.stop.wait(COMPARE_EVERY):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                conn.request("GET", "/api/runs?status=completed")
                runs = [r["run_id"] for r in json.loads(conn.getresponse().read())]
                if len(runs) < 2:
                    continue
                body = json.dumps({"run_ids": self.rng.sample(runs, 2), "statistical_test": "bootstrap",
                                   "n_resamples": 2000})
                conn.request("POST", "/api/compare", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 200:
                    self.counters.add("compare_ok")
                elif resp.status in (400, 404):
                    # A removed run (constant mode) or runs without overlapping samples: answered right.
                    self.counters.add("compare_4xx")
                else:
                    self.counters.add("compare_errors")
                    log(f"compare: {resp.status} {data[:200]!r}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.counters.add("compare_errors")
                log(f"compare client error: {exc!r}")
            finally:
                conn.close()


async def ws_client(port: int, stop: asyncio.Event, counters: Counters, index: int) -> None:
    import websockets

    url = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(url, max_queue=None, ping_interval=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "subscribe", "run_id": "*"}))
        counters.add("ws_connected")
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 1.0)
            except asyncio.TimeoutError:
                continue
            msg = json.loads(raw)
            if "seq" in msg:
                counters.add("ws_events")
            elif msg.get("type") == "error":
                counters.add("ws_errors")
    counters.add("ws_closed_cleanly")


async def ws_load(port: int, stop: asyncio.Event, counters: Counters) -> None:
    async def one(i: int) -> None:
        try:
            await ws_client(port, stop, counters, i)
        except Exception as exc:  # a dropped or refused connection is an error of the soak
            counters.add("ws_errors")
            log(f"WebSocket client {i}: {exc!r}")

    await asyncio.gather(*(one(i) for i in range(WS_CLIENTS)))


def build_store(root: Path, runs: int, samples: int) -> None:
    for i in range(runs):
        write_completed_run(str(root), f"soak-{i:04d}", samples, seed=i)


def run_count(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/api/runs?limit=0")
        resp = conn.getresponse()
        resp.read()
        return int(resp.getheader("X-Total-Count", "0"))
    finally:
        conn.close()


def slope(xs: List[float], ys: List[float]) -> Optional[float]:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return None if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--mode", choices=("grow", "constant"), default="grow")
    ap.add_argument("--runs", type=int, default=40, help="finished runs in the store at the start")
    ap.add_argument("--samples", type=int, default=100, help="samples per run")
    ap.add_argument("--writer-interval", type=float, default=0.5, help="seconds between writer steps")
    ap.add_argument("--work", help="folder for the store (default: a temporary one, removed)")
    args = ap.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="themis-soak-"))
    root = work / "store"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    log(f"building {args.runs} runs x {args.samples} samples in {root}")
    build_store(root, args.runs, args.samples)

    counters = Counters()
    daemon = DaemonProcess(root, poll_interval=1.0, env={"THEMIS_LOGGING_ACCESS_LOG": "false"})
    port = daemon.start()
    stop = threading.Event()
    writer = DemoWriterThread(root, interval=args.writer_interval, samples=args.samples,
                              max_runs=8 if args.mode == "constant" else 10 ** 9,
                              per_tick=(10, 25), seed=1)
    samples: List[Dict[str, float]] = []
    try:
        time.sleep(2.0)
        base = proc_figures(daemon.pid)
        log(f"daemon pid {daemon.pid} on port {port}; before load: RSS {base['rss_mb']:.1f} MB, "
            f"fds {base['fds']}, threads {base['threads']}")
        loop = asyncio.new_event_loop()
        ws_stop = asyncio.Event()
        ws_thread = threading.Thread(target=lambda: loop.run_until_complete(ws_load(port, ws_stop, counters)),
                                     daemon=True)
        ws_thread.start()
        workers = [HttpLoad(port, stop, counters, seed=i) for i in range(HTTP_CONNECTIONS)]
        workers.append(CompareLoad(port, stop, counters))
        for w in workers:
            w.start()
        writer.start()

        started = time.monotonic()
        end = started + args.minutes * 60.0
        print(f"mode {args.mode}: {args.minutes:g} min, {HTTP_CONNECTIONS} HTTP connections, {WS_CLIENTS} "
              f"WebSocket clients, a compare every {COMPARE_EVERY:g} s, writer every {args.writer_interval:g} s",
              flush=True)
        print(f"{'t (s)':>6} {'RSS MB':>7} {'fds':>5} {'thr':>4} {'runs':>5} {'http ok':>8} {'ws events':>10} "
              f"{'compares':>8} {'errors':>6}", flush=True)
        next_report = started
        while True:
            now = time.monotonic()
            if now >= next_report:
                fig = proc_figures(daemon.pid)
                runs = run_count(port)
                errors = sum(counters.get(k) for k in ("http_errors", "compare_errors", "ws_errors"))
                fig.update(t=now - started, runs=runs)
                samples.append(fig)
                print(f"{fig['t']:6.0f} {fig['rss_mb']:7.1f} {fig['fds']:5d} {fig['threads']:4d} {runs:5d} "
                      f"{counters.get('http_ok'):8d} {counters.get('ws_events'):10d} "
                      f"{counters.get('compare_ok'):8d} {errors:6d}", flush=True)
                next_report += REPORT_EVERY
            if now >= end:
                break
            time.sleep(min(1.0, max(0.05, min(next_report, end) - now)))

        stop.set()
        writer.stop()
        loop.call_soon_threadsafe(ws_stop.set)
        for w in workers:
            w.join(120)
        ws_thread.join(120)
        # Clients are gone: file descriptors must come back to where they were before the load.
        deadline = time.monotonic() + 30
        after = proc_figures(daemon.pid)
        while after["fds"] > base["fds"] and time.monotonic() < deadline:
            time.sleep(1.0)
            after = proc_figures(daemon.pid)
    finally:
        stop.set()
        writer.stop()
        daemon.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2] if samples else []
    growth = half[-1]["rss_mb"] - half[0]["rss_mb"] if len(half) >= 2 else float("nan")
    per_run = slope([s["runs"] for s in samples[1:]], [s["rss_mb"] for s in samples[1:]])
    errors = {k: counters.get(k) for k in ("http_errors", "compare_errors", "ws_errors")}
    writer_error = repr(writer.last_error) if writer.last_error else None
    print()
    print(f"RSS: {samples[0]['rss_mb']:.1f} MB at the start of the load, {samples[-1]['rss_mb']:.1f} MB at the end; "
          f"growth over the last half ({half[0]['t']:.0f}-{half[-1]['t']:.0f} s): {growth:+.1f} MB")
    print(f"runs: {samples[0]['runs']} -> {samples[-1]['runs']}; RSS per added run (slope): "
          + (f"{per_run * 1024:.0f} KB" if per_run is not None else "n/a (the run count did not change)"))
    print(f"fds: {base['fds']} before the load, {max(s['fds'] for s in samples)} at most under load, "
          f"{after['fds']} after the clients left; threads {base['threads']} -> {after['threads']}")
    print(f"requests: {counters.get('http_ok')} HTTP ok, {counters.get('http_404_removed_run')} details of removed "
          f"runs (404), {counters.get('compare_ok')} compares ok, {counters.get('compare_4xx')} compares 4xx, "
          f"{counters.get('ws_events')} WebSocket events to {counters.get('ws_connected')} clients, "
          f"{counters.get('ws_closed_cleanly')} closed cleanly")
    print(f"errors: {errors}; writer: {writer_error or 'ok'}")
    ok = (not any(errors.values()) and writer_error is None and after["fds"] <= base["fds"]
          and counters.get("ws_closed_cleanly") == WS_CLIENTS)
    if args.mode == "constant":
        ok = ok and growth < 2.0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
