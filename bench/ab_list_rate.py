#!/usr/bin/env python
"""The warm `GET /api/runs` rate of two checkouts of the daemon, side by side (a report, not a test).

    python bench/ab_list_rate.py STORE REPO_A REPO_B [--rounds 8] [--duration 5]

This machine's speed moves by up to half within minutes, so two figures taken minutes apart
cannot tell a change of a few percent. Here both daemons serve STORE at the same time (each
started with an empty cache directory, from its own checkout: `git worktree add /tmp/a REV`),
and each round loads a bare Tornado handler returning a small JSON dict, then A, then B (B
first in odd rounds), with wrk -t2 -c32 on 127.0.0.1. Prints each round, the medians and the
rounds B won. Every process it starts is stopped in a finally block; the bare server also stops by itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import HOST, DaemonProcess  # noqa: E402
from bench_rest import run_wrk  # noqa: E402
from bench_v4 import BareTornado  # noqa: E402


def start(repo: str, store: str, timeout: float) -> DaemonProcess:
    """A daemon of checkout `repo` on `store` with an empty cache dir, once `/readyz` says 200."""
    import urllib.request

    d = DaemonProcess(store, env={"XDG_CACHE_HOME": tempfile.mkdtemp(prefix="ab-cache-")}, cwd=repo)
    d.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen("http://%s:%d/readyz" % (HOST, d.port), timeout=10) as r:
                if r.status == 200:
                    return d
        except OSError:
            pass
        time.sleep(0.2)
    d.stop()
    raise RuntimeError("the daemon of %s was not ready within %.0f s" % (repo, timeout))


def main(argv: "List[str] | None" = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("repo_a")
    p.add_argument("repo_b")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per figure (default 5)")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    args = p.parse_args(argv)

    procs: List[DaemonProcess] = []
    try:
        bare = BareTornado(max_seconds=args.rounds * 3 * (args.duration + 5) + args.ready_timeout * 2 + 120)
        procs.append(bare)
        bare.start()
        a = start(args.repo_a, args.store, args.ready_timeout)
        procs.append(a)
        b = start(args.repo_b, args.store, args.ready_timeout)
        procs.append(b)
        urls = {"bare": "/", "A": "/api/runs", "B": "/api/runs"}
        ports = {"bare": bare.port, "A": a.port, "B": b.port}
        for name in ("A", "B"):  # warm-up: the first answers record what later ones replay
            run_wrk(ports[name], urls[name], 2, 32, 2)
        res: Dict[str, List[float]] = {"bare": [], "A": [], "B": []}
        for r in range(args.rounds):
            order = ["bare", "A", "B"] if r % 2 == 0 else ["bare", "B", "A"]
            for name in order:
                res[name].append(run_wrk(ports[name], urls[name], args.duration, 32, 2)["rps"] or 0.0)
            print("round %d: bare %.0f, A %.0f (%.2f x), B %.0f (%.2f x) req/s"
                  % (r + 1, res["bare"][-1], res["A"][-1], res["A"][-1] / res["bare"][-1],
                     res["B"][-1], res["B"][-1] / res["bare"][-1]), flush=True)
        med = {k: statistics.median(v) for k, v in res.items()}
        wins = sum(1 for x, y in zip(res["A"], res["B"]) if y > x)
        print("medians: bare %.0f, A %.0f, B %.0f req/s; B/A %.2f; B faster in %d of %d rounds"
              % (med["bare"], med["A"], med["B"], med["B"] / med["A"], wins, args.rounds))
    finally:
        for proc in procs:
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
