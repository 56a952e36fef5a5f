"""Calibration of the compare engine: null rejection rates and interval coverage by simulation.

    python bench/calibrate_compare.py            # full: 1,000 replicates, n = 10, 30, 100, 1000
    python bench/calibrate_compare.py --quick    # 200 replicates, n = 10, 30, 100, B = 1,000 (~1 min)
    python bench/calibrate_compare.py --reps 2000 --sizes 10 30 --tests bootstrap t_test --jobs 2

Each replicate is a pair of runs scored on the same n samples, built as ``store.scores()`` builds
them ({metric: {sample_id: [score]}}), and compared by ``compare_runs`` with the keyword arguments
the HTTP handler passes (config defaults for seed, n_resamples and max_work); replicates are the
metrics of one request with ``correction: "none"`` (every row has its own random stream, so rows
are independent and the raw p-value is each row's own test).

Data shapes (paired: a per-sample difficulty shared by both runs plus per-run noise):

* ``normal``: difficulty N(0,1), noise N(0,1); alternative: run A + 0.5.
* ``t3``: difficulty N(0,1), noise t(3); alternative: run A + 0.5.
* ``lognormal``: difficulty LN(0,1), noise LN(0,1) (skewed scores, differences symmetric under the
  null); alternative: run A's noise doubled, so the differences are right-skewed with mean sqrt(e).
* ``bern0.3`` / ``bern0.9``: 0/1 scores, P(1) = 0.3 / 0.9, correlated through a Gaussian copula
  with latent correlation 0.5 (the same items are hard for both runs); alternative: P(1) of run A
  0.4 / 0.8.

Printed per (shape, n, test): the rejection rate under the null at alpha = 0.05 with its binomial
SE (flagged when above alpha + 2 SE), the coverage of the reported interval under the null and
under the alternative (a row without an interval counts as not covering; an unbounded one as
covering), and how many rows with an interval that is the test's own (``ci_matches_test``) have
"interval excludes 0" != "p < alpha" (must be 0).

Run time is bounded by the replicate count: one replicate costs at most n x B element operations
per test; the full run took 13 minutes on one core of the 2-core VM (``--jobs 2`` halves it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import special

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from themis_daemon.config import CompareSettings  # noqa: E402
from themis_daemon.stats import compare_runs  # noqa: E402

ALPHA = 0.05
SHAPES = ("normal", "t3", "lognormal", "bern0.3", "bern0.9")
TESTS = ("t_test", "bootstrap", "permutation", "wilcoxon", "mcnemar")
SIZES = (10, 30, 100, 1000)
BERN_RHO = 0.5
# Values per compare_runs call (replicates x n), to keep the per-call dicts small.
CHUNK_VALUES = 60_000


def is_binary(shape: str) -> bool:
    return shape.startswith("bern")


def simulate(shape: str, n: int, reps: int, alt: bool, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, float]:
    """(a, b, true mean difference): arrays of shape (reps, n)."""
    if is_binary(shape):
        p = float(shape[4:])
        pa = (p + 0.1 if p < 0.5 else p - 0.1) if alt else p
        z = rng.standard_normal((reps, n))
        la = math.sqrt(BERN_RHO) * z + math.sqrt(1 - BERN_RHO) * rng.standard_normal((reps, n))
        lb = math.sqrt(BERN_RHO) * z + math.sqrt(1 - BERN_RHO) * rng.standard_normal((reps, n))
        a = (la < special.ndtri(pa)).astype(np.float64)
        b = (lb < special.ndtri(p)).astype(np.float64)
        return a, b, pa - p
    if shape == "lognormal":
        item = rng.lognormal(0.0, 1.0, (reps, n))
        ea, eb = rng.lognormal(0.0, 1.0, (reps, n)), rng.lognormal(0.0, 1.0, (reps, n))
        if alt:
            return item + 2.0 * ea, item + eb, math.exp(0.5)
        return item + ea, item + eb, 0.0
    item = rng.standard_normal((reps, n))
    if shape == "normal":
        ea, eb = rng.standard_normal((reps, n)), rng.standard_normal((reps, n))
    elif shape == "t3":
        ea, eb = rng.standard_t(3, (reps, n)), rng.standard_t(3, (reps, n))
    else:
        raise ValueError(shape)
    shift = 0.5 if alt else 0.0
    return item + ea + shift, item + eb, shift


def rows_for(a: np.ndarray, b: np.ndarray, test: str, n_resamples: int, seed: int) -> List[dict]:
    """compare_runs on replicates as metrics of two runs, with the handler's keyword arguments."""
    conf = CompareSettings()
    out: List[dict] = []
    reps, n = a.shape
    step = max(1, CHUNK_VALUES // n)
    for start in range(0, reps, step):
        names = [f"rep{k:05d}" for k in range(start, min(reps, start + step))]
        run_a = {m: {f"s{i:05d}": [float(x)] for i, x in enumerate(a[start + k])} for k, m in enumerate(names)}
        run_b = {m: {f"s{i:05d}": [float(x)] for i, x in enumerate(b[start + k])} for k, m in enumerate(names)}
        res = compare_runs(
            [("run-a", run_a), ("run-b", run_b)],
            metrics=names,
            test=test,
            alpha=ALPHA,
            correction="none",
            seed=seed,
            n_resamples=n_resamples,
            lower_is_better=conf.lower_is_better,
            max_work=conf.max_work,
        )
        out.extend(res["pairwise_results"])
    return out


@dataclass
class Cell:
    shape: str
    n: int
    test: str
    reps: int
    rejected: int
    covered_null: int
    covered_alt: int
    disagree: int
    no_interval: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rejected / self.reps

    @property
    def bound(self) -> float:
        return ALPHA + 2.0 * math.sqrt(ALPHA * (1 - ALPHA) / self.reps)


def covers(row: dict, true: float) -> bool:
    if row["ci_method"] is None:
        return False
    if row["ci_low"] is None or row["ci_high"] is None:  # unbounded
        return True
    return row["ci_low"] <= true <= row["ci_high"]


def disagreements(rows: Sequence[dict]) -> int:
    bad = 0
    for r in rows:
        if not r.get("ci_matches_test") or r["p_value"] is None:
            continue
        excludes = r["ci_low"] is not None and not (r["ci_low"] <= 0.0 <= r["ci_high"])
        bad += excludes != (r["p_value"] < ALPHA)
    return bad


def run_cell(shape: str, n: int, test: str, reps: int, n_resamples: int, seed: int) -> Cell:
    t0 = time.perf_counter()
    # Same data for every test of a (shape, n): the seed depends on shape and n only.
    key = (SHAPES.index(shape) if shape in SHAPES else 99) * 100_000 + n
    rng = np.random.default_rng([seed, key])
    a0, b0, t_null = simulate(shape, n, reps, False, rng)
    a1, b1, t_alt = simulate(shape, n, reps, True, rng)
    null = rows_for(a0, b0, test, n_resamples, seed)
    alt = rows_for(a1, b1, test, n_resamples, seed + 1)
    return Cell(
        shape, n, test, reps,
        rejected=sum(1 for r in null if r["p_value"] is not None and r["p_value"] < ALPHA),
        covered_null=sum(covers(r, t_null) for r in null),
        covered_alt=sum(covers(r, t_alt) for r in alt),
        disagree=disagreements(null) + disagreements(alt),
        no_interval=sum(r["ci_method"] is None for r in null + alt),
        seconds=time.perf_counter() - t0,
    )


def cells(shapes, sizes, tests) -> List[Tuple[str, int, str]]:
    return [(s, n, t) for s in shapes for n in sizes for t in tests if t != "mcnemar" or is_binary(s)]


def format_table(results: Sequence[Cell]) -> str:
    lines = [
        "| shape | n | test | null rejection (SE) | <= a+2SE | coverage, null | coverage, alternative | CI/test disagree | no CI | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results:
        se = math.sqrt(c.rate * (1 - c.rate) / c.reps) if 0 < c.rate < 1 else 0.0
        lines.append(
            f"| {c.shape} | {c.n} | {c.test} | {c.rate:.3f} ({se:.3f}) | {'yes' if c.rate <= c.bound else 'NO'} "
            f"| {c.covered_null / c.reps:.3f} | {c.covered_alt / c.reps:.3f} | {c.disagree} | {c.no_interval} "
            f"| {c.seconds:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 replicates, n = 10, 30, 100, B = 1,000")
    ap.add_argument("--reps", type=int, help="replicates per cell (default 1,000; --quick 200)")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--shapes", nargs="+", choices=SHAPES)
    ap.add_argument("--tests", nargs="+", choices=TESTS)
    ap.add_argument("--n-resamples", type=int, help="bootstrap resamples / sign flips (default: config, 10,000)")
    ap.add_argument("--seed", type=int, default=CompareSettings().seed)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (the VM has 2 cores)")
    args = ap.parse_args(argv)
    reps = args.reps or (200 if args.quick else 1000)
    sizes = args.sizes or ((10, 30, 100) if args.quick else SIZES)
    n_resamples = args.n_resamples or (1000 if args.quick else CompareSettings().n_resamples)
    todo = cells(args.shapes or SHAPES, sizes, args.tests or TESTS)
    print(f"# {len(todo)} cells x {reps} replicates (null and alternative), alpha {ALPHA}, "
          f"B = {n_resamples}, seed {args.seed}, jobs {args.jobs}", flush=True)
    t0 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_cell, s, n, t, reps, n_resamples, args.seed) for s, n, t in todo]
            results = [f.result() for f in futures]
    else:
        results = []
        for s, n, t in todo:
            results.append(run_cell(s, n, t, reps, n_resamples, args.seed))
            c = results[-1]
            print(f"#   {s} n={n} {t}: {c.rate:.3f} {c.covered_null / reps:.3f} {c.covered_alt / reps:.3f} "
                  f"({c.seconds:.1f} s)", file=sys.stderr, flush=True)
    print(format_table(results))
    bad = [c for c in results if c.rate > c.bound or c.disagree]
    print(f"# {time.perf_counter() - t0:.0f} s; {len(bad)} cells over alpha + 2 SE or with CI/test disagreements")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
