"""Fast, deterministic calibration regression tests of the compare engine (issue 13).

They run the simulations of bench/calibrate_compare.py (same data shapes, ``compare_runs`` called
as the HTTP handler calls it) with fixed seeds and a few hundred replicates, and fail when a test's
null rejection rate or an interval's coverage drifts past a bound, or when an interval that is
the test's own disagrees with its p-value. Seeds are fixed, so the outcome is deterministic; the
bounds are alpha + 2 SE for rejection and 0.93 - 2 SE for coverage (SE at the replicate count),
except where the README documents that nothing reaches 0.93 (right-skewed differences at n <= 30).
About 30 s on one core.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import calibrate_compare as cal  # noqa: E402

ALPHA = cal.ALPHA
SEED = 20240101


def rejection_bound(reps: int) -> float:
    return ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / reps)


def coverage_bound(reps: int, target: float = 0.93) -> float:
    return target - 2 * math.sqrt(target * (1 - target) / reps)


@pytest.fixture(scope="module")
def cells():
    """Null and alternative rows for n = 10 and 30, every shape and test, 300 replicates."""
    out = {}
    for shape in cal.SHAPES:
        for n in (10, 30):
            for test in cal.TESTS:
                if test == "mcnemar" and not cal.is_binary(shape):
                    continue
                out[(shape, n, test)] = cal.run_cell(shape, n, test, reps=300, n_resamples=999, seed=SEED)
    return out


def test_every_test_is_valid_under_the_null(cells):
    bad = {k: c.rate for k, c in cells.items() if c.rate > rejection_bound(c.reps)}
    assert not bad, bad


def test_coverage_at_n10_and_n30(cells):
    bad = {}
    for (shape, n, test), c in cells.items():
        null_cov = c.covered_null / c.reps
        alt_cov = c.covered_alt / c.reps
        # Right-skewed differences (the lognormal alternative): no interval reaches 0.93 at small n
        # (t: 0.92-0.93, sign-flip inversion 0.89-0.91); documented in the README.
        alt_target = 0.90 if shape == "lognormal" else 0.93
        if null_cov < coverage_bound(c.reps) or alt_cov < coverage_bound(c.reps, alt_target):
            bad[(shape, n, test)] = (null_cov, alt_cov)
    assert not bad, bad


def test_intervals_that_are_the_tests_own_agree_with_the_p_value(cells):
    assert {k: c.disagree for k, c in cells.items() if c.disagree} == {}


def test_zero_one_metrics_always_get_an_interval(cells):
    assert {k: c.no_interval for k, c in cells.items() if cal.is_binary(k[0]) and c.no_interval} == {}


@pytest.mark.parametrize("shape", ["normal", "t3"])
def test_bootstrap_p_value_is_not_anti_conservative_at_n30(shape):
    """Item 1: the shift-method bootstrap p rejected true nulls 6.1-6.4 % of the time at n = 30-100
    (z-type statistic on a ddof=0 SE). 2,000 replicates: the bound alpha + 2 SE is 0.0597."""
    reps = 2000
    rng = np.random.default_rng([SEED, 30])
    a, b, _ = cal.simulate(shape, 30, reps, False, rng)
    rows = cal.rows_for(a, b, "bootstrap", n_resamples=499, seed=SEED)
    rate = sum(r["p_value"] < ALPHA for r in rows) / reps
    assert rate <= rejection_bound(reps), rate
    assert all(r["p_value_method"] == "bootstrap_t" for r in rows)


def test_small_n_bootstrap_interval_covers():
    """Item 3: BCa covered 0.80-0.91 at n = 10 (t(3) differences: 0.86)."""
    c = cal.run_cell("t3", 10, "bootstrap", reps=400, n_resamples=999, seed=SEED + 7)
    assert c.covered_null / c.reps >= coverage_bound(c.reps)
    assert c.covered_alt / c.reps >= coverage_bound(c.reps)
