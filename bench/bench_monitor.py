#!/usr/bin/env python
"""Benchmark of the storage monitor and the WebSocket fan-out of themis-daemon (a report, not a test).

    python bench/bench_monitor.py [--runs 1000] [--subscribers 1000] [--idle 5000] [--quick]
        [--samples 20] [--ticks 50] [--events 10] [--poll-interval 0.5] [--client-procs 2]
        [--only tick,latency,idle] [--rebuild]

Targets (one daemon process):

1. ``tick``: with RUNS runs in the store and nothing changing, one poll tick costs < 20 ms CPU.
   In-process: ``Store(root).refresh()`` once cold, then N warm refreshes timed with
   ``time.process_time()``; then the monitor's full tick path (``await Monitor.refresh()``:
   refresh on the storage thread + ``summaries()`` + ``diff_events``) N times. A cProfile of the
   warm refresh goes to bench/out/bench_monitor-profile.txt (top entries on stderr).
2. ``latency``: with SUBSCRIBERS WebSocket clients subscribed to ``*``, a run_progress event
   reaches all of them within poll interval + 100 ms (p99). The daemon runs as a subprocess
   on a root holding the RUNS-run store (symlinked) plus one live run written with
   ThemisRunWriter; clients run in CLIENT_PROCS worker processes (bench/ws_clients.py);
   latency = client arrival time - wall-clock time right after the record was appended.
3. ``idle``: IDLE idle WebSocket connections (each subscribed to one run id) cost < 200 MB of
   extra daemon memory (VmRSS from /proc/PID/status before/after).

``--quick``: 100 runs, 100 subscribers, 500 idle. Stores are built with bench/make_store.py under
bench/out/monitor-store-RUNSxSAMPLES (git-ignored) and reused when complete. Only 127.0.0.1 is
used; every wait has a deadline; the daemon and client processes are killed in finally blocks.
Exit status is 0 even when targets are missed (2 when the benchmark itself failed).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import queue
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(REPO))

from _common import HOST, DaemonProcess, fmt, loadavg, log, print_table, proc_cpu_times, verdict  # noqa: E402

from themis_daemon.demo.writer import ThemisRunWriter, make_arith_dataset  # noqa: E402
from themis_daemon.monitor import Monitor, diff_events  # noqa: E402
from themis_daemon.storage.themis1 import Store  # noqa: E402

NOFILE = 20000
TARGET_TICK_MS = 20.0
TARGET_EXTRA_LATENCY_MS = 100.0  # on top of the poll interval
TARGET_IDLE_MB = 200.0


def raise_nofile(want: int = NOFILE) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_limits() -> None:  # preexec_fn of every child process
    raise_nofile(NOFILE)


def pct(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def proc_cpu_s(pid: int) -> Optional[float]:
    """utime + stime of a process (all threads) in seconds."""
    times = proc_cpu_times(pid)
    return None if times is None else sum(times)


# --------------------------------------------------------------------------- store

def ensure_store(runs: int, samples: int, rebuild: bool) -> Path:
    store = OUT / ("monitor-store-%dx%d" % (runs, samples))
    marker = store / ".bench-complete"
    if marker.is_file() and not rebuild:
        log("reusing %s" % store)
        return store
    if store.exists():
        log("removing incomplete/old store %s" % store)
        shutil.rmtree(store)
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / "make_store.py"), str(store), "--runs", str(runs),
           "--samples", str(samples), "--prefix", "mon"]
    log("building store: " + " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=str(REPO), timeout=1800)
    marker.write_text("%d runs x %d samples\n" % (runs, samples))
    return store


def store_run_ids(store: Path) -> List[str]:
    runs = store / "experiments" / "default" / "runs"
    return sorted(e.name for e in os.scandir(runs) if e.is_dir() and (Path(e.path) / "metadata.json").is_file())


# --------------------------------------------------------------------------- 1. tick cost

def bench_tick(store: Path, runs: int, n: int, profile_path: Path) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    s = Store(str(store))
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0, w0 = time.process_time(), time.perf_counter()
    r = s.refresh()
    res["cold_cpu_ms"] = (time.process_time() - c0) * 1000
    res["cold_wall_ms"] = (time.perf_counter() - w0) * 1000
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # scan worker processes, if the store uses them
    res["cold_children_cpu_ms"] = ((ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)) * 1000
    res["runs_seen"] = len(s.run_ids())
    if r.error or len(r.added) != runs:
        raise RuntimeError("cold refresh saw %d runs (expected %d), error=%s" % (len(r.added), runs, r.error))

    cpu, wall, changed = [], [], 0
    for _ in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        r = s.refresh()
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
        changed += len(r.added) + len(r.removed) + len(r.changed)
    res["refresh_cpu"] = cpu
    res["refresh_wall"] = wall
    res["refresh_changed"] = changed

    # The parts the monitor adds on the loop thread, separately.
    old = {x["run_id"]: x for x in s.summaries()}
    sm, df = [], []
    for _ in range(n):
        c0 = time.process_time()
        new = {x["run_id"]: x for x in s.summaries()}
        sm.append((time.process_time() - c0) * 1000)
        c0 = time.process_time()
        evs = diff_events(old, new, [], [])
        df.append((time.process_time() - c0) * 1000)
        if evs:
            raise RuntimeError("diff of an unchanged store produced %d events" % len(evs))
        old = new
    res["summaries_cpu"] = sm
    res["diff_cpu"] = df

    # Full tick path: await Monitor.refresh() (storage thread + summaries + diff + stall check).
    async def monitor_ticks() -> Tuple[List[float], List[float], int]:
        published: List[Dict[str, Any]] = []
        with ThreadPoolExecutor(1, thread_name_prefix="bench-storage") as ex:
            m = Monitor(Store(str(store)), ex, poll_interval=0.5, stalled_after=300.0, publish=published.append)
            await m.refresh()  # cold first tick (no events by design)
            tc, tw = [], []
            for _ in range(n):
                c0, w0 = time.process_time(), time.perf_counter()
                await m.refresh()
                tc.append((time.process_time() - c0) * 1000)
                tw.append((time.perf_counter() - w0) * 1000)
        return tc, tw, len(published)

    tc, tw, npub = asyncio.run(monitor_ticks())
    res["tick_cpu"] = tc
    res["tick_wall"] = tw
    res["tick_events"] = npub

    # Where the warm refresh spends its time.
    prof = cProfile.Profile()
    k = max(5, min(20, n))
    prof.enable()
    for _ in range(k):
        s.refresh()
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(18)
    buf.write("\n\n=== by cumulative time ===\n")
    st.sort_stats("cumulative").print_stats(25)
    text = "warm Store.refresh() x %d, %d runs\n\n%s" % (k, runs, buf.getvalue())
    profile_path.parent.mkdir(parents=True, exist_ok=True)
    profile_path.write_text(text)
    res["profile_calls"] = k
    res["profile_top"] = _profile_top(st, k, 10)
    return res


def _profile_top(st: pstats.Stats, k: int, limit: int) -> List[str]:
    rows = []
    for func, (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, nc, ct, func))
    rows.sort(reverse=True)
    out = []
    for tt, nc, ct, (fname, line, name) in rows[:limit]:
        where = "%s:%d(%s)" % (os.path.basename(fname), line, name) if fname != "~" else name
        out.append("%7.2f ms/tick self %7.2f ms/tick cum %8.0f calls/tick  %s"
                   % (tt * 1000 / k, ct * 1000 / k, nc / k, where))
    return out


# --------------------------------------------------------------------------- daemon + clients

class Daemon(DaemonProcess):
    """The shared DaemonProcess plus the JSON / metrics reads these benchmarks need."""

    STOP_GRACE = 15.0  # a daemon run under cProfile writes its stats on the way out

    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        try:
            with urllib.request.urlopen("http://%s:%d%s" % (HOST, self.port, path), timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")

    def get_text(self, path: str, timeout: float = 10.0) -> str:
        with urllib.request.urlopen("http://%s:%d%s" % (HOST, self.port, path), timeout=timeout) as r:
            return r.read().decode("utf-8", "replace")

    def wait_ready(self, runs: int, timeout: float) -> float:
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.get_json("/readyz", timeout=5)
                if last.get("status") == "ready" and last.get("runs", 0) >= runs:
                    return time.perf_counter() - t0
            except (OSError, ValueError) as exc:
                last = exc
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited:\n" + self.log_text())
            time.sleep(0.1)
        raise RuntimeError("daemon not ready with %d runs within %.0fs (last: %r)" % (runs, timeout, last))

    def metric(self, name: str) -> Optional[float]:
        try:
            text = self.get_text("/metrics", timeout=10)
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                try:
                    return float(line.rsplit(" ", 1)[1])
                except ValueError:
                    return None
        return None

    def metric_any(self, *names: str) -> Optional[float]:
        for name in names:
            v = self.metric(name)
            if v is not None:
                return v
        return None


def start_daemon(root: Path, poll: float, runs: int, profile_to: Optional[Path] = None) -> Daemon:
    """profile_to: run the daemon under cProfile (IOLoop thread only), written at its exit."""
    prof = ["-m", "cProfile", "-o", str(profile_to)] if profile_to is not None else []
    d = Daemon(root, poll_interval=poll, python_args=prof, preexec_fn=_child_limits,
               log_prefix="themis-bench-monitor-")
    try:
        d.start(60)
        d.wait_ready(runs, 300)
    except BaseException:
        d.stop()
        raise
    return d


class ClientWorker:
    """One bench/ws_clients.py process; its stdout lines are collected by a thread."""

    def __init__(self, args: List[str]):
        cmd = [sys.executable, str(HERE / "ws_clients.py")] + args
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=str(REPO), preexec_fn=_child_limits,
                                     text=True, bufsize=1)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self._err: List[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain_err, daemon=True).start()
        self.ready: Optional[Dict[str, Any]] = None
        self.result: Optional[Dict[str, Any]] = None

    @staticmethod
    def _pump(stream, q) -> None:
        for line in stream:
            q.put(line.rstrip("\n"))

    def _drain_err(self) -> None:
        for line in self.proc.stderr:
            if len(self._err) < 200:
                self._err.append(line.rstrip("\n"))

    def wait_prefix(self, prefix: str, timeout: float) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise RuntimeError("client worker exited %s: %s" % (self.proc.returncode, "\n".join(self._err[-20:])))
                continue
            if line.startswith(prefix + " "):
                return json.loads(line[len(prefix) + 1:])
        raise RuntimeError("client worker: no %s within %.0fs: %s" % (prefix, timeout, "\n".join(self._err[-20:])))

    def stop(self, timeout: float = 60) -> Optional[Dict[str, Any]]:
        try:
            self.proc.stdin.write("STOP\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass
        try:
            self.result = self.wait_prefix("RESULT", timeout)
        except RuntimeError as exc:
            log(str(exc))
        return self.result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def start_clients(port: int, total: int, procs: int, extra: List[str], timeout: float,
                  workers: List[ClientWorker], max_seconds: float) -> Tuple[int, int, float, List[str]]:
    """Start `procs` workers sharing `total` connections; wait until all report READY."""
    procs = max(1, min(procs, total))
    base, rem = divmod(total, procs)
    offset = 0
    t0 = time.perf_counter()
    started = []
    for i in range(procs):
        cnt = base + (1 if i < rem else 0)
        w = ClientWorker(["--port", str(port), "--count", str(cnt), "--offset", str(offset),
                          "--max-seconds", str(int(max_seconds))] + extra)
        workers.append(w)
        started.append(w)
        offset += cnt
    ok = failed = 0
    errors: List[str] = []
    for w in started:
        w.ready = w.wait_prefix("READY", timeout)
        ok += w.ready["ok"]
        failed += w.ready["failed"]
        errors += w.ready.get("errors", [])
    return ok, failed, time.perf_counter() - t0, errors


# --------------------------------------------------------------------------- 2. latency

def bench_latency(store: Path, runs: int, subscribers: int, events: int, gap: float, poll: float,
                  procs: int, profile_to: Optional[Path] = None) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    # A private root: the reused store (symlinked, never written) + one live run of our own.
    root = Path(tempfile.mkdtemp(prefix="live-root-", dir=str(OUT)))
    workers: List[ClientWorker] = []
    daemon: Optional[Daemon] = None
    try:
        (root / "experiments").mkdir()
        os.symlink(str((store / "experiments" / "default").resolve()), str(root / "experiments" / "default"))
        run_id = "live-%d" % os.getpid()
        writer = ThemisRunWriter(root, run_id, experiment_id="live", eval_batch=10 ** 6,
                                 dataset=make_arith_dataset(max(50, events * 3)))
        writer.start()
        writer.step(1)
        daemon = start_daemon(root, poll, runs + 1, profile_to)
        log("latency: daemon pid %d port %d ready; connecting %d subscribers in %d processes"
            % (daemon.pid, daemon.port, subscribers, procs))
        ok, failed, connect_s, errors = start_clients(
            daemon.port, subscribers, procs, ["--mode", "latency", "--subscribe", "*", "--watch-run", run_id],
            timeout=300, workers=workers, max_seconds=events * (gap + 1) + 420)
        res.update(connected=ok, connect_failed=failed, connect_s=connect_s, connect_errors=errors[:3])
        log("latency: %d connected (%d failed) in %.1fs" % (ok, failed, connect_s))
        time.sleep(2.0)  # let the subscribe replies drain

        rng = random.Random(12345)
        t_write: Dict[int, float] = {}
        d_cpu0 = proc_cpu_s(daemon.pid)
        w_cpu0 = [proc_cpu_s(w.proc.pid) for w in workers]
        w0 = time.perf_counter()
        for _ in range(events):
            writer.step(1)
            t_write[writer.generated] = time.time()
            time.sleep(gap + rng.uniform(0.0, poll))  # random phase against the poll timer
        time.sleep(max(1.0, poll * 2))
        elapsed = time.perf_counter() - w0
        d_cpu1 = proc_cpu_s(daemon.pid)
        w_cpu1 = [proc_cpu_s(w.proc.pid) for w in workers]
        res["daemon_cpu_frac"] = (d_cpu1 - d_cpu0) / elapsed if d_cpu0 is not None and d_cpu1 is not None else None
        res["worker_cpu_frac"] = [((b - a) / elapsed) if a is not None and b is not None else None
                                  for a, b in zip(w_cpu0, w_cpu1)]
        res["events_sent_metric"] = daemon.metric_any("themis_ws_events_sent_total", "themis_ws_events_sent")
        res["events_dropped_metric"] = daemon.metric_any("themis_ws_events_dropped_total", "themis_ws_events_dropped")
        res["events_coalesced_metric"] = daemon.metric_any("themis_ws_events_coalesced_total", "themis_ws_events_coalesced")
        arrivals: List[Dict[str, float]] = []
        for w in workers:
            r = w.stop()
            if r is None:
                raise RuntimeError("a client worker returned no result")
            arrivals += r["arrivals"]
        lat: List[float] = []
        complete = 0
        per_event: Dict[int, List[float]] = {g: [] for g in t_write}
        for arr in arrivals:
            got = 0
            for g, tw in t_write.items():
                t = arr.get(str(g))
                if t is not None:
                    lat.append((t - tw) * 1000)
                    per_event[g].append(t)
                    got += 1
            complete += got == len(t_write)
        res["latencies_ms"] = lat
        res["clients"] = len(arrivals)
        res["clients_complete"] = complete
        res["expected_deliveries"] = len(arrivals) * len(t_write)
        res["delivered"] = len(lat)
        first, spread = [], []
        for g, ts in per_event.items():
            if ts:
                first.append((min(ts) - t_write[g]) * 1000)
                spread.append((max(ts) - min(ts)) * 1000)
                ts = sorted(ts)
                log("  event generated=%d: %d clients, first %.1f ms, median %.1f ms, last %.1f ms after the write"
                    % (g, len(ts), (ts[0] - t_write[g]) * 1000, (ts[len(ts) // 2] - t_write[g]) * 1000,
                       (ts[-1] - t_write[g]) * 1000))
        res["first_arrival_ms"] = first
        res["fanout_spread_ms"] = spread
        res["events"] = len(t_write)
    finally:
        for w in workers:
            w.kill()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)  # removes the symlink, never follows it
    return res


# --------------------------------------------------------------------------- 3. idle memory

def bench_idle(store: Path, runs: int, idle: int, poll: float, procs: int) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    workers: List[ClientWorker] = []
    daemon: Optional[Daemon] = None
    ids_file = None
    try:
        ids = store_run_ids(store)
        ids_file = tempfile.NamedTemporaryFile("w", prefix="run-ids-", suffix=".txt", dir=str(OUT), delete=False)
        ids_file.write("\n".join(ids) + "\n")
        ids_file.close()
        daemon = start_daemon(store, poll, runs)
        log("idle: daemon pid %d port %d ready" % (daemon.pid, daemon.port))
        # Real daemon idle CPU (nothing changes): 10 s window -> CPU per poll tick.
        time.sleep(1.0)
        c0, w0 = proc_cpu_s(daemon.pid), time.perf_counter()
        time.sleep(10.0)
        c1, w1 = proc_cpu_s(daemon.pid), time.perf_counter()
        res["daemon_idle_cpu_frac"] = (c1 - c0) / (w1 - w0)
        res["daemon_idle_cpu_ms_per_tick"] = (c1 - c0) * 1000 / ((w1 - w0) / poll)

        # Warm-up: a few connections so lazily imported WebSocket code is not counted.
        warm: List[ClientWorker] = []
        try:
            start_clients(daemon.port, 20, 1, ["--mode", "idle", "--run-ids-file", ids_file.name],
                          timeout=60, workers=warm, max_seconds=120)
            for w in warm:
                w.stop()
        finally:
            for w in warm:
                w.kill()
        time.sleep(2.0)
        before = daemon.status()
        res["rss_before_kb"] = before["VmRSS"]
        log("idle: VmRSS before %.1f MB; opening %d connections in %d processes"
            % (before["VmRSS"] / 1024, idle, procs))
        ok, failed, connect_s, errors = start_clients(
            daemon.port, idle, procs, ["--mode", "idle", "--run-ids-file", ids_file.name],
            timeout=600, workers=workers, max_seconds=900)
        res.update(connected=ok, connect_failed=failed, connect_s=connect_s, connect_errors=errors[:3])
        log("idle: %d connected (%d failed) in %.1fs" % (ok, failed, connect_s))
        time.sleep(3.0)
        c0, w0 = proc_cpu_s(daemon.pid), time.perf_counter()
        samples = []
        for _ in range(5):
            samples.append(daemon.status()["VmRSS"])
            time.sleep(1.0)
        c1, w1 = proc_cpu_s(daemon.pid), time.perf_counter()
        after = daemon.status()
        res["rss_after_kb"] = max(samples)
        res["rss_hwm_kb"] = after["VmHWM"]
        res["daemon_cpu_frac_with_idle"] = (c1 - c0) / (w1 - w0)
        res["server_connections"] = daemon.metric("themis_ws_connections")
        res["server_subscriptions"] = daemon.metric("themis_ws_subscriptions")
        for w in workers:
            w.stop()
        time.sleep(2.0)
        res["rss_after_close_kb"] = daemon.status()["VmRSS"]
    finally:
        for w in workers:
            w.kill()
        if daemon is not None:
            daemon.stop()
        if ids_file is not None:
            try:
                os.unlink(ids_file.name)
            except OSError:
                pass
    return res


# --------------------------------------------------------------------------- report

def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=None, help="runs in the store (default 1000)")
    p.add_argument("--subscribers", type=int, default=None, help="subscribers to '*' (default 1000)")
    p.add_argument("--idle", type=int, default=None, help="idle connections (default 5000)")
    p.add_argument("--quick", action="store_true", help="100 runs, 100 subscribers, 500 idle")
    p.add_argument("--samples", type=int, default=20, help="samples per run in the store")
    p.add_argument("--ticks", type=int, default=50, help="timed poll ticks (N)")
    p.add_argument("--events", type=int, default=10, help="progress events written for the latency test")
    p.add_argument("--gap", type=float, default=1.5, help="seconds between two writes (plus a random phase)")
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--client-procs", type=int, default=2, help="client worker processes")
    p.add_argument("--only", default="tick,latency,idle", help="comma list of: tick, latency, idle")
    p.add_argument("--rebuild", action="store_true", help="rebuild the store even if present")
    p.add_argument("--profile-daemon", action="store_true",
                   help="run the latency daemon under cProfile; stats to bench/out/bench_monitor-daemon.prof")
    args = p.parse_args(argv)
    runs = args.runs if args.runs is not None else (100 if args.quick else 1000)
    subs = args.subscribers if args.subscribers is not None else (100 if args.quick else 1000)
    idle = args.idle if args.idle is not None else (500 if args.quick else 5000)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    nofile = raise_nofile(NOFILE)
    log("RLIMIT_NOFILE soft=%d; loadavg %s; %d CPUs" % (nofile, loadavg(), os.cpu_count() or 0))
    if nofile < max(subs, idle) + 256:
        log("warning: file-descriptor limit %d is low for %d connections" % (nofile, max(subs, idle)))

    store = ensure_store(runs, args.samples, args.rebuild)
    rows: List[Tuple[str, str, str, str]] = []

    def add(metric: str, target: str, measured: str, ok: Optional[bool]) -> None:
        rows.append((metric, target, measured, verdict(ok)))

    failed = False

    def fail(section: str, metric: str, target: str, exc: Exception) -> None:
        nonlocal failed
        failed = True
        log("%s benchmark failed: %r" % (section, exc))
        add(metric, target, "error: %s" % exc, False)

    poll_ms = args.poll_interval * 1000
    if "tick" in only:
        profile_path = OUT / "bench_monitor-profile.txt"
        try:
            log("tick: %d runs, %d warm ticks" % (runs, args.ticks))
            t = bench_tick(store, runs, args.ticks, profile_path)
            rc, tc = t["refresh_cpu"], t["tick_cpu"]
            add("cold Store.refresh() (%d runs): wall / CPU (+children)" % runs, "-", "%s / %s (+%s)" % (
                fmt(t["cold_wall_ms"], " ms", 0), fmt(t["cold_cpu_ms"], " ms", 0),
                fmt(t["cold_children_cpu_ms"], " ms", 0)), None)
            add("warm Store.refresh() CPU, median", "< %.0f ms" % TARGET_TICK_MS,
                fmt(statistics.median(rc), " ms", 2), statistics.median(rc) < TARGET_TICK_MS)
            add("warm Store.refresh() CPU, p95", "< %.0f ms" % TARGET_TICK_MS,
                fmt(pct(rc, 0.95), " ms", 2), pct(rc, 0.95) < TARGET_TICK_MS)
            add("  summaries() + diff_events(), median", "-",
                fmt(statistics.median(t["summaries_cpu"]), " + ", 2) + fmt(statistics.median(t["diff_cpu"]), " ms", 2), None)
            add("full monitor tick CPU, median", "< %.0f ms" % TARGET_TICK_MS,
                fmt(statistics.median(tc), " ms", 2), statistics.median(tc) < TARGET_TICK_MS)
            add("full monitor tick CPU, p95", "< %.0f ms" % TARGET_TICK_MS,
                fmt(pct(tc, 0.95), " ms", 2), pct(tc, 0.95) < TARGET_TICK_MS)
            add("full monitor tick wall, median", "-", fmt(statistics.median(t["tick_wall"]), " ms", 2), None)
            if t["refresh_changed"] or t["tick_events"]:
                log("warning: unchanged store reported %d changes / %d events" % (t["refresh_changed"], t["tick_events"]))
            log("profile of warm refresh (per tick; full text in %s):" % profile_path)
            for line in t["profile_top"]:
                log("  " + line)
        except Exception as exc:
            fail("tick", "poll tick CPU", "< %.0f ms" % TARGET_TICK_MS, exc)

    if "idle" in only:
        try:
            r = bench_idle(store, runs, idle, args.poll_interval, args.client_procs)
            add("daemon idle CPU per poll tick (%d runs, /proc)" % runs, "< %.0f ms" % TARGET_TICK_MS,
                fmt(r["daemon_idle_cpu_ms_per_tick"], " ms", 1), r["daemon_idle_cpu_ms_per_tick"] < TARGET_TICK_MS)
            n = r["connected"]
            delta_mb = (r["rss_after_kb"] - r["rss_before_kb"]) / 1024
            scaled = delta_mb * idle / n if n else None
            add("idle WS connections open (server count)", "%d" % idle,
                "%d (%s)" % (n, fmt(r["server_connections"], "", 0)), n == idle)
            add("extra VmRSS for %d idle connections" % n, "< %.0f MB" % TARGET_IDLE_MB,
                fmt(delta_mb, " MB"), (scaled is not None and scaled < TARGET_IDLE_MB) if n == idle else None)
            add("  per connection", "< %.0f KB" % (TARGET_IDLE_MB * 1024 / idle),
                fmt(delta_mb * 1024 / n if n else None, " KB"), None)
            add("  VmRSS before / with / after close", "-", "%s / %s / %s" % (
                fmt(r["rss_before_kb"] / 1024, " MB"), fmt(r["rss_after_kb"] / 1024, " MB"),
                fmt(r["rss_after_close_kb"] / 1024, " MB")), None)
            add("  daemon CPU with idle connections", "-", fmt(r["daemon_cpu_frac_with_idle"] * 100, " %"), None)
            add("  connect time for %d connections" % idle, "-", fmt(r["connect_s"], " s"), None)
            if r["connect_failed"]:
                log("idle: %d connections failed: %s" % (r["connect_failed"], r["connect_errors"]))
        except Exception as exc:
            fail("idle", "extra VmRSS for idle connections", "< %.0f MB" % TARGET_IDLE_MB, exc)

    if "latency" in only:
        try:
            prof_out = OUT / "bench_monitor-daemon.prof" if args.profile_daemon else None
            r = bench_latency(store, runs, subs, args.events, args.gap, args.poll_interval, args.client_procs,
                              prof_out)
            if prof_out is not None and prof_out.is_file():
                buf = io.StringIO()
                pstats.Stats(str(prof_out), stream=buf).sort_stats("tottime").print_stats(25)
                (OUT / "bench_monitor-daemon-profile.txt").write_text(buf.getvalue())
                log("daemon profile (IOLoop thread) in %s" % (OUT / "bench_monitor-daemon-profile.txt"))
            lat = r["latencies_ms"]
            target_ms = poll_ms + TARGET_EXTRA_LATENCY_MS
            p99 = pct(lat, 0.99)
            all_ok = r["clients_complete"] == r["clients"] == subs
            add("subscribers connected", "%d" % subs, "%d" % r["connected"], r["connected"] == subs)
            add("event latency p50 (%d events x %d clients)" % (r["events"], r["clients"]), "-",
                fmt(pct(lat, 0.5), " ms"), None)
            add("event latency p99", "< %.0f ms" % target_ms, fmt(p99, " ms"),
                (p99 is not None and p99 < target_ms and all_ok))
            add("event latency max", "-", fmt(max(lat) if lat else None, " ms"), None)
            add("clients that got every event", "100 %", "%d/%d (%s)" % (
                r["clients_complete"], r["clients"],
                fmt(100.0 * r["clients_complete"] / r["clients"] if r["clients"] else None, " %")), all_ok)
            add("  first client: write -> arrival, median/max", "-", "%s / %s" % (
                fmt(statistics.median(r["first_arrival_ms"]) if r["first_arrival_ms"] else None, " ms"),
                fmt(max(r["first_arrival_ms"]) if r["first_arrival_ms"] else None, " ms")), None)
            add("  fan-out spread first->last client, median/max", "-", "%s / %s" % (
                fmt(statistics.median(r["fanout_spread_ms"]) if r["fanout_spread_ms"] else None, " ms"),
                fmt(max(r["fanout_spread_ms"]) if r["fanout_spread_ms"] else None, " ms")), None)
            wc = ", ".join(fmt(x * 100 if x is not None else None, "%", 0) for x in r["worker_cpu_frac"])
            add("  CPU during events: daemon / client procs", "-",
                "%s / %s" % (fmt(r["daemon_cpu_frac"] * 100 if r["daemon_cpu_frac"] is not None else None, "%", 0), wc), None)
            add("  server events_sent / dropped / coalesced", "-", "%s / %s / %s" % (
                fmt(r["events_sent_metric"], "", 0), fmt(r["events_dropped_metric"], "", 0),
                fmt(r["events_coalesced_metric"], "", 0)), None)
        except Exception as exc:
            fail("latency", "event latency p99", "< %.0f ms" % (poll_ms + TARGET_EXTRA_LATENCY_MS), exc)

    title = ("themis-daemon monitor benchmark: %d runs x %d samples, %d subscribers, %d idle, poll %.2fs, "
             "%d client procs, loadavg %s" % (runs, args.samples, subs, idle, args.poll_interval,
                                              args.client_procs, loadavg()))
    print()
    print_table(rows, title)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
