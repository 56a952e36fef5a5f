#!/usr/bin/env python
"""Benchmark of themis-daemon on Themis 4 stores, SQLite and PostgreSQL (a report, not a test).

    python bench/bench_v4.py [--backend sqlite|postgres|both] [--runs 200] [--cases 1000]
        [--big-run 10000] [--quick] [--work DIR] [--json FILE] [--load wrk|python|auto]
        [--duration 10] [--ws-events 30] [--tx-seconds 8] [--writer-gap 0] [--only daemon,poll,tx]
        [--profile]

Stores (built with bench/make_store_v4.py, i.e. ``themis_daemon/demo/themis4.py``, the exact
Themis 4.0.2 format): RUNS runs x CASES cases x 2 metrics, the last 2 left ``running``, plus
one completed run of BIG cases. SQLite: one file; PostgreSQL: a database on a real server
(tests/pgserver.py, a private cluster on a free 127.0.0.1 port, stopped at the end). Both are
kept under ``--work DIR`` and reused by later runs with the same sizes (default: a temp dir,
removed at the end). Every measurement runs on a working copy (a copied file, a database
created from the stored one as template), because 4. and 7. append live runs.

Per backend:

1. cold start: ``python -m themis_daemon serve --storage S --port 0 --poll-interval 0.5``
   spawned until the first ``GET /api/runs`` listing every run (target < 5 s SQLite,
   < 10 s PostgreSQL). ``--cold-repeats N`` (default 3) starts N daemons in all, one after
   the other, each also timing its first big detail (5.) 5 s after its list; the median of
   the N is judged and every start is shown;
2. warm ``GET /api/runs``, 32 connections (wrk, or a Python asyncio client): req/s and p99
   (>= 2,000 req/s, p99 < 50 ms), and a bare Tornado app returning a small JSON dict measured
   with the same client in the same run, and the ratio;
3. CPU of one poll when nothing changed (< 2 ms): in-process ``open_sources([S])``, one
   refresh, then N refreshes timed with ``time.process_time()``/``time.thread_time()``; the
   monitor's full tick (refresh + summaries + diff) is shown too;
4. latency of a new event to a ``*`` WebSocket subscriber (< poll 0.5 s + 100 ms): a live
   ``Themis4Writer`` run writes one case every 0.5-1.0 s; latency = arrival of the first
   message whose ``evaluated`` count includes the case - commit of the case's last event;
5. ``GET /api/runs/{big run}``: first request after start (median of the starts, see 1.), then
   warm (< 250 ms, < 20 ms);
6. daemon VmRSS after all of the above (< 400 MB);
7. read transactions while a writer writes (p99 < 20 ms): a writer process (live mode, one
   commit per event/blob/cache row, flat out) runs alone, then with a daemon polling every
   0.1 s that is started while it writes (its cold scan), alone again, then with a daemon
   started before it. The daemon is run through this script's timing wrapper of
   ``SqliteReader.poll``/``fetch`` (``PostgresReader._run``, each call one transaction),
   which logs every read transaction; the writer logs every commit. A daemon that exits at
   start-up because the writer holds the lock (validate) is counted and started again; after
   5 such exits the writer pauses until the daemon listens. After each daemon phase the runs
   it lists are compared with the store's (correctness). ``--writer-gap S`` paces the writer.

Then, if a target was missed (or with ``--profile``): cProfile of an in-process cold scan
(``open_sources([S]).refresh()``) and of the first detail of the big run, top 10 by
cumulative time. Prints one markdown table per backend (measure | figure | target | command);
``--json FILE`` also writes every figure. Only 127.0.0.1 is used; every wait has a deadline;
child processes are stopped in finally blocks. Exit status 0 even when targets are missed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import random
import shutil
import signal
import sqlite3
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from _common import HOST, DaemonProcess, fmt, loadavg, log, print_misses  # noqa: E402

CONNECTIONS = 32
POLL_WS = 0.5    # daemon poll interval for 1-6
POLL_TX = 0.1    # daemon poll interval for 7
START_TRIES = 5  # 7: daemon start-ups tried while the writer writes before pausing it for one
METRICS = 2
IN_PROGRESS = 2
READER = "themis_reader"
MB = 1024 * 1024

TARGETS = {
    "cold_s": {"sqlite": 5.0, "postgres": 10.0},
    "list_rps": 2000.0,
    "list_p99_ms": 50.0,
    "poll_cpu_ms": 2.0,
    "ws_extra_ms": 100.0,
    "detail_cold_ms": 250.0,
    "detail_warm_ms": 20.0,
    "rss_mb": 400.0,
    "tx_p99_ms": 20.0,
}


# --------------------------------------------------------------------------- small helpers

def pct(values: List[float], q: float) -> Optional[float]:
    """Interpolated percentile, q in 0..100."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def dist(values: List[float]) -> Dict[str, Any]:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
            "max": max(values) if values else None}


def dist_text(d: Dict[str, Any], unit: str = " ms", nd: int = 1) -> str:
    if not d or not d.get("n"):
        return "n/a (no samples)"
    return "p50 %s / p99 %s / max %s%s (n=%d)" % (fmt(d["p50"], "", nd), fmt(d["p99"], "", nd),
                                                 fmt(d["max"], "", nd), unit, d["n"])


def ok_mark(ok: Optional[bool]) -> str:
    return "" if ok is None else (" (ok)" if ok else " (**MISSED**)")


def code_version() -> str:
    """git HEAD of the checkout, plus '+changes' when themis_daemon/ differs from it (read-only git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(REPO), capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "themis_daemon"], cwd=str(REPO),
                               capture_output=True, text=True, timeout=10).stdout.strip()
        changed = sorted({line[3:].split("/")[1] if line[3:].count("/") >= 1 else line[3:]
                          for line in dirty.splitlines() if line[3:].startswith("themis_daemon/")})
        return (head or "?") + (" +uncommitted changes in themis_daemon/{%s}" % ",".join(changed) if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def http_get(port: int, path: str, timeout: float = 30.0) -> Tuple[int, bytes, float]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path), timeout=timeout) as resp:
            body = resp.read()
            return resp.status, body, time.perf_counter() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.perf_counter() - t0


def wait_ready(port: int, timeout: float, proc: Optional[subprocess.Popen] = None) -> float:
    """Poll /readyz until 200 (the first storage scan is done); returns time.time() then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st, _b, _t = http_get(port, "/readyz", 5)
            if st == 200:
                return time.time()
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("daemon exited before it was ready")
        time.sleep(0.02)
    raise RuntimeError("daemon not ready within %.0fs" % timeout)


def redact(url: str) -> str:
    from themis_daemon.storage.themis4.postgres import redact as _redact

    return _redact(url)


# --------------------------------------------------------------------------- hidden modes

TXLOG_ENV = "THEMIS_BENCH_V4_TXLOG"


def install_tx_timing(txlog: str, worker: bool = False) -> None:
    """Time every read transaction of the Themis 4 SQLite/PostgreSQL readers in this process and
    append one line per transaction to TXLOG: ``kind wall_start duration_ms rows first_ms``.

    SQLite: ``poll`` and ``mark`` (``cold_mark``) are one BEGIN..COMMIT each; any other
    ``_query`` is its own autocommit transaction (``stmt``). For a poll, first_ms is the
    duration of its first statement, which includes any wait for the writer's lock (busy
    timeout 50 ms): the SHARED lock is held for about duration - first_ms. PostgreSQL: every
    ``_run`` is one transaction, named ``pg-<caller>`` (a connection it must open first is
    opened before the clock starts: no transaction is open while connecting). In the daemon's scan worker processes
    (``worker``), kinds get a ``w`` prefix."""
    from themis_daemon.storage.themis4 import postgres as pgm
    from themis_daemon.storage.themis4 import sqlite as sqm

    fh = open(txlog, "a", buffering=1)
    lock = threading.Lock()
    tls = threading.local()
    prefix = "w" if worker else ""

    def rec(kind: str, t0w: float, dur: float, n: int, first: float = 0.0) -> None:
        with lock:
            fh.write("%s%s %.6f %.3f %d %.3f\n" % (prefix, kind, t0w, dur * 1000.0, n, first * 1000.0))

    def tx(kind: str, fn, count):
        """A method that is one transaction."""
        def wrapper(self, *a, **kw):
            prev = getattr(tls, "tag", None)
            tls.tag, tls.first = kind, None
            t0w, t0 = time.time(), time.perf_counter()
            ok, out = False, None
            try:
                out = fn(self, *a, **kw)
                ok = True
                return out
            finally:
                tls.tag = prev
                rec(kind if ok else kind + "-error", t0w, time.perf_counter() - t0, count(out) if ok else -1,
                    tls.first or 0.0)
        return wrapper

    def query(fn):
        """SQLite `_query`: inside poll, note the first statement's time; else its own transaction."""
        def wrapper(self, *a, **kw):
            tag = getattr(tls, "tag", None)
            t0w, t0 = time.time(), time.perf_counter()
            ok, out = False, None
            try:
                out = fn(self, *a, **kw)
                ok = True
                return out
            finally:
                d = time.perf_counter() - t0
                if tag is None:
                    rec("stmt" if ok else "stmt-error", t0w, d, len(out) if ok else -1)
                elif getattr(tls, "first", None) is None:
                    tls.first = d
        return wrapper

    def tagged(kind: str, fn):
        def wrapper(self, *a, **kw):
            prev = getattr(tls, "tag", None)
            tls.tag = kind
            try:
                return fn(self, *a, **kw)
            finally:
                tls.tag = prev
        return wrapper

    sqm.SqliteReader.poll = tx("poll", sqm.SqliteReader.poll, lambda out: len(out.rows))
    if hasattr(sqm.SqliteReader, "cold_mark"):
        sqm.SqliteReader.cold_mark = tx("mark", sqm.SqliteReader.cold_mark, lambda out: (out or {}).get("events", 0))
    sqm.SqliteReader._query = query(sqm.SqliteReader._query)

    orig_run = pgm.PostgresReader._run

    def pg_run(self, work):
        kind = "pg-" + (getattr(tls, "tag", None) or "other")
        try:
            self._connection()  # connecting (and importing the driver) opens no transaction: not timed
        except Exception:
            pass  # `_run` meets the same error and reports it
        t0w, t0 = time.time(), time.perf_counter()
        ok, out = False, None
        try:
            out = orig_run(self, work)
            ok = True
            return out
        finally:
            n = len(out.rows) if hasattr(out, "rows") else (len(out) if isinstance(out, (list, dict)) else 0)
            rec(kind if ok else kind + "-error", t0w, time.perf_counter() - t0, n if ok else -1)

    pgm.PostgresReader._run = pg_run
    for name, kind in (("poll", "poll"), ("changed", "changed"), ("fetch", "fetch"), ("cold_mark", "mark"),
                       ("adopt", "adopt"), ("partition_snapshots", "psnap")):
        if hasattr(pgm.PostgresReader, name):
            setattr(pgm.PostgresReader, name, tagged(kind, getattr(pgm.PostgresReader, name)))


def daemon_wrapper(txlog: str, argv: List[str]) -> int:
    """``bench_v4.py --_daemon TXLOG -m themis_daemon serve ...``: the daemon with its read
    transactions timed (see install_tx_timing). Its scan workers (spawned: they import this
    file as ``__mp_main__``) find TXLOG in the environment and time theirs too."""
    if argv[:2] != ["-m", "themis_daemon"]:
        raise SystemExit("--_daemon TXLOG -m themis_daemon serve ...")
    os.environ[TXLOG_ENV] = txlog
    install_tx_timing(txlog)
    from themis_daemon.cli import main as cli_main

    sys.argv = ["themis-daemon"] + argv[2:]
    return cli_main(argv[2:])


if __name__ == "__mp_main__" and os.environ.get(TXLOG_ENV):  # a scan worker of the wrapped daemon
    install_tx_timing(os.environ[TXLOG_ENV], worker=True)


def writer_main(cfg_json: str) -> int:
    """``bench_v4.py --_writer CONFIG``: a live Themis 4 writer; logs every commit's duration.

    Writes one case after another (each event, blob and stage-cache row its own commit) until
    the stop file appears or max_seconds pass; then dumps {"commits": [[wall_start, ms, kind]],
    "cases": n, "errors": [...]} to cfg["out"]."""
    cfg = json.loads(cfg_json)
    from themis_daemon.demo.themis4 import PostgresSink, SqliteSink, Themis4Writer, make_arith_cases

    if cfg["backend"] == "sqlite":
        sink: Any = SqliteSink(cfg["target"])
    else:
        sink = PostgresSink(cfg["target"], cfg["blob_root"])
    commits: List[Tuple[float, float, str]] = []

    def wrap(name: str) -> None:
        fn = getattr(sink, name)

        def timed(*a, **kw):
            t0w, t0 = time.time(), time.perf_counter()
            out = fn(*a, **kw)
            commits.append((t0w, (time.perf_counter() - t0) * 1000.0, name))
            return out
        setattr(sink, name, timed)

    for name in ("persist_event", "persist_blob", "store_stage_cache"):
        wrap(name)
    errors: List[str] = []
    writer = Themis4Writer(sink)
    cases = make_arith_cases(int(cfg.get("cases", 5000)), variant=77)
    run = writer.new_run(model=cfg["model"], dataset_id="arith-live", cases=cases,
                         benchmark_id="bench-live", environment={"bench": "bench_v4"})
    run.start()
    Path(cfg["out"] + ".ready").write_text("1")
    deadline = time.monotonic() + float(cfg["max_seconds"])
    n = 0
    for cid in run.case_ids:
        while cfg.get("pause_file") and os.path.exists(cfg["pause_file"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        if os.path.exists(cfg["stop_file"]) or time.monotonic() > deadline:
            break
        try:
            run.case(cid)
            n += 1
        except Exception as exc:  # a commit that timed out (database is locked): count it, go on
            errors.append("%s: %s" % (type(exc).__name__, exc))
            if len(errors) > 50:
                break
        if cfg.get("gap"):
            time.sleep(float(cfg["gap"]))
    writer.close()
    with open(cfg["out"], "w") as fh:
        json.dump({"commits": commits, "cases": n, "errors": errors[:10], "n_errors": len(errors),
                   "run_id": run.run_id}, fh)
    return 0


def bare_tornado_main(max_seconds: float) -> int:
    """``bench_v4.py --_bare-tornado``: a minimal Tornado app, ``GET /`` -> a small JSON dict."""
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    class Hello(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write({"status": "ok", "service": "bare-tornado", "runs": 201})

    async def serve() -> None:
        app = tornado.web.Application([(r"/", Hello)])
        socks = tornado.netutil.bind_sockets(0, HOST)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(socks)
        print("on http://%s:%d" % (HOST, socks[0].getsockname()[1]), file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await asyncio.wait_for(stop.wait(), max_seconds)
        except asyncio.TimeoutError:
            pass
        server.stop()

    asyncio.run(serve())
    return 0


class BareTornado(DaemonProcess):
    """The bare Tornado app as a child process (DaemonProcess' port parsing, log and stop)."""

    def __init__(self, max_seconds: float = 600.0):
        super().__init__("-")
        self.cmd = [sys.executable, str(HERE / "bench_v4.py"), "--_bare-tornado", str(max_seconds)]


# --------------------------------------------------------------------------- stores

def make_store_cmd(args_out: List[str], runs: int, cases: int, big: int) -> List[str]:
    return [sys.executable, str(HERE / "make_store_v4.py"), *args_out, "--runs", str(runs), "--cases", str(cases),
            "--metrics", str(METRICS), "--in-progress", str(IN_PROGRESS), "--big-run", str(big)]


def sqlite_count(path: Path) -> int:
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return conn.execute("SELECT count(*) FROM run_snapshots").fetchone()[0]
    finally:
        conn.close()


def ensure_sqlite(work: Path, runs: int, cases: int, big: int) -> Tuple[Path, float, List[str]]:
    """The stored SQLite store (built unless present and complete); (path, build seconds, cmd)."""
    path = work / ("v4-%dx%d-big%d.sqlite3" % (runs, cases, big))
    expected = runs + (1 if big else 0)
    cmd = make_store_cmd([str(path)], runs, cases, big)
    if path.exists():
        try:
            if sqlite_count(path) == expected:
                log("sqlite: reusing %s" % path)
                return path, 0.0, cmd
        except sqlite3.Error:
            pass
        log("sqlite: %s is incomplete: rebuilding" % path)
        path.unlink()
    tmp = path.with_name(path.name + ".building")
    for p in (tmp, Path(str(tmp) + "-journal")):
        if p.exists():
            p.unlink()
    log("sqlite: building %s (%d runs x %d cases + %d) ..." % (path.name, runs, cases, big))
    t0 = time.perf_counter()
    subprocess.run(make_store_cmd([str(tmp)], runs, cases, big), check=True, cwd=str(work), timeout=3 * 3600)
    os.rename(tmp, path)
    return path, time.perf_counter() - t0, cmd


class PgStores:
    """A private PostgreSQL cluster under WORK (kept between runs when --work is given)."""

    def __init__(self, work: Path, keep: bool):
        sys.path.insert(0, str(REPO / "tests"))
        from pgserver import PgServer, PgServerError

        self.PgServer, self.PgServerError = PgServer, PgServerError
        self.work = work
        self.keep = keep
        self.state_file = work / "pg-state.json"
        self.server: Any = None
        self.reader_pw = "bench-" + os.urandom(6).hex()

    def _state(self) -> Dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, state: Dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(state))
        os.chmod(self.state_file, 0o600)

    def start(self) -> None:
        ok, reason = self.PgServer.available()
        if not ok:
            raise RuntimeError("PostgreSQL not available: " + reason)
        # The postgres OS user (initdb refuses root) must traverse WORK.
        os.chmod(self.work, os.stat(self.work).st_mode | 0o711)
        state = self._state()
        server = self.PgServer(base_dir=str(self.work))
        if state.get("dir") and os.path.isdir(os.path.join(state["dir"], "data")):
            server.dir = state["dir"]
            try:
                server.start()
                log("postgres: reusing cluster %s on port %d" % (server.dir, server.port))
            except self.PgServerError as exc:
                log("postgres: cannot restart the kept cluster (%s); making a new one" % str(exc).splitlines()[0])
                shutil.rmtree(server.dir, ignore_errors=True)
                server = self.PgServer(base_dir=str(self.work))
                state = {}
        if not server.running:
            server.start()
            log("postgres: new cluster %s on port %d" % (server.dir, server.port))
            state = {"dir": server.dir, "stores": {}}
            self._save(state)
        self.server = server
        # the superuser's TCP password is per PgServer object: set it again on a kept cluster
        server.psql("postgres", "ALTER ROLE postgres PASSWORD '%s'" % server.password)
        server.create_role(READER, self.reader_pw)

    def ensure(self, runs: int, cases: int, big: int) -> Tuple[str, float, List[str], Path]:
        """The stored database (built unless complete); (name, build seconds, cmd, blob root)."""
        name = "v4_%dx%d_big%d" % (runs, cases, big)
        blobs = self.work / ("pg-blobs-" + name)
        expected = runs + (1 if big else 0)
        state = self._state()
        cmd = make_store_cmd(["--postgres", "postgresql://postgres:***@127.0.0.1:PORT/" + name,
                              "--blob-root", str(blobs)], runs, cases, big)
        exists = self.server.psql("postgres", "SELECT 1 FROM pg_database WHERE datname = '%s'" % name) == "1"
        if exists and state.get("stores", {}).get(name) == expected:
            n = int(self.server.psql(name, "SELECT count(*) FROM run_snapshots"))
            if n == expected:
                log("postgres: reusing database %s" % name)
                return name, 0.0, cmd, blobs
        if exists:
            self.server.drop_database(name)
        shutil.rmtree(blobs, ignore_errors=True)
        self.server.create_database(name)
        log("postgres: building database %s (%d runs x %d cases + %d) ..." % (name, runs, cases, big))
        t0 = time.perf_counter()
        real = make_store_cmd(["--postgres", self.server.url(name, password=self.server.password),
                               "--blob-root", str(blobs)], runs, cases, big)
        subprocess.run(real, check=True, cwd=str(self.work), timeout=3 * 3600)
        build = time.perf_counter() - t0
        self.server.psql(name, "VACUUM ANALYZE")
        state.setdefault("stores", {})[name] = expected
        self._save(state)
        return name, build, cmd, blobs

    def working_copy(self, name: str) -> Tuple[str, str, str]:
        """A database created from NAME as template; (db, reader URL, writer URL)."""
        copy = name + "_run"
        self.server.drop_database(copy)
        self.server.create_database(copy, template=name)
        # PostgreSQL 15 copies a template block by block through its WAL: flush it now, or the
        # checkpoint that follows competes with the daemon being measured.
        self.server.psql("postgres", "CHECKPOINT")
        os.sync()  # the test cluster runs with fsync=off: its checkpoint leaves the writing to the kernel
        self.server.grant_select(copy, READER)
        return (copy, self.server.url(copy, user=READER, password=self.reader_pw),
                self.server.url(copy, password=self.server.password))

    def drop(self, db: str) -> None:
        try:
            self.server.drop_database(db)
        except Exception as exc:  # noqa: BLE001 - cleanup
            log("postgres: could not drop %s: %s" % (db, exc))

    def close(self) -> None:
        if self.server is None:
            return
        if self.keep:
            self.server.stop()  # keep the data directory for the next run
        else:
            self.server.close()
        self.server = None


# --------------------------------------------------------------------------- 1/2/4/5/6: one daemon

def run_bare(load: str, duration: float, warmup: float, threads: int) -> Dict[str, Any]:
    from bench_rest import run_load

    b = BareTornado(max_seconds=duration + warmup + 120)
    try:
        port = b.start(30)
        for _ in range(3):
            http_get(port, "/", 10)
        if warmup > 0:
            run_load(load, port, "/", warmup, CONNECTIONS, threads)
        res = run_load(load, port, "/", duration, CONNECTIONS, threads)
        res.pop("raw", None)
        res["rss_mb"] = b.status().get("VmRSS", 0) / 1024.0
        return res
    finally:
        b.stop()


async def ws_latency(port: int, make_writer, steps: int, poll: float, seed: int = 4242) -> Dict[str, Any]:
    """Subscribe to '*', then write STEPS cases of a new live run, one every poll..2*poll s."""
    from websockets.asyncio.client import connect

    res: Dict[str, Any] = {}
    arrivals: List[Tuple[float, Dict[str, Any]]] = []
    ex = ThreadPoolExecutor(1, thread_name_prefix="bench-writer")  # sqlite3: one thread per connection
    loop = asyncio.get_running_loop()
    state: Dict[str, Any] = {}
    try:
        async with connect("ws://%s:%d/ws" % (HOST, port), max_size=None, open_timeout=15) as ws:
            await ws.send(json.dumps({"type": "subscribe", "run_id": "*"}))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
                if msg.get("type") == "subscribed":
                    break

            async def read() -> None:
                async for raw in ws:
                    arrivals.append((time.time(), json.loads(raw)))

            reader = asyncio.ensure_future(read())

            def setup() -> str:
                writer, sink = make_writer()
                last = [0.0]
                orig = sink.persist_event

                def persist_event(*a, **kw):
                    orig(*a, **kw)
                    last[0] = time.time()  # just after this event's commit
                sink.persist_event = persist_event
                from themis_daemon.demo.themis4 import make_arith_cases

                run = writer.new_run(model="toy-ws-live", dataset_id="arith-ws", cases=make_arith_cases(steps + 10, variant=55),
                                     benchmark_id="bench-live")
                run.start()
                state.update(writer=writer, run=run, last=last)
                return run.run_id

            def one_case(cid: str) -> float:
                state["run"].case(cid)
                return state["last"][0]

            run_id = await loop.run_in_executor(ex, setup)
            res["run_id"] = run_id
            await asyncio.sleep(2 * poll + 0.5)  # run_started goes out first
            rng = random.Random(seed)
            commits: List[float] = []
            for cid in state["run"].case_ids[:steps]:
                commits.append(await loop.run_in_executor(ex, one_case, cid))
                await asyncio.sleep(poll + rng.uniform(0.0, poll))  # random phase against the poll timer
            await asyncio.sleep(2 * poll + 0.5)
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass
    finally:
        def close() -> None:
            if "writer" in state:
                state["writer"].close()
        await loop.run_in_executor(ex, close)
        ex.shutdown(wait=True)
    mine = [(t, m) for t, m in arrivals if m.get("run_id") == res.get("run_id")]
    res["messages"] = len(mine)
    res["message_types"] = sorted({m.get("type", "?") for _t, m in mine})
    lat: List[float] = []
    missing = 0
    for i, tc in enumerate(commits, 1):
        hit = next((t for t, m in mine if ((m.get("data") or {}).get("evaluated") or 0) >= i), None)
        if hit is None:
            missing += 1
        else:
            lat.append((hit - tc) * 1000.0)
    res["latencies_ms"] = lat
    res["missing"] = missing
    res["events"] = len(commits)
    res.update({"lat_" + k: v for k, v in dist(lat).items()})
    return res


def median_or_none(values: List[Optional[float]]) -> Optional[float]:
    """The median of the runs that finished; None if one did not (a start that failed is a miss)."""
    if not values or any(v is None for v in values):
        return None
    return statistics.median(values)


def daemon_run(backend: str, storage: str, expected: int, big: int, args, make_writer) -> Dict[str, Any]:
    from bench_rest import measure_cold_start, run_load

    R: Dict[str, Any] = {"loadavg_start": loadavg()}
    env = {"THEMIS_LOGGING_ACCESS_LOG": "false"} if args.no_access_log else {}
    d = DaemonProcess(storage, poll_interval=POLL_WS, env=env)
    R["command"] = " ".join(d.cmd)
    try:
        # 1. cold start
        log("%s: cold start ..." % backend)
        R["cold"] = cold = measure_cold_start(d, expected, args.cold_timeout)
        log("%s: cold start %s s (listening after %s s)" % (backend, fmt(cold.get("t_cold"), "", 2),
                                                            fmt(cold.get("t_listen"), "", 2)))
        port = d.port
        st, body, _t = http_get(port, "/api/runs", 30)
        runs = json.loads(body)
        big_ids = [r["run_id"] for r in runs if r.get("expected_samples") == big]
        R["big_run_id"] = big_id = big_ids[0] if big_ids else None
        R["statuses"] = {s: sum(1 for r in runs if r.get("status") == s) for s in sorted({r.get("status") for r in runs})}
        R["list_bytes"] = len(body)
        # 2. warm list + bare Tornado, same client
        for _ in range(3):
            http_get(port, "/api/runs", 30)
        if args.warmup > 0:
            run_load(args.load, port, "/api/runs", args.warmup, CONNECTIONS, args.wrk_threads)
        log("%s: load %s, %d connections, %.0f s on /api/runs ..." % (backend, args.load, CONNECTIONS, args.duration))
        R["loadavg_list"] = loadavg()
        R["list"] = lst = run_load(args.load, port, "/api/runs", args.duration, CONNECTIONS, args.wrk_threads)
        lst.pop("raw", None)
        log("%s: list %s req/s, p99 %s ms; bare Tornado ..." % (backend, fmt(lst.get("rps"), "", 0), fmt(lst.get("p99_ms"))))
        R["bare"] = bare = run_bare(args.load, args.duration, args.warmup, args.wrk_threads)
        log("%s: bare Tornado %s req/s, p99 %s ms" % (backend, fmt(bare.get("rps"), "", 0), fmt(bare.get("p99_ms"))))
        # 5. detail of the big run: first request, then warm
        det: Dict[str, Any] = {}
        if big_id:
            path = "/api/runs/" + big_id
            st, body, t = http_get(port, path, 120)
            det = {"status": st, "cold_ms": t * 1000.0, "bytes": len(body)}
            try:
                det["samples"] = len(json.loads(body).get("samples") or [])
            except ValueError:
                det["samples"] = None
            warm = []
            for _ in range(args.detail_warm):
                st2, _b, t = http_get(port, path, 120)
                warm.append(t * 1000.0)
                if st2 != 200:
                    det["status"] = st2
            det["warm_ms"] = warm
            det["warm_median_ms"] = statistics.median(warm)
            log("%s: detail %s: cold %.0f ms, warm median %.1f ms, %.1f MB, %s samples"
                % (backend, big_id[:12], det["cold_ms"], det["warm_median_ms"], det["bytes"] / 1e6, det["samples"]))
        R["detail"] = det
        # 4. event latency to a '*' subscriber
        log("%s: WebSocket latency, %d events ..." % (backend, args.ws_events))
        R["loadavg_ws"] = loadavg()
        R["ws"] = ws = asyncio.run(ws_latency(port, make_writer, args.ws_events, POLL_WS))
        log("%s: ws latency %s, %d missing" % (backend, dist_text(dist(ws["latencies_ms"])), ws["missing"]))
        # 6. memory after all of the above
        R["proc"] = d.status()
        R["alive"] = d.proc.poll() is None
    finally:
        R["daemon_log_tail"] = d.log_text(1500)
        d.stop()
    # 1b/5b. more cold starts, each with its first big detail: one start is at the mercy of the
    # machine's speed of the moment (it moves by up to half on this VM)
    R["cold_runs"] = [R["cold"].get("t_cold")]
    R["detail_cold_runs"] = [(R.get("detail") or {}).get("cold_ms")]
    for i in range(max(0, args.cold_repeats - 1)):
        log("%s: cold start %d of %d ..." % (backend, i + 2, args.cold_repeats))
        tc, dms = cold_probe(storage, expected, R.get("big_run_id"), args, env)
        R["cold_runs"].append(tc)
        R["detail_cold_runs"].append(dms)
        log("%s: cold start %s s, first detail %s ms" % (backend, fmt(tc, "", 2), fmt(dms, "", 0)))
    return R


PROBE_SETTLE_S = 5.0  # after the first list: the detail workers and the statistics process start


def cold_probe(storage: str, expected: int, big_id: Optional[str], args, env: Dict[str, str]
               ) -> Tuple[Optional[float], Optional[float]]:
    """A fresh daemon: (seconds to the first complete list, ms of the big run's first detail)."""
    from bench_rest import measure_cold_start

    d = DaemonProcess(storage, poll_interval=POLL_WS, env=env)
    try:
        cold = measure_cold_start(d, expected, args.cold_timeout)
        dms = None
        if big_id and cold.get("t_cold") is not None:
            time.sleep(PROBE_SETTLE_S)  # as in the main run, where the detail comes after the list load
            st, _body, t = http_get(d.port, "/api/runs/" + big_id, 120)
            dms = t * 1000.0 if st == 200 else None
        return cold.get("t_cold"), dms
    finally:
        d.stop()


# --------------------------------------------------------------------------- 3. poll CPU (in-process)

def poll_cpu(storage: str, n: int) -> Dict[str, Any]:
    from themis_daemon.monitor import Monitor
    from themis_daemon.storage import open_sources

    res: Dict[str, Any] = {}
    s = open_sources([storage])
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        r = s.refresh()
        res["first_refresh_cpu_s"] = time.process_time() - c0
        res["first_refresh_wall_s"] = time.perf_counter() - t0
        res["runs"] = len(s.run_ids())
        if r.error:
            raise RuntimeError("first refresh failed: %s" % r.error)
        cpu, thr, wall, changed = [], [], [], 0
        for _ in range(n):
            c0, th0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
            r = s.refresh()
            cpu.append((time.process_time() - c0) * 1000.0)
            thr.append((time.thread_time() - th0) * 1000.0)
            wall.append((time.perf_counter() - w0) * 1000.0)
            changed += len(r.added) + len(r.removed) + len(r.changed)
        res.update(cpu=dist(cpu), thread=dist(thr), wall=dist(wall), changed=changed, n=n,
                   cpu_mean=statistics.fmean(cpu))

        # The monitor's whole tick (refresh on the storage thread + summaries + diff), for context.
        async def ticks() -> List[float]:
            with ThreadPoolExecutor(1, thread_name_prefix="bench-storage") as ex:
                m = Monitor(s, ex, poll_interval=POLL_WS, stalled_after=300.0, publish=lambda ev: None)
                await m.refresh()
                out = []
                for _ in range(min(n, 100)):
                    c0 = time.process_time()
                    await m.refresh()
                    out.append((time.process_time() - c0) * 1000.0)
                return out

        res["tick_cpu"] = dist(asyncio.run(ticks()))
    finally:
        s.close()
    return res


def profile_cold(storage: str, big: int, out: Path) -> Dict[str, Any]:
    """cProfile of an in-process cold scan as the daemon does it (with its scan workers, whose
    own work is then profiled separately: one partition's ``_scan_part`` in this process), and
    of the first detail of the big run with its JSON encoding."""
    import pickle

    from themis_daemon import jsonutil
    from themis_daemon.storage import open_sources
    from themis_daemon.storage.themis4 import source as srcmod

    res: Dict[str, Any] = {}
    s = open_sources([storage])
    text = []
    try:
        src = s.sources[0]
        reader = src.reader
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        s.refresh()
        prof.disable()
        res["scan_profiled_s"] = time.perf_counter() - t0
        res["scan_workers"] = getattr(src, "scan_workers", None)
        res["scan_top"] = _top(prof, 10)
        text.append(_stats_text(prof, "in-process cold scan: open_sources([S]).refresh() (the daemon's first scan)"))
        if hasattr(reader, "cold_mark") and hasattr(srcmod, "_scan_part"):
            # what one scan worker does, here under the profiler (the daemon runs one per core)
            parts = max(2, getattr(src, "scan_workers", 2) or 2)
            fresh = open_sources([storage])
            try:
                r2 = fresh.sources[0].reader
                t0 = time.perf_counter()
                mark = r2.cold_mark()
                res["mark_s"] = time.perf_counter() - t0
                prof = cProfile.Profile()
                t0 = time.perf_counter()
                prof.enable()
                part = srcmod._scan_part(r2.kind, r2.location, r2.options(), mark, 0, parts)
                prof.disable()
                res["worker_profiled_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                blob = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
                res["worker_pickle_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                pickle.loads(blob)
                res["worker_unpickle_s"] = time.perf_counter() - t0
                res["worker_result_mb"] = len(blob) / 1e6
                res["worker_parts"] = parts
                res["worker_top"] = _top(prof, 10)
                text.append(_stats_text(prof, "one scan worker: _scan_part(..., part 0 of %d) in-process" % parts))
                del part, blob
            finally:
                fresh.close()
        big_ids = [r["run_id"] for r in s.summaries() if r.get("expected_samples") == big]
        if big_ids:
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            detail, _v = s.detail_versioned(big_ids[0])
            body = jsonutil.dumpb(detail)
            prof.disable()
            res["detail_profiled_ms"] = (time.perf_counter() - t0) * 1000.0
            res["detail_bytes"] = len(body)
            res["detail_top"] = _top(prof, 10)
            text.append(_stats_text(prof, "first detail_versioned(big run) + jsonutil.dumpb"))
    finally:
        s.close()
    out.write_text("\n\n".join(text))
    res["file"] = str(out)
    return res


def _top(prof: cProfile.Profile, k: int) -> List[str]:
    st = pstats.Stats(prof)
    rows = []
    for (fname, line, name), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((ct, tt, nc, "%s:%d(%s)" % (os.path.relpath(fname, REPO) if fname.startswith(str(REPO)) else
                                               os.path.basename(fname), line, name) if fname != "~" else name))
    rows.sort(reverse=True)
    return ["%8.3f s cum %8.3f s self %9d calls  %s" % (ct, tt, nc, where) for ct, tt, nc, where in rows[:k]]


def _stats_text(prof: cProfile.Profile, title: str) -> str:
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("cumulative").print_stats(30)
    buf.write("\n=== by own time ===\n")
    st.sort_stats("tottime").print_stats(20)
    return "%s\n%s" % (title, buf.getvalue())


# --------------------------------------------------------------------------- 7. read transactions

class Writer:
    """The --_writer child process."""

    def __init__(self, backend: str, target: str, blob_root: str, scratch: Path, tag: str, max_seconds: float,
                 gap: float = 0.0):
        self.out = scratch / ("writer-%s.json" % tag)
        self.stop_file = scratch / ("writer-%s.stop" % tag)
        self.pause_file = scratch / ("writer-%s.pause" % tag)
        for p in (self.out, self.stop_file, self.pause_file, Path(str(self.out) + ".ready")):
            if p.exists():
                p.unlink()
        cfg = {"backend": backend, "target": target, "blob_root": blob_root, "out": str(self.out),
               "stop_file": str(self.stop_file), "pause_file": str(self.pause_file), "max_seconds": max_seconds, "gap": gap,
               "model": "toy-writer-%s-%d-%d" % (tag, os.getpid(), int(time.time()))}
        self.log = open(scratch / ("writer-%s.log" % tag), "wb")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "bench_v4.py"), "--_writer", json.dumps(cfg)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, cwd=str(REPO))
        self.max_seconds = max_seconds

    def wait_started(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        ready = Path(str(self.out) + ".ready")
        while time.monotonic() < deadline:
            if ready.exists():
                return
            if self.proc.poll() is not None:
                raise RuntimeError("writer exited early: %s" % Path(self.log.name).read_text()[-2000:])
            time.sleep(0.02)
        raise RuntimeError("writer did not start within %.0fs" % timeout)

    def pause(self, on: bool) -> None:
        """While the pause file exists the writer writes nothing (checked before every case)."""
        if on:
            self.pause_file.write_text("pause")
            time.sleep(0.3)  # let the case in flight finish
        elif self.pause_file.exists():
            self.pause_file.unlink()

    def finish(self) -> Dict[str, Any]:
        self.stop_file.write_text("stop")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        if self.proc.returncode != 0 or not self.out.exists():
            raise RuntimeError("writer failed (%s): %s" % (self.proc.returncode, Path(self.log.name).read_text()[-2000:]))
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self.log.closed:
            self.log.close()


def stored_runs(backend: str, storage: str) -> int:
    """run_snapshots rows, counted by a fresh connection."""
    if backend == "sqlite":
        return sqlite_count(Path(storage))
    import psycopg

    with psycopg.connect(storage, connect_timeout=10) as conn:
        return conn.execute("SELECT count(*) FROM run_snapshots").fetchone()[0]


def listed_vs_stored(d: DaemonProcess, backend: str, storage: str) -> Dict[str, Any]:
    """After the writer stopped: does the daemon list every run the store holds? (3 polls later)"""
    time.sleep(3 * POLL_TX + 0.5)
    out: Dict[str, Any] = {"stored": stored_runs(backend, storage)}
    try:
        st, body, _t = http_get(d.port, "/api/runs", 30)
        runs = json.loads(body) if st == 200 else []
        out["listed"] = len(runs)
        out["status"] = st
        out["errors"] = sorted({r.get("error") for r in runs if r.get("error")})[:2]
    except (OSError, ValueError) as exc:
        out["error"] = repr(exc)
    try:
        st, body, _t = http_get(d.port, "/metrics", 10)
        for line in body.decode("utf-8", "replace").splitlines():
            if line.startswith("themis_events_orphaned") and " " in line:
                out["orphan_metric"] = line
    except OSError:
        pass
    return out


def read_txlog(path: Path) -> List[Tuple[str, float, float, int, float]]:
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 5:
                    out.append((parts[0], float(parts[1]), float(parts[2]), int(parts[3]), float(parts[4])))
    except OSError:
        pass
    return out


def bench_tx(backend: str, storage: str, writer_target: str, blob_root: str, scratch: Path, seconds: float,
             cold_timeout: float, gap: float = 0.0) -> Dict[str, Any]:
    """Writer alone / with a daemon cold-starting and polling at 0.1 s / alone / with a warm daemon."""
    res: Dict[str, Any] = {"seconds_per_phase": seconds, "poll_interval": POLL_TX, "writer_gap": gap}
    commits: Dict[str, List[float]] = {"alone": [], "cold": [], "steady": []}
    reader: Dict[str, List[float]] = {"cold": [], "steady": [], "stmt": [], "cold_held": [], "steady_held": [],
                                      "cold_locked": [], "steady_locked": []}
    reader_rows: Dict[str, int] = {"cold": 0, "steady": 0}
    per_kind: Dict[str, Dict[str, List[float]]] = {}
    kinds_seen: Dict[str, int] = {}
    errors: List[str] = []
    n_cases = 0
    cmd = None
    children: List[Any] = []

    def daemon(tag: str) -> Tuple[DaemonProcess, Path]:
        txlog = scratch / ("tx-%s.log" % tag)
        if txlog.exists():
            txlog.unlink()
        d = DaemonProcess(storage, poll_interval=POLL_TX,
                          python_args=[str(HERE / "bench_v4.py"), "--_daemon", str(txlog)])
        children.append(d)
        return d, txlog

    phases: Dict[str, List[float]] = {}

    def collect_writer(w: Writer, phase: str, split) -> None:
        nonlocal n_cases
        out = w.finish()
        n_cases += out["cases"]
        if out["n_errors"]:
            errors.extend(out["errors"])
        for t, ms, kind in out["commits"]:
            group = split(t)
            if group:
                commits[group].append(ms)
                phases.setdefault("%s %s" % (phase, group), []).append(ms)
                kinds_seen[kind] = kinds_seen.get(kind, 0) + 1

    def collect_reader(txlog: Path, t_ready: float, t_end: float, t_from: float = 0.0) -> None:
        """Reads between t_from and t_end (while the writer wrote): cold before t_ready."""
        for kind, t, ms, rows, first in read_txlog(txlog):
            if t > t_end or t < t_from:
                continue
            group = "cold" if t < t_ready else "steady"
            if kind.endswith("-error"):
                if "poll" in kind or "stmt" in kind or "mark" in kind:
                    reader[group + "_locked"].append(ms)  # 'database is locked' after 50 ms: retried later
                else:
                    errors.append("reader %s after %.1f ms" % (kind, ms))
                continue
            reader[group].append(ms)
            # SQLite poll: the SHARED lock is taken by its first statement (after any busy wait)
            held = ms - first if kind == "poll" else ms
            reader[group + "_held"].append(held)
            per_kind.setdefault(group, {}).setdefault(kind, []).append(held)
            reader_rows[group] += max(0, rows)

    try:
        # P1: writer alone
        log("%s: tx P1 writer alone %.0f s ..." % (backend, seconds))
        w = Writer(backend, writer_target, blob_root, scratch, "p1", seconds + 120, gap)
        children.append(w)
        w.wait_started()
        time.sleep(seconds)
        collect_writer(w, "P1", lambda t: "alone")

        # P2: writer running, daemon cold-starts into it, then polls every 0.1 s
        log("%s: tx P2 daemon cold start + polling while writing ..." % backend)
        w = Writer(backend, writer_target, blob_root, scratch, "p2", cold_timeout + seconds + 120, gap)
        children.append(w)
        w.wait_started()
        time.sleep(1.0)
        # The daemon validates the store at start-up with one statement (busy timeout 50 ms) and
        # exits 2 if a writer holds the lock: count such start-ups; after START_TRIES of them,
        # pause the writer until the daemon listens (validate passed, the cold scan has not begun).
        res["p2_start_failures"] = []
        res["p2_writer_paused_for_startup"] = False
        for attempt in range(START_TRIES + 1):
            paused = attempt == START_TRIES
            if paused:
                res["p2_writer_paused_for_startup"] = True
                w.pause(True)
                log("%s: pausing the writer until the daemon listens" % backend)
            d, txlog = daemon("p2")
            cmd = " ".join(d.cmd)
            t_spawn = time.time()
            try:
                d.start(cold_timeout)
                break
            except RuntimeError as exc:
                if "locked" not in str(exc) or paused:
                    raise
                res["p2_start_failures"].append(str(exc).strip().splitlines()[-1][:200])
                log("%s: the daemon exited at start-up (store locked by the writer); starting it again" % backend)
                time.sleep(0.1)
            finally:
                if paused:
                    w.pause(False)
        try:
            t_ready = wait_ready(d.port, cold_timeout, d.proc)
            res["p2_cold_scan_s"] = t_ready - t_spawn
            time.sleep(seconds)
        except RuntimeError as exc:  # the cold scan did not finish while the writer wrote
            res["p2_cold_scan_s"] = None
            res["p2_cold_scan_error"] = "%s (%.0f s after the spawn)" % (exc, time.time() - t_spawn)
            log("%s: %s" % (backend, res["p2_cold_scan_error"]))
            t_ready = float("inf")
        t_end = time.time()
        collect_writer(w, "P2", lambda t: "alone" if t < t_spawn else ("cold" if t < t_ready else "steady"))
        res["p2_listed"] = listed_vs_stored(d, backend, storage)
        d.stop()
        collect_reader(txlog, t_ready, t_end)

        # P3: writer alone again
        log("%s: tx P3 writer alone %.0f s ..." % (backend, seconds))
        w = Writer(backend, writer_target, blob_root, scratch, "p3", seconds + 120, gap)
        children.append(w)
        w.wait_started()
        time.sleep(seconds)
        collect_writer(w, "P3", lambda t: "alone")

        # P4: warm daemon polling every 0.1 s, writer starts after it is ready
        log("%s: tx P4 warm daemon polling while writing %.0f s ..." % (backend, seconds))
        d, txlog = daemon("p4")
        d.start(cold_timeout)
        t_ready = wait_ready(d.port, cold_timeout, d.proc)
        w = Writer(backend, writer_target, blob_root, scratch, "p4", seconds + 120, gap)
        children.append(w)
        w.wait_started()
        t_w = time.time()
        time.sleep(seconds)
        t_end = time.time()
        collect_writer(w, "P4", lambda t: "steady")
        res["p4_listed"] = listed_vs_stored(d, backend, storage)
        d.stop()
        collect_reader(txlog, t_ready, t_end, t_from=t_w)  # only the reads while the writer wrote
    finally:
        for c in reversed(children):
            try:
                c.kill() if isinstance(c, Writer) else c.stop()
            except Exception:  # noqa: BLE001 - cleanup
                pass
    res["command"] = cmd
    res["writer_cases"] = n_cases
    res["writer_commit_kinds"] = kinds_seen
    res["errors"] = errors[:10]
    res["n_errors"] = len(errors)
    res["writer"] = {k: dist(v) for k, v in commits.items()}
    res["writer_phases"] = {k: dist(v) for k, v in phases.items()}
    res["reader"] = {k: dist(v) for k, v in reader.items()}
    res["reader_rows"] = reader_rows
    res["reader_kinds"] = {g: {k: dist(v) for k, v in kinds.items()} for g, kinds in per_kind.items()}
    return res


# --------------------------------------------------------------------------- report

def report(backend: str, B: Dict[str, Any], args, vars_: Dict[str, str]) -> Tuple[List[str], List[str]]:
    """Markdown lines of the table, and the misses."""
    rows: List[Tuple[str, str, str, str]] = []
    misses: List[str] = []

    def add(measure: str, figure: str, target: str, command: str, ok: Optional[bool]) -> None:
        rows.append((measure, figure + ok_mark(ok), target, command))
        if ok is False:
            misses.append("%s: %s (target %s)" % (measure, figure, target))

    D = B.get("daemon") or {}
    serve = "`python -m themis_daemon serve --host 127.0.0.1 --port 0 --storage $%s --poll-interval %s`" % (
        "SQLITE" if backend == "sqlite" else "PGURL", POLL_WS)
    wrk = ("`wrk -t%d -c%d -d%ds --latency URL`" % (args.wrk_threads, CONNECTIONS, round(args.duration))
           if args.load == "wrk" else "python asyncio client, %d conns, %.0f s" % (CONNECTIONS, args.duration))
    cold = D.get("cold") or {}
    tc = cold.get("t_cold")
    tgt = TARGETS["cold_s"][backend]
    if D:
        runs_c = D.get("cold_runs") or [tc]
        tcm = median_or_none(runs_c)
        add("cold start to first complete `GET /api/runs` (%s runs), median of %d starts" % (
                cold.get("listed", B.get("expected")), len(runs_c)),
            fmt(tcm, " s", 2) + (" (starts: %s s; the first listening after %s s)" % (
                ", ".join(fmt(x, "", 2) for x in runs_c), fmt(cold.get("t_listen"), "", 2)) if tcm else cold.get("error", "")),
            "< %.0f s" % tgt, serve + " then `GET /api/runs` every 20 ms", tcm is not None and tcm < tgt)
    lst, bare = D.get("list") or {}, D.get("bare") or {}
    rps, p99 = lst.get("rps"), lst.get("p99_ms")
    errs = (lst.get("non2xx") or 0) + (lst.get("socket_errors") or 0)
    if lst:
        add("`GET /api/runs` warm, %d connections (%.0f KB body)" % (CONNECTIONS, (D.get("list_bytes") or 0) / 1024.0),
            "%s req/s, p99 %s ms%s" % (fmt(rps, "", 0), fmt(p99, "", 1), " (%d errors)" % errs if errs else ""),
            ">= %d req/s, p99 < %d ms" % (TARGETS["list_rps"], TARGETS["list_p99_ms"]),
            wrk.replace("URL", "http://127.0.0.1:P/api/runs"),
            rps is not None and p99 is not None and rps >= TARGETS["list_rps"] and p99 < TARGETS["list_p99_ms"] and not errs)
        ratio = (rps / bare["rps"]) if rps and bare.get("rps") else None
        add("bare Tornado `GET /` (small JSON dict), same client, same run",
            "%s req/s, p99 %s ms; daemon/bare = %s" % (fmt(bare.get("rps"), "", 0), fmt(bare.get("p99_ms"), "", 1),
                                                     fmt(ratio, "", 2)),
            "(reference)", "`python bench/bench_v4.py --_bare-tornado 600` + " + wrk.replace("URL", "http://127.0.0.1:P/"),
            None)
    pc = B.get("poll") or {}
    if pc:
        c = pc["cpu"]
        add("CPU of one poll, nothing changed (%d polls)" % pc["n"],
            "median %s ms, p99 %s ms (thread %s ms; wall median %s ms)" % (
                fmt(c["p50"], "", 3), fmt(c["p99"], "", 3), fmt(pc["thread"]["p50"], "", 3), fmt(pc["wall"]["p50"], "", 3)),
            "< %.0f ms" % TARGETS["poll_cpu_ms"], "in-process `open_sources([$%s]).refresh()` x %d, `time.process_time()`"
            % ("SQLITE" if backend == "sqlite" else "PGURL", pc["n"]), c["p50"] is not None and c["p50"] < TARGETS["poll_cpu_ms"])
        t = pc.get("tick_cpu") or {}
        add("  the monitor's whole tick (refresh + summaries + diff)", "median %s ms, p99 %s ms" % (fmt(t.get("p50"), "", 3), fmt(t.get("p99"), "", 3)),
            "(info)", "in-process `await Monitor.refresh()` x %d" % t.get("n", 0), None)
    ws = D.get("ws") or {}
    if ws:
        tgt_ws = POLL_WS * 1000 + TARGETS["ws_extra_ms"]
        d = dist(ws["latencies_ms"])
        add("new event -> `*` WebSocket subscriber (commit -> arrival), poll %.1f s" % POLL_WS,
            dist_text(d, " ms", 0) + (", %d of %d missing" % (ws["missing"], ws["events"]) if ws["missing"] else ""),
            "p99 < %.0f ms" % tgt_ws, "`Themis4Writer` live run, 1 case every 0.5-1.0 s; ws://127.0.0.1:P/ws subscribe `*`",
            d["p99"] is not None and d["p99"] < tgt_ws and not ws["missing"])
    det = D.get("detail") or {}
    if det:
        good = det.get("status") == 200 and det.get("samples") == B.get("big")
        runs_d = D.get("detail_cold_runs") or [det["cold_ms"]]
        dm = median_or_none(runs_d)
        add("`GET /api/runs/{id}` of the %s-case run (%.1f MB), first request, median of %d starts" % (
                format(B.get("big"), ","), det["bytes"] / 1e6, len(runs_d)),
            fmt(dm, " ms", 0) + " (starts: %s ms)" % ", ".join(fmt(x, "", 0) for x in runs_d)
            + ("" if good else " (HTTP %s, %s samples!)" % (det.get("status"), det.get("samples"))),
            "< %.0f ms" % TARGETS["detail_cold_ms"], "`GET /api/runs/<big run id>` (urllib, new connection)",
            good and dm is not None and dm < TARGETS["detail_cold_ms"])
        add("  same, warm (median of %d)" % len(det["warm_ms"]), "%s ms (max %s ms)" % (fmt(det["warm_median_ms"], "", 1), fmt(max(det["warm_ms"]), "", 1)),
            "< %.0f ms" % TARGETS["detail_warm_ms"], "same", good and det["warm_median_ms"] < TARGETS["detail_warm_ms"])
    proc = D.get("proc") or {}
    if proc:
        rss = proc.get("VmRSS", 0) / 1024.0
        tree = proc.get("TreeRSS", proc.get("VmRSS", 0)) / 1024.0
        add("daemon resident memory after all of the above, with its worker processes",
            "%.0f MB (the daemon process %.0f MB, its peak %.0f MB)" % (tree, rss, proc.get("VmHWM", 0) / 1024.0),
            "< %.0f MB" % TARGETS["rss_mb"], "`VmRSS` of /proc/PID/status, summed over the daemon and its children",
            tree < TARGETS["rss_mb"])
    tx = B.get("tx") or {}
    if tx:
        r, w = tx["reader"], tx["writer"]
        wrapper = ("daemon run as `bench_v4.py --_daemon LOG -m themis_daemon serve ... --poll-interval %s` (times %s, "
                   "also in its scan workers) + writer process" % (
                       POLL_TX, "SqliteReader.poll/cold_mark/_query" if backend == "sqlite" else "PostgresReader._run"))
        kinds = tx.get("reader_kinds") or {}

        def breakdown(group: str) -> str:
            items = sorted(kinds.get(group, {}).items(), key=lambda kv: -(kv[1]["max"] or 0))
            return "; by kind (max first): " + ", ".join(
                "%s n=%d p99 %s max %s" % (k, v["n"], fmt(v["p99"], "", 1), fmt(v["max"], "", 1)) for k, v in items)

        for group, title, cmd_ in (
                ("steady", "daemon read transactions while a writer writes, polling every %.1f s" % POLL_TX, wrapper),
                ("cold", "  same, during the daemon's cold scan (started while writing)", "same")):
            held, whole, locked = r[group + "_held"], r[group], r[group + "_locked"]
            figure = dist_text(held, " ms", 2)
            if backend == "sqlite":
                figure += ("; polls counted from the grant of their lock (incl. the wait: p99 %s / max %s ms); "
                           "%d read(s) gave up 'locked' after the 50 ms busy timeout" % (
                               fmt(whole["p99"], "", 1), fmt(whole["max"], "", 1), locked["n"]))
            figure += breakdown(group)
            add(title, figure, "p99 < %.0f ms" % TARGETS["tx_p99_ms"], cmd_,
                held["p99"] is not None and held["p99"] < TARGETS["tx_p99_ms"])
        a, s, c = w["alone"], w["steady"], w["cold"]
        delta = (s["p99"] - a["p99"]) if s["p99"] is not None and a["p99"] is not None else None
        delta_c = (c["p99"] - a["p99"]) if c["p99"] is not None and a["p99"] is not None else None
        ph = tx.get("writer_phases") or {}
        add("  writer commits per phase (p50 / p99 / max ms, n)", "; ".join(
            "%s %s / %s / %s (%d)" % (k, fmt(v["p50"], "", 2), fmt(v["p99"], "", 1), fmt(v["max"], "", 1), v["n"])
            for k, v in ph.items()), "(info: the disk is shared, compare neighbouring phases)",
            "P1 alone, P2 daemon started into the writer, P3 alone, P4 warm daemon", None)
        cs = tx.get("p2_cold_scan_s")
        add("  daemon cold scan while the writer writes (spawn -> /readyz 200)",
            fmt(cs, " s", 1) if cs is not None else tx.get("p2_cold_scan_error", "n/a"),
            "(info; idle: the cold start above)", "P2", None)
        for key, label in (("p2_listed", "P2: daemon cold-started while writing"), ("p4_listed", "P4: warm daemon")):
            lv = tx.get(key)
            if lv:
                good = lv.get("listed") == lv.get("stored")
                add("  runs listed after the writer stopped, %s" % label,
                    "%s of %s stored runs%s" % (lv.get("listed", "n/a"), lv.get("stored"), (" " + lv["orphan_metric"]) if not good and lv.get("orphan_metric") else ""),
                    "all (correctness)", "`GET /api/runs` vs `SELECT count(*) FROM run_snapshots`", good)
        fails = tx.get("p2_start_failures") or []
        if fails:
            paused = tx.get("p2_writer_paused_for_startup")
            add("daemon start-up while the writer writes", "%d of %d start(s) exited 2%s: `%s`" % (
                len(fails), len(fails) + (0 if paused else 1),
                " (then the writer was paused until the daemon listened)" if paused else "",
                fails[0].split(": ", 1)[-1]), "(robustness, no target)",
                "same daemon command, started during the writer's commits", None)
        add("writer commit latency: alone / daemon polling / daemon cold scan",
            "p99 %s / %s / %s ms (max %s / %s / %s; p50 %s / %s / %s)" % (
                fmt(a["p99"], "", 1), fmt(s["p99"], "", 1), fmt(c["p99"], "", 1),
                fmt(a["max"], "", 1), fmt(s["max"], "", 1), fmt(c["max"], "", 1),
                fmt(a["p50"], "", 2), fmt(s["p50"], "", 2), fmt(c["p50"], "", 2)),
            "(info) Δp99 polling %s ms, cold %s ms" % (fmt(delta, "", 1), fmt(delta_c, "", 1)),
            "writer: `bench_v4.py --_writer` (Themis4Writer live, %s, %d cases, n=%d/%d/%d commits%s)" % (
                "flat out" if not tx.get("writer_gap") else "%.3f s between cases" % tx["writer_gap"], tx["writer_cases"], a["n"], s["n"], c["n"], ", %d errors" % tx["n_errors"] if tx["n_errors"] else ""),
            None)
    widths = [max(len(r[i]) for r in rows + [("measure", "figure", "target", "command")]) for i in range(4)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(("measure", "figure", "target", "command"), widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    return lines, misses


# --------------------------------------------------------------------------- main

def bench_backend(backend: str, args, work: Path, pg: Optional[PgStores]) -> Dict[str, Any]:
    B: Dict[str, Any] = {"backend": backend, "runs": args.runs, "cases": args.cases, "big": args.big_run,
                         "expected": args.runs + 1, "loadavg_start": loadavg()}
    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="run-%s-" % backend, dir=str(work)))
    copy_db = None
    try:
        if backend == "sqlite":
            from themis_daemon.demo.themis4 import SqliteSink, Themis4Writer

            store, build_s, build_cmd = ensure_sqlite(work, args.runs, args.cases, args.big_run)
            B["store_mb"] = store.stat().st_size / 1e6
            working = scratch / "store.sqlite3"
            t1 = time.perf_counter()
            shutil.copyfile(store, working)
            # Written out before the daemon starts: the kernel writing 1.4 GB of dirty pages back
            # (30 s later, or during the next measurement) took CPU from the first cold start.
            os.sync()
            B["copy_s"] = time.perf_counter() - t1
            storage = str(working)
            writer_target, blob_root = storage, ""

            def make_writer():
                sink = SqliteSink(storage)
                return Themis4Writer(sink), sink
            B["vars"] = {"SQLITE": "%s (copy of %s)" % (storage, store)}
        else:
            from themis_daemon.demo.themis4 import PostgresSink, Themis4Writer

            assert pg is not None
            name, build_s, build_cmd, blobs = pg.ensure(args.runs, args.cases, args.big_run)
            copy_db, storage, writer_target = pg.working_copy(name)
            blob_root = str(scratch / "live-blobs")
            B["store_mb"] = int(pg.server.psql(copy_db, "SELECT pg_database_size(current_database())")) / 1e6

            def make_writer():
                sink = PostgresSink(writer_target, blob_root)
                return Themis4Writer(sink), sink
            B["vars"] = {"PGURL": "%s (database created from %s)" % (redact(storage), name)}
        B["build_s"] = build_s
        B["build_cmd"] = " ".join(build_cmd)
        only = set(args.only.split(","))
        # 1, 2, 5, 4, 6 with one daemon
        if "daemon" in only:
            B["daemon"] = daemon_run(backend, storage, B["expected"], args.big_run, args, make_writer)
        # 3. poll CPU, in-process (the store now also holds the WebSocket live run)
        if "poll" in only:
            log("%s: poll CPU, in-process, %d polls ..." % (backend, args.polls))
            B["poll"] = poll_cpu(storage, args.polls)
            log("%s: poll CPU median %s ms (first refresh %.2f s wall)" % (
                backend, fmt(B["poll"]["cpu"]["p50"], "", 3), B["poll"]["first_refresh_wall_s"]))
            gc.collect()
        # 7. read transactions while writing
        if "tx" in only:
            B["loadavg_tx"] = loadavg()
            B["tx"] = bench_tx(backend, storage, writer_target, blob_root, scratch, args.tx_seconds, args.cold_timeout,
                               args.writer_gap)
            log("%s: reader tx steady %s; cold %s" % (backend, dist_text(B["tx"]["reader"]["steady"], " ms", 2),
                                                       dist_text(B["tx"]["reader"]["cold"])))
        # profiles: always when asked, else when the cold start or the cold detail missed
        D = B.get("daemon") or {}
        tc = median_or_none(D.get("cold_runs") or [(D.get("cold") or {}).get("t_cold")])
        miss_cold = bool(D) and (tc is None or tc >= TARGETS["cold_s"][backend])
        dm = median_or_none(D.get("detail_cold_runs") or [(D.get("detail") or {}).get("cold_ms")])
        miss_det = dm is not None and dm >= TARGETS["detail_cold_ms"]
        if args.profile or miss_cold or miss_det:
            log("%s: profiling an in-process cold scan ..." % backend)
            out_dir = work if args.work else HERE / "out"
            out_dir.mkdir(parents=True, exist_ok=True)
            B["profile"] = profile_cold(storage, args.big_run, out_dir / ("bench_v4-profile-%s.txt" % backend))
            B["profile"]["why"] = [w for w, m in (("cold start", miss_cold), ("detail cold", miss_det)) if m] or ["--profile"]
    finally:
        if copy_db and pg is not None:
            pg.drop(copy_db)
        shutil.rmtree(scratch, ignore_errors=True)
    B["loadavg_end"] = loadavg()
    B["elapsed_s"] = time.perf_counter() - t0
    return B


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_daemon"]:
        return daemon_wrapper(argv[1], argv[2:])
    if argv[:1] == ["--_writer"]:
        return writer_main(argv[1])
    if argv[:1] == ["--_bare-tornado"]:
        return bare_tornado_main(float(argv[1]) if len(argv) > 1 else 600.0)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--runs", type=int, default=None, help="runs (default 200, --quick 20), the last 2 left running")
    p.add_argument("--cases", type=int, default=None, help="cases per run (default 1000, --quick 200)")
    p.add_argument("--big-run", type=int, default=None, help="cases of the extra big run (default 10000, --quick 2000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 x 200 + 2,000, shorter phases")
    p.add_argument("--work", help="keep the built stores (and the PostgreSQL cluster) here; default a temp dir, removed")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.add_argument("--load", choices=("wrk", "python", "auto"), default="auto", help="load generator (auto: wrk if installed)")
    p.add_argument("--wrk-threads", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)))
    p.add_argument("--duration", type=float, default=None, help="seconds of measured load (default 10, --quick 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first (default 2)")
    p.add_argument("--polls", type=int, default=None, help="polls timed for 3. (default 500, --quick 100)")
    p.add_argument("--ws-events", type=int, default=None, help="live cases written for 4. (default 30, --quick 8)")
    p.add_argument("--detail-warm", type=int, default=10, help="warm detail requests (default 10)")
    p.add_argument("--cold-repeats", type=int, default=3,
                   help="cold starts, each with a first big detail; the median is judged (default 3)")
    p.add_argument("--tx-seconds", type=float, default=None, help="seconds per writer phase for 7. (default 8, --quick 3)")
    p.add_argument("--writer-gap", type=float, default=0.0, help="seconds between the writer's cases in 7. (default 0: flat out)")
    p.add_argument("--cold-timeout", type=float, default=300.0)
    p.add_argument("--no-access-log", action="store_true", help="THEMIS_LOGGING_ACCESS_LOG=false (default: daemon defaults)")
    p.add_argument("--only", default="daemon,poll,tx", help="comma list of daemon (1,2,4,5,6), poll (3), tx (7); default all")
    p.add_argument("--profile", action="store_true", help="print the cold-scan profile even if every target is met")
    args = p.parse_args(argv)
    args.runs = args.runs if args.runs is not None else (20 if args.quick else 200)
    args.cases = args.cases if args.cases is not None else (200 if args.quick else 1000)
    args.big_run = args.big_run if args.big_run is not None else (2000 if args.quick else 10000)
    args.duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    args.polls = args.polls if args.polls is not None else (100 if args.quick else 500)
    args.ws_events = args.ws_events if args.ws_events is not None else (8 if args.quick else 30)
    args.tx_seconds = args.tx_seconds if args.tx_seconds is not None else (3.0 if args.quick else 8.0)
    if args.load == "auto":
        args.load = "wrk" if shutil.which("wrk") else "python"
    elif args.load == "wrk" and not shutil.which("wrk"):
        p.error("--load wrk: wrk is not installed (apt-get install -y wrk), use --load python")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]

    t_all = time.perf_counter()
    keep = args.work is not None
    work = Path(args.work).resolve() if keep else Path(tempfile.mkdtemp(prefix="themis-bench-v4-"))
    work.mkdir(parents=True, exist_ok=True)
    command = "python bench/bench_v4.py " + " ".join(argv)
    R: Dict[str, Any] = {"command": command.strip(), "work": str(work), "loadavg_start": loadavg(), "code": code_version(),
                         "cpus": os.cpu_count(), "load_tool": args.load, "backends": {}}
    log("work dir %s; load average %s; %d CPUs" % (work, R["loadavg_start"], os.cpu_count() or 0))
    pg: Optional[PgStores] = None
    try:
        for backend in backends:
            try:
                if backend == "postgres" and pg is None:
                    pg = PgStores(work, keep)
                    pg.start()
                R["backends"][backend] = bench_backend(backend, args, work, pg)
            except Exception as exc:  # report what we have; the other backend still runs
                import traceback

                traceback.print_exc()
                R["backends"][backend] = {"backend": backend, "error": "%s: %s" % (type(exc).__name__, exc),
                                          "expected": args.runs + 1, "big": args.big_run}
    finally:
        if pg is not None:
            pg.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    R["loadavg_end"] = loadavg()
    R["elapsed_s"] = time.perf_counter() - t_all

    # ---- report
    print()
    print("# themis-daemon on Themis 4 stores (%s)" % ("quick" if args.quick else "full"))
    print()
    print("command: `%s`  " % R["command"])
    print("store: %d runs x %s cases x %d metrics (last %d running) + one %s-case run = %d runs; load tool: %s  "
          % (args.runs, format(args.cases, ","), METRICS, IN_PROGRESS, format(args.big_run, ","), args.runs + 1, args.load))
    print("machine: %d CPUs, load average %s at start, %s at end; total time %.0f s; code: %s  "
          % (os.cpu_count() or 0, R["loadavg_start"], R["loadavg_end"], R["elapsed_s"], R["code"]))
    if code_version() != R["code"]:
        print("WARNING: themis_daemon/ changed during the run (now %s): figures may mix versions  " % code_version())
    all_misses = []
    for backend, B in R["backends"].items():
        print()
        print("## %s" % ("SQLite" if backend == "sqlite" else "PostgreSQL"))
        print()
        if "error" in B:
            print("FAILED: %s" % B["error"])
            all_misses.append("%s: benchmark failed" % backend)
            continue
        for k, v in B.get("vars", {}).items():
            print("$%s = %s  " % (k, v))
        print("store %.0f MB, %s; load average %s (start) / %s (list load) / %s (tx) / %s (end); %.0f s  "
              % (B.get("store_mb", 0), "built in %.0f s: `%s`" % (B["build_s"], B["build_cmd"]) if B.get("build_s")
                 else "reused (`%s`)" % B["build_cmd"], B["loadavg_start"], (B.get("daemon") or {}).get("loadavg_list", "?"),
                 B.get("loadavg_tx", "?"), B["loadavg_end"], B["elapsed_s"]))
        print()
        lines, misses = report(backend, B, args, B.get("vars", {}))
        print("\n".join(lines))
        all_misses += ["%s: %s" % (backend, m) for m in misses]
        D = B.get("daemon") or {}
        if D and not D.get("alive", True):
            print("\nWARNING: the daemon was not running at the end; log tail:\n" + D.get("daemon_log_tail", ""))
        prof = B.get("profile")
        if prof:
            print()
            why = "--profile" if prof["why"] == ["--profile"] else "%s missed" % " and ".join(prof["why"])
            print("cProfile (%s), in-process cold scan (%s scan workers): %.2f s under the profiler; "
                  "top 10 by cumulative time:" % (why, prof.get("scan_workers"), prof["scan_profiled_s"]))
            print("```")
            print("\n".join(prof["scan_top"]))
            print("```")
            if prof.get("worker_top"):
                print("one scan worker's share (`_scan_part`, part 0 of %d, in-process): %.2f s under the profiler; "
                      "cold_mark %.2f s; its result pickles to %.0f MB in %.2f s, unpickles in %.2f s; top 10 by cumulative time:"
                      % (prof["worker_parts"], prof["worker_profiled_s"], prof["mark_s"], prof["worker_result_mb"],
                         prof["worker_pickle_s"], prof["worker_unpickle_s"]))
                print("```")
                print("\n".join(prof["worker_top"]))
                print("```")
            if prof.get("detail_top"):
                print("first detail of the big run + JSON encoding: %.0f ms under the profiler, top 10 by cumulative time:"
                      % prof["detail_profiled_ms"])
                print("```")
                print("\n".join(prof["detail_top"]))
                print("```")
            print("full profile: %s" % prof["file"])
    print()
    print_misses(all_misses)
    if args.json:
        for B in R["backends"].values():
            (B.get("daemon") or {}).pop("daemon_log_tail", None)
        with open(args.json, "w") as fh:
            json.dump(R, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
