"""Time the pure compare engine (no HTTP, no storage) on the sizes named in the compare design notes.

    python bench/bench_compare_stats.py [--repeats N]

Targets are end-to-end (HTTP + loading included), so the engine must come in well below them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from themis_daemon.stats import compare_runs  # noqa: E402


def _run(run_id, metric_values):
    return run_id, {m: {f"s{i:06d}": [float(x)] for i, x in enumerate(v)} for m, v in metric_values.items()}


def continuous_runs(n_runs, metrics, n, rng):
    base = {m: rng.beta(2, 5, n) for m in metrics}
    return [_run(f"run-{r}", {m: np.clip(base[m] + rng.normal(0.01 * r, 0.1, n), 0, 1) for m in metrics})
            for r in range(n_runs)]


def binary_runs(n_runs, metrics, n, rng):
    return [_run(f"run-{r}", {m: (rng.random(n) < 0.6 + 0.01 * r).astype(float) for m in metrics})
            for r in range(n_runs)]


def time_it(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(12345)
    B = 10_000
    cont2 = continuous_runs(2, ["score"], 10_000, rng)
    bin2 = binary_runs(2, ["accuracy"], 10_000, rng)
    cont5 = continuous_runs(5, ["m1", "m2", "m3"], 1_000, rng)
    bin5 = binary_runs(5, ["m1", "m2", "m3"], 1_000, rng)

    cases = [
        ("2 runs x 10k, bootstrap, continuous", cont2, "bootstrap", 1.0),
        ("2 runs x 10k, bootstrap, 0/1", bin2, "bootstrap", 0.05),
        ("2 runs x 10k, permutation, continuous", cont2, "permutation", 0.5),
        ("2 runs x 10k, permutation, 0/1", bin2, "permutation", 0.5),
        ("2 runs x 10k, t_test, continuous", cont2, "t_test", 0.02),
        ("2 runs x 10k, wilcoxon, continuous", cont2, "wilcoxon", None),
        ("2 runs x 10k, auto, 0/1 (mcnemar)", bin2, "auto", None),
        ("5 runs x 3 metrics x 1k, bootstrap, continuous", cont5, "bootstrap", 1.0),
        ("5 runs x 3 metrics x 1k, permutation, continuous", cont5, "permutation", 1.0),
        ("5 runs x 3 metrics x 1k, t_test, continuous", cont5, "t_test", 1.0),
        ("5 runs x 3 metrics x 1k, bootstrap, 0/1", bin5, "bootstrap", 1.0),
    ]
    print(f"numpy {np.__version__}, B = {B}, best/median of {args.repeats}; targets are end-to-end")
    print(f"{'case':52s} {'best':>9s} {'median':>9s} {'target':>8s}")
    for label, runs, test, target in cases:
        best, med = time_it(lambda: compare_runs(runs, test=test, n_resamples=B, seed=0), args.repeats)
        tgt = f"{target * 1000:.0f} ms" if target else "-"
        flag = "" if target is None or best < target else "  OVER"
        print(f"{label:52s} {best * 1000:7.1f}ms {med * 1000:7.1f}ms {tgt:>8s}{flag}")


if __name__ == "__main__":
    main()
