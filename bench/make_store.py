#!/usr/bin/env python
"""Build a big Themis 1.4.0 storage root for benchmarks.

    python bench/make_store.py OUT_DIR --runs 200 --samples 1000 [--metrics 3]
        [--compression gzip|none] [--in-progress K] [--failed F] [--sqlite] [--jobs N]

Every run is written with ``themis_daemon.demo.writer.write_completed_run`` (the same bytes
as step-by-step writing, each file written once). Runs are spread over ``--jobs`` worker
processes (default: number of CPUs). The last ``--in-progress`` runs are left
``in_progress`` half-way (a killed writer), the ``--failed`` runs before them end ``failed``.
Prints elapsed time and bytes per run at the end.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from themis_daemon.demo.writer import (  # noqa: E402
    METRIC_CATALOG,
    FixedStepClock,
    upsert_sqlite,
    write_completed_run,
)


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(dirpath, name))
    return total


def _build_one(job):
    out, index, run_id, samples, metrics, compression, status, base = job
    clock = FixedStepClock(base + _dt.timedelta(minutes=index), _dt.timedelta(microseconds=1537))
    w = write_completed_run(
        out,
        run_id,
        samples,
        status=status,
        # in-progress/failed runs stop mid-way, with evaluation lagging (not a multiple of 100)
        n_generated=None if status == "completed" else max(1, samples * 11 // 20 + 7),
        seed=index,
        clock=clock,
        compression=compression,
        metrics=metrics,
        provider="fake" if index % 3 else "fake-flaky",
        template="What is {a} {op} {b}?" if index % 4 else "What is {b} {op} {a}?",
        accuracy=0.55 + 0.4 * ((index * 37) % 100) / 100.0,
        fail_ids=("q%04d" % (5 + index % 50),) if index % 3 == 0 else (),
    )
    return run_id, w.metadata, _dir_size(w.run_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--metrics", type=int, default=3, help="number of metrics (1..%d)" % len(METRIC_CATALOG))
    p.add_argument("--compression", choices=("gzip", "none"), default="gzip")
    p.add_argument("--in-progress", type=int, default=0, help="leave the last K runs in progress")
    p.add_argument("--failed", type=int, default=0, help="make F runs (before the in-progress ones) fail")
    p.add_argument("--sqlite", action="store_true", help="also write experiments.db (as Themis does by default)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--prefix", default="bench")
    args = p.parse_args(argv)

    if not 1 <= args.metrics <= len(METRIC_CATALOG):
        p.error("--metrics must be between 1 and %d" % len(METRIC_CATALOG))
    out = Path(args.out_dir)
    runs_dir = out / "experiments" / "default" / "runs"
    width = max(4, len(str(args.runs)))
    ids = ["%s-%0*d" % (args.prefix, width, i) for i in range(args.runs)]
    clash = [r for r in ids if (runs_dir / r).exists()]
    if clash:
        p.error("runs already exist in %s (e.g. %s); use another OUT_DIR or --prefix" % (runs_dir, clash[0]))
    out.mkdir(parents=True, exist_ok=True)
    metrics = METRIC_CATALOG[: args.metrics]
    base = _dt.datetime(2026, 1, 1, 9, 0, 0)
    jobs = []
    for i, run_id in enumerate(ids):
        if i >= args.runs - args.in_progress:
            status = "in_progress"
        elif i >= args.runs - args.in_progress - args.failed:
            status = "failed"
        else:
            status = "completed"
        jobs.append((str(out), i, run_id, args.samples, metrics, args.compression, status, base))

    t0 = time.perf_counter()
    results = []
    if args.jobs <= 1 or len(jobs) <= 1:
        results = [_build_one(j) for j in jobs]
    else:
        with mp.get_context("fork" if sys.platform != "win32" else "spawn").Pool(args.jobs) as pool:
            for n, res in enumerate(pool.imap_unordered(_build_one, jobs, chunksize=1), 1):
                results.append(res)
                if n % 20 == 0:
                    print("  %d/%d runs (%.1fs)" % (n, len(jobs), time.perf_counter() - t0), file=sys.stderr)
    if args.sqlite:
        for _run_id, metadata, _size in sorted(results, key=lambda r: r[1]["created_at"]):
            upsert_sqlite(out, metadata)
    elapsed = time.perf_counter() - t0
    total = sum(r[2] for r in results)
    n = max(1, len(results))
    print(
        "wrote %d runs x %d samples (%d metrics, %s) to %s in %.1fs: %.1f MB total, %.2f MB/run, %.2fs/run wall"
        % (len(results), args.samples, args.metrics, args.compression, out, elapsed, total / 1e6, total / 1e6 / n, elapsed / n)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
