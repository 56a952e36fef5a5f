#!/usr/bin/env python
"""CPU per run of the Themis 1.x first read, two checkouts side by side (a report, not a test).

    python bench/ab_scan_cpu.py STORE REPO_A REPO_B [--runs 30] [--rounds 10]

A cold start of a big store is the first read of every run on every core, so its wall time
follows the CPU one run's read costs. This machine's speed moves by up to half within minutes:
here one process loads the reader of both checkouts (`git worktree add /tmp/a REV`) and reads
the same runs of STORE with each in turn (B first in odd rounds), the files already in the page
cache. Prints the median CPU milliseconds per run of each and B/A. Garbage collection is off, as
in the daemon's scan processes.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple


def reader_of(repo: str) -> Any:
    """The RunState class of checkout `repo` (its modules are imported afresh)."""
    for name in [m for m in sys.modules if m == "themis_daemon" or m.startswith("themis_daemon.")]:
        del sys.modules[name]
    sys.path.insert(0, repo)
    try:
        return importlib.import_module("themis_daemon.storage.themis1.run").RunState
    finally:
        sys.path.remove(repo)


def run_dirs(store: Path, limit: int) -> List[Tuple[str, str, str]]:
    out = []
    for exp in sorted((store / "experiments").iterdir()):
        runs = exp / "runs"
        if runs.is_dir():
            out += [(str(r), r.name, exp.name) for r in sorted(runs.iterdir()) if r.is_dir()]
    step = max(1, len(out) // limit)  # spread over the store: finished and in-progress runs
    return out[::step][:limit]


def cpu_per_run(state_cls: Any, runs: List[Tuple[str, str, str]]) -> float:
    t = time.process_time()
    for path, run_id, exp in runs:
        s = state_cls(path, run_id, exp)
        s.refresh()
        s.summary()
    return (time.process_time() - t) / len(runs) * 1000


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", type=Path)
    p.add_argument("repo_a")
    p.add_argument("repo_b")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args(argv)
    runs = run_dirs(args.store, args.runs)
    if not runs:
        p.error("no runs under %s/experiments/*/runs" % args.store)
    for path, _, _ in runs:  # into the page cache
        for root, _, files in os.walk(path):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    while fh.read(1 << 20):
                        pass
    a, b = reader_of(args.repo_a), reader_of(args.repo_b)
    gc.disable()
    got = {"A": [], "B": []}
    for i in range(args.rounds):
        order = [("A", a), ("B", b)] if i % 2 == 0 else [("B", b), ("A", a)]
        for name, cls in order:
            got[name].append(cpu_per_run(cls, runs))
        print("round %d: A %.2f ms, B %.2f ms per run" % (i + 1, got["A"][-1], got["B"][-1]), flush=True)
    ma, mb = statistics.median(got["A"]), statistics.median(got["B"])
    print("%d runs of %s; medians of %d rounds: A (%s) %.2f ms, B (%s) %.2f ms CPU per run; B/A = %.3f; "
          "B took less in %d of %d rounds" % (len(runs), args.store, args.rounds, args.repo_a, ma, args.repo_b, mb,
                                               mb / ma, sum(x < y for x, y in zip(got["B"], got["A"])), args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
