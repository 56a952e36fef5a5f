#!/usr/bin/env python
"""Build a big Themis 4.0.2 run store for benchmarks.

    python bench/make_store_v4.py OUT.sqlite3 --runs 200 --cases 1000 --metrics 2
        [--in-progress 2] [--failed F] [--pending P] [--big-run 10000] [--samples 1]
        [--no-stage-cache]
    python bench/make_store_v4.py --jsonl DIR ...
    python bench/make_store_v4.py --postgres URL [--blob-root DIR] ...

Every run is written with ``Themis4Writer.bulk_run`` (one transaction per run; the rows are
exactly those a live Themis writer produces, see ``themis_daemon/demo/themis4.py``). Runs
cycle over 20 toy models, 20 runs per dataset ``arith-NN`` (all tagged benchmark_id
``bench-arith``), so every dataset has a leaderboard of 20 models and later models get
score-stage cache hits from earlier ones, as in a real store. Every 9th run has a few
generation failures and every 13th a few score failures (both end ``partial_failure``).
The last ``--in-progress`` runs stop at ~55 % with the next wave generating (a killed or
live writer: status ``running``); the ``--failed`` runs before them end with ``run_failed``
at ~40 %, the ``--pending`` runs before those have a snapshot only. ``--big-run N`` adds one
completed run of N cases (before the in-progress ones). Times: run i starts 20 minutes after
run i-1, the last one about now; events are 250 ms apart.
Prints elapsed time and store size at the end.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from themis_daemon.demo.themis4 import (  # noqa: E402
    METRIC_CATALOG,
    JsonlSink,
    PostgresSink,
    SqliteSink,
    SteppingClock,
    Themis4Writer,
    make_arith_cases,
)

MODELS = ["toy-" + n for n in (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon")]
METRICS = list(METRIC_CATALOG)  # exact_match, f1, bleu, format_closeness
BENCHMARK = "bench-arith"


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(dirpath, name))
    return total


def _plan(args):
    """(index, kind, cases-count) per run in write order."""
    n = args.runs
    plan = []
    for i in range(n):
        if i >= n - args.in_progress:
            kind = "running"
        elif i >= n - args.in_progress - args.failed:
            kind = "failed"
        elif i >= n - args.in_progress - args.failed - args.pending:
            kind = "pending"
        else:
            kind = "completed"
        plan.append((i, kind, args.cases))
    if args.big_run:
        plan.insert(n - args.in_progress, (-1, "big", args.big_run))
    return plan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", help="SQLite file to create (Themis' default backend)")
    p.add_argument("--jsonl", metavar="DIR", help="write a JSONL store root instead")
    p.add_argument("--postgres", metavar="URL", help="fill this (empty) PostgreSQL database instead")
    p.add_argument("--blob-root", default=None, help="PostgreSQL blob folder (default: postgres-blobs next to CWD)")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--metrics", type=int, default=2, help="number of metrics (1..%d)" % len(METRICS))
    p.add_argument("--samples", type=int, default=1, help="candidates per case (majority vote)")
    p.add_argument("--in-progress", type=int, default=0, help="leave the last K runs running")
    p.add_argument("--failed", type=int, default=0, help="F runs (before the in-progress ones) end run_failed")
    p.add_argument("--pending", type=int, default=0, help="P runs (before the failed ones) are snapshot only")
    p.add_argument("--big-run", type=int, default=0, metavar="N", help="add one completed run of N cases")
    p.add_argument("--no-stage-cache", action="store_true", help="skip the cross-run stage cache (smaller)")
    args = p.parse_args(argv)

    targets = [t for t in (args.out, args.jsonl, args.postgres) if t]
    if len(targets) != 1:
        p.error("give exactly one of OUT.sqlite3, --jsonl DIR, --postgres URL")
    if not 1 <= args.metrics <= len(METRICS):
        p.error("--metrics must be between 1 and %d" % len(METRICS))
    if args.in_progress + args.failed + args.pending > args.runs:
        p.error("--in-progress + --failed + --pending must not exceed --runs")
    if args.out:
        if os.path.exists(args.out):
            p.error("%s exists; choose a new file" % args.out)
        sink = SqliteSink(args.out)
    elif args.jsonl:
        if os.path.isdir(os.path.join(args.jsonl, "runs")) and os.listdir(os.path.join(args.jsonl, "runs")):
            p.error("%s already holds runs; choose a new folder" % args.jsonl)
        sink = JsonlSink(args.jsonl)
    else:
        sink = PostgresSink(args.postgres, args.blob_root or "postgres-blobs")
    writer = Themis4Writer(sink, stage_cache=not args.no_stage_cache)
    if args.postgres:
        if sink.conn.execute("SELECT count(*) FROM run_snapshots").fetchone()[0]:
            p.error("the database already holds runs; use an empty one")
        sink.conn.commit()

    metrics = METRICS[: args.metrics]
    plan = _plan(args)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    base = now - _dt.timedelta(minutes=20 * len(plan))
    datasets = {}
    t0 = time.perf_counter()
    total_cases = 0
    for n, (i, kind, n_cases) in enumerate(plan, 1):
        if kind == "big":
            model, dataset_id, variant = MODELS[0], "arith-big", 99
        else:
            k = i // len(MODELS)
            model, dataset_id, variant = MODELS[i % len(MODELS)], "arith-%02d" % k, k + 1
        key = (dataset_id, n_cases)
        if key not in datasets:
            datasets[key] = make_arith_cases(n_cases, variant=variant)
        cases = datasets[key]
        ids = [c[0] for c in cases]
        fails, errors = {}, {}
        if kind != "big" and i % 9 == 4:
            fails = {c: "provider error 400: request rejected by content filter (case %s)" % c
                     for c in ids[7::max(1, n_cases // 3)]}
        if kind != "big" and i % 13 == 6:
            errors = {c: {metrics[-1]: "metric backend timed out after 30s"} for c in ids[11::max(1, n_cases // 5)]}
        outcome = {"big": "completed", "completed": "completed"}.get(kind, kind)
        stop = None
        if kind == "running":
            stop = n_cases * 55 // 100 + 3
        elif kind == "failed":
            stop = n_cases * 40 // 100
        writer.bulk_run(
            model=model, dataset_id=dataset_id, cases=cases, metrics=metrics, samples=args.samples,
            benchmark_id=BENCHMARK, outcome=outcome, stop_after=stop, fail_generation=fails, score_errors=errors,
            error_message="budget guard: token budget exhausted after %d cases" % (stop or 0),
            clock=SteppingClock(base + _dt.timedelta(minutes=20 * (n - 1)), _dt.timedelta(milliseconds=250)),
            environment={"bench": "make_store_v4", "run_index": str(i)},
        )
        total_cases += n_cases
        if n % 20 == 0 or n == len(plan):
            print("  %d/%d runs (%.1fs)" % (n, len(plan), time.perf_counter() - t0), file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0

    if args.out:
        writer.close()
        size, where = os.path.getsize(args.out), args.out
    elif args.jsonl:
        size, where = _dir_size(Path(args.jsonl)), args.jsonl
    else:
        db = sink.conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        sink.conn.commit()
        size = db + _dir_size(sink.blob_root)
        where = "%s (+ blobs in %s)" % (args.postgres.split("@")[-1], sink.blob_root)
        writer.close()
    print("wrote %d runs (%d cases, %d metrics, %d sample(s)) to %s in %.1fs: %.1f MB, %.2fs/run"
          % (len(plan), total_cases, len(metrics), args.samples, where, elapsed, size / 1e6,
             elapsed / max(1, len(plan))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
