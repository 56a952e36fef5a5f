"""Paired two-sided tests on aligned score vectors (d = a - b), each with the interval that matches it.

Every test here is paired, because both runs are scored on the same samples and the per-sample
correlation is where the power comes from (upstream's unpaired permutation wasted it, W4).
Randomised procedures take an explicit ``numpy.random.Generator`` so callers control determinism.

Matching intervals (issue 13): where a test has an interval that is its inversion, the row reports
that interval, so that "the interval excludes 0" and "the uncorrected p < alpha" are the same
statement (``ci_matches_test``). The inversions used:

* ``t``: Student t interval <-> Student t test (clipped to [-1, 1] for 0/1 metrics, which keeps
  coverage since the mean difference of 0/1 scores lies there).
* ``bootstrap_t``: symmetric studentized bootstrap interval <-> the bootstrap-t test
  p = (1 + #{|t*| >= |t|}) / (B + 1), t = mean/(sd_ddof1/sqrt(n)).
* ``sign_flip``: {delta : sign-flip test of d - delta does not reject} <-> the sign-flip test.
  With a fixed set of sign patterns every pattern is "as extreme" on an interval of delta, so the
  confidence set is an interval computed in closed form.
* ``exact_conditional``: for 0/1 metrics, delta = psi * (2 pi - 1) with psi = P(discordant) and
  pi = P(a wins | discordant); the range of delta over the Clopper-Pearson intervals of pi (the
  inversion of the exact McNemar / sign test) and of psi. It excludes 0 exactly when the exact
  McNemar p < alpha, stays inside [-1, 1] and covers >= 0.96 (exact computation, n = 10..100).

Wilcoxon tests the pseudo-median, not the mean difference, so its row carries a separate t
interval of the mean difference (``t_separate``) unless the metric is 0/1, where the signed-rank
test is the sign test and the ``exact_conditional`` interval matches it.

Degenerate rule, the same for every test: differences with zero variance (sample SD within
``ZERO_RTOL`` of the scale of the scores, which includes "all differences zero") take the exact
sign-flip p-value (1 when all are zero, else 2**(1-n)); no interval is reported for them except
on 0/1 metrics (``exact_conditional``), because a zero-width interval would claim a certainty the
data cannot give.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from scipy import special, stats

from .errors import Cancelled

# |d_i| this small relative to the pair's own scores is float noise (0.1 + 0.2 - 0.3), not a
# difference; the same factor times the largest |score| of the row is the zero-variance threshold.
ZERO_RTOL = 1e-12
# Resampled statistics within this relative distance of the observed one count as ties (>=), so
# summation-order noise can never turn a tie into a "more extreme" or "less extreme" draw.
TIE_RTOL = 1e-9
# The sign-flip test enumerates all 2**(n-1) sign patterns (the first sign fixed: a pattern and its
# negation give the same statistic) when there are at most max(this, n_resamples) of them.
EXACT_MIN_PATTERNS = 1 << 15
# Kept for the public sign_flip_pvalue(): up to this many non-zero differences it is exact.
EXACT_MAX_NONZERO = 30
# Data with at most this many distinct values, and few of them relative to n, are resampled
# through their counts (multinomial / binomial), which has exactly the same distribution as index
# resampling: ~100x cheaper for 0/1 data at n = 10,000, but a binomial draw costs about 20 index
# gathers (bootstrap) or 50 random signs (sign flips), hence the ratios.
FEW_DISTINCT = 64
COUNTS_RATIO_BOOTSTRAP = 20
COUNTS_RATIO_SIGN_FLIP = 50
# Elements per resampling batch, to keep temporaries around 10-20 MB.
BATCH_ELEMS = 1 << 18
# Wilcoxon: exact conditional null distribution (ties and all) up to this many non-zero
# differences (about 6e7 element operations, 20 ms); the normal approximation above.
WILCOXON_EXACT_MAX_NZ = 400
# auto: paired t is trusted from this n on, sign flips below.
AUTO_T_MIN_N = 30
# Rows are rescaled by a power of two (exact) when their largest |score| is outside this range, so
# that sums and sums of squares can neither overflow nor underflow.
SAFE_EXP = 400


@dataclass
class TestResult:
    test: str
    p_value: Optional[float] = None
    p_value_method: Optional[str] = None
    statistic: Optional[float] = None
    statistic_name: Optional[str] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    ci_method: Optional[str] = None
    ci_matches_test: Optional[bool] = None
    mc_stderr: Optional[float] = None
    note: Optional[str] = None
    # Sign of the effect the test actually measured (+1 favours a). Differs from sign(delta) only
    # for Wilcoxon, which tests the pseudo-median rather than the mean.
    direction: int = 0
    work: int = 0


# --------------------------------------------------------------------------- scale and zeros

def scale_exponent(*arrays: np.ndarray) -> int:
    """e such that x * 2**-e has a largest magnitude in [1, 2), or 0 when no rescaling is needed
    (largest |x| within 2**+-SAFE_EXP, the normal case: results are then bit-identical)."""
    top = 0.0
    for x in arrays:
        if x.size:
            top = max(top, float(np.max(np.abs(x))))
    if top == 0.0 or 2.0 ** -SAFE_EXP <= top <= 2.0 ** SAFE_EXP:
        return 0
    return math.frexp(top)[1] - 1


def scaled(x: np.ndarray, e: int) -> np.ndarray:
    return x if e == 0 else np.ldexp(x, -e)


def clean_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b with differences within ZERO_RTOL of the pair's own magnitude set to 0 (relative:
    scores of scale 5e-13 differing by 7e-13 are different)."""
    d = a - b
    scale = np.maximum(np.abs(a), np.abs(b))
    return np.where(np.abs(d) <= ZERO_RTOL * scale, 0.0, d)


def zero_tolerance(a: np.ndarray, b: np.ndarray) -> float:
    """Float-noise level of the differences: ZERO_RTOL times the largest |score| of the row."""
    top = max(float(np.max(np.abs(a))) if a.size else 0.0, float(np.max(np.abs(b))) if b.size else 0.0)
    return ZERO_RTOL * top


def is_zero_variance(d: np.ndarray, tol: float) -> bool:
    """t = inf / p = 0 guard (W5): SD judged against the noise level of the scores, not ``== 0``."""
    if d.size < 2:
        return True
    return float(np.std(d, ddof=1)) <= tol


def _sign(x: float) -> int:
    return 1 if x > 0 else (-1 if x < 0 else 0)


def _mc_p(count: int, n_resamples: int) -> Tuple[float, float]:
    """Phipson & Smyth 2010: (b + 1) / (m + 1), never 0."""
    p = (count + 1.0) / (n_resamples + 1.0)
    return p, math.sqrt(p * (1.0 - p) / n_resamples)


def _min_count(alpha: float, total: int, plus_one: bool) -> int:
    """Smallest count c with p(c) >= alpha, where p(c) = (c+1)/(total+1) (Monte Carlo) or c/total
    (exact), evaluated with the very float expressions used for the p-values."""
    def p(c: int) -> float:
        return (c + 1.0) / (total + 1.0) if plus_one else c / float(total)

    c = max(0, int(math.ceil(alpha * (total + (1 if plus_one else 0)))) - (1 if plus_one else 0))
    while c > 0 and p(c - 1) >= alpha:
        c -= 1
    while p(c) < alpha:
        c += 1
    return c


def reconcile(lo: Optional[float], hi: Optional[float], p: float, alpha: float,
              estimate: float) -> Tuple[Optional[float], Optional[float]]:
    """Make "interval excludes 0" and "p < alpha" agree where floating point left them a few ulps
    apart at the boundary (ties count as extreme, so a boundary point belongs to the set)."""
    if lo is None or hi is None:
        return lo, hi
    if p >= alpha and not lo <= 0.0 <= hi:
        return (0.0, hi) if lo > 0.0 else (lo, 0.0)
    if p < alpha and lo <= 0.0 <= hi:
        tiny = np.nextafter(0.0, 1.0)
        return (float(tiny), hi) if estimate > 0 else (lo, -float(tiny))
    return lo, hi


_job = threading.local()


@contextlib.contextmanager
def cancellable(cancelled: Optional[Callable[[], bool]]):
    """Within this block, `check_cancelled` (called between rows and between resampling batches
    of this thread) raises Cancelled once `cancelled()` is true."""
    previous = getattr(_job, "cancelled", None)
    _job.cancelled = cancelled
    try:
        yield
    finally:
        _job.cancelled = previous


def check_cancelled() -> None:
    fn = getattr(_job, "cancelled", None)
    if fn is not None and fn():
        raise Cancelled()


def _batches(total: int, per_row: int):
    size = max(1, BATCH_ELEMS // max(1, per_row))
    for start in range(0, total, size):
        check_cancelled()
        yield start, min(size, total - start)


# --------------------------------------------------------------------------- sign flips

def _subset_sums(v: np.ndarray) -> np.ndarray:
    s = np.zeros(1)
    for x in v:
        s = np.concatenate((s + x, s - x))
    return s


def sign_flip_pvalue(d: np.ndarray, n_resamples: int, rng_factory: Callable[[], np.random.Generator]):
    """Paired randomisation test of mean(d) = 0 (d symmetric about 0): returns (p, method, mc_stderr).

    Exact whenever that is cheap (all |d| equal -> binomial sign test, which on 0/1 data *is*
    exact McNemar; <= 30 non-zero d -> full enumeration), Monte Carlo otherwise. Used for the
    zero-variance rule and as the reference of the exact path; rows of the ``permutation`` test
    use :func:`sign_flip_test`, which adds the matching interval."""
    nz = d[d != 0.0]
    if nz.size == 0:
        return 1.0, "all_ties", None
    # Power-of-two normalisation (exact): sums of huge |d| must not overflow.
    nz = np.ldexp(nz, -math.frexp(float(np.max(np.abs(nz))))[1])
    v = np.abs(nz)
    m = v.size
    total = float(np.sum(v))
    t_obs = abs(float(np.sum(nz)))
    tol = TIE_RTOL * total
    if t_obs <= tol:
        return 1.0, "exact_sign_flip", None
    if float(v.max() - v.min()) <= TIE_RTOL * float(v.max()):
        k = int(np.count_nonzero(nz > 0))
        return float(stats.binomtest(k, m, 0.5).pvalue), "exact_sign_flip", None
    thr = t_obs - tol
    if m <= EXACT_MAX_NONZERO:
        h = m // 2
        s1 = _subset_sums(v[:h])
        s2 = np.sort(_subset_sums(v[h:]))
        hi = s2.size - np.searchsorted(s2, thr - s1, side="left")
        lo = np.searchsorted(s2, -thr - s1, side="right")
        count = int(hi.sum()) + int(lo.sum())
        return min(1.0, count / float(2 ** m)), "exact_sign_flip", None
    rng = rng_factory()
    vals, counts = np.unique(v, return_counts=True)
    count = 0
    if vals.size <= FEW_DISTINCT:
        for _, size in _batches(n_resamples, vals.size):
            pos = rng.binomial(counts, 0.5, size=(size, vals.size))
            t = (2 * pos - counts) @ vals
            count += int(np.count_nonzero(np.abs(t) >= thr))
    else:
        nbytes = (m + 7) // 8
        for _, size in _batches(n_resamples, m):
            bits = np.unpackbits(rng.integers(0, 256, (size, nbytes), dtype=np.uint8), axis=1, count=m)
            t = 2.0 * (bits.astype(np.float64) @ v) - total
            count += int(np.count_nonzero(np.abs(t) >= thr))
    p, se = _mc_p(count, n_resamples)
    return p, "monte_carlo_sign_flip", se


def sign_flip_exact(n: int, n_resamples: int) -> bool:
    return n >= 1 and 2 ** (n - 1) <= max(EXACT_MIN_PATTERNS, n_resamples)


def sign_flip_work(n: int, n_resamples: int) -> int:
    return n * (2 ** (n - 1) if sign_flip_exact(n, n_resamples) else n_resamples)


def _pattern_sums(d: np.ndarray, n_resamples: int, rng_factory) -> Tuple[np.ndarray, np.ndarray, bool]:
    """(A, S, exact): A_b = sum_i s_bi d_i and S_b = sum_i s_bi over every sign pattern with the
    first sign fixed (exact) or over n_resamples random patterns (Monte Carlo)."""
    n = d.size
    if sign_flip_exact(n, n_resamples):
        A = d[:1].astype(np.float64)
        S = np.ones(1)
        for x in d[1:]:
            A = np.concatenate((A + x, A - x))
            S = np.concatenate((S + 1.0, S - 1.0))
        return A, S, True
    rng = rng_factory()
    A = np.empty(n_resamples)
    S = np.empty(n_resamples)
    vals, counts = np.unique(d, return_counts=True)
    if vals.size <= FEW_DISTINCT and vals.size * COUNTS_RATIO_SIGN_FLIP <= n:
        # Number of '+' signs among the elements sharing a value is Binomial(count, 1/2).
        for start, size in _batches(n_resamples, vals.size):
            net = 2 * rng.binomial(counts, 0.5, size=(size, vals.size)) - counts
            A[start:start + size] = net @ vals
            S[start:start + size] = net.sum(axis=1)
    else:
        total = float(np.sum(d))
        nbytes = (n + 7) // 8
        cols = np.column_stack((d, np.ones(n)))  # one GEMM gives sum of the '+' d and their count
        for start, size in _batches(n_resamples, n):
            bits = np.unpackbits(rng.integers(0, 256, (size, nbytes), dtype=np.uint8), axis=1, count=n)
            plus = bits.astype(np.float64) @ cols
            A[start:start + size] = 2.0 * plus[:, 0] - total
            S[start:start + size] = 2.0 * plus[:, 1] - n
    return A, S, False


def sign_flip_test(d: np.ndarray, alpha: float, n_resamples: int, rng_factory):
    """Sign-flip test of "d symmetric about 0" and its inversion over shifts delta.

    Pattern b is as extreme as the data at delta iff |A_b - delta S_b| >= |T - n delta|
    (T = sum d); that holds exactly for delta in [min(r1, r2), max(r1, r2)] with
    r1 = (T - A_b)/(n - S_b), r2 = (T + A_b)/(n + S_b), an interval that always contains mean(d).
    The p-value at delta is (count(delta) [+1]) / (patterns [+1]); the confidence set
    {delta : p(delta) >= alpha} is [K-th smallest left end, K-th largest right end].
    Returns (p, method, mc_stderr, lo, hi); lo/hi None when unbounded (n too small)."""
    n = d.size
    A, S, exact = _pattern_sums(d, n_resamples, rng_factory)
    T = float(np.sum(d))
    u, v = n - S, n + S
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = (T - A) / u
        r2 = (T + A) / v
    left, right = np.fmin(r1, r2), np.fmax(r1, r2)
    always = (u <= 0.5) | (v <= 0.5)  # all signs equal: the data's own statistic, a tie everywhere
    left[always], right[always] = -np.inf, np.inf
    tol = TIE_RTOL * float(np.mean(np.abs(d)))  # ends within this of 0 are ties at delta = 0
    left[np.abs(left) <= tol] = 0.0
    right[np.abs(right) <= tol] = 0.0
    count0 = int(np.count_nonzero((left <= 0.0) & (right >= 0.0)))
    total = A.size
    if exact:
        p, se, method = min(1.0, count0 / float(total)), None, "exact_sign_flip"
    else:
        p, se = _mc_p(count0, total)
        method = "monte_carlo_sign_flip"
    k = _min_count(alpha, total, plus_one=not exact)
    if k == 0 or k > total:
        return p, method, se, None, None
    lo = float(np.partition(left, k - 1)[k - 1])
    hi = float(-np.partition(-right, k - 1)[k - 1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return p, method, se, None, None
    return p, method, se, lo, hi


# --------------------------------------------------------------------------- bootstrap-t

def _moments_from_counts(cnt: np.ndarray, vc: np.ndarray, n: int):
    m = (cnt @ vc) / n
    # two-pass variance: exactly 0 for a resample of one value (sd* = 0 must be recognised)
    var = np.sum(cnt * (vc[None, :] - m[:, None]) ** 2, axis=1) / (n - 1)
    return m, var


def needs_index_bootstrap(d: np.ndarray) -> bool:
    k = np.unique(d).size
    return not (k <= FEW_DISTINCT and k * COUNTS_RATIO_BOOTSTRAP <= d.size)


def bootstrap_moments(d: np.ndarray, n_resamples: int, rng: np.random.Generator):
    """Bootstrap (mean, variance ddof=1) of the centred differences d - mean(d), from counts of the
    distinct values when there are few of them (same distribution as index resampling)."""
    n = d.size
    theta = float(np.mean(d))
    if needs_index_bootstrap(d):
        return shared_index_bootstrap([d], n_resamples, rng)[0]
    vals, counts = np.unique(d, return_counts=True)
    vc = vals - theta
    probs = counts / n
    m = np.empty(n_resamples)
    var = np.empty(n_resamples)
    for start, size in _batches(n_resamples, vals.size):
        m[start:start + size], var[start:start + size] = _moments_from_counts(
            rng.multinomial(n, probs, size=size).astype(np.float64), vc, n)
    return m, var


def shared_index_bootstrap(ds: Sequence[np.ndarray], n_resamples: int, rng: np.random.Generator):
    """Bootstrap moments of several equal-length difference vectors from ONE stream of resampled
    indices (Koehn 2004's paired bootstrap over systems). Each vector's result depends only on the
    stream, not on which other vectors share it, and index generation is paid once."""
    n = ds[0].size
    centred = [d - float(np.mean(d)) for d in ds]
    outs = [(np.empty(n_resamples), np.empty(n_resamples)) for _ in ds]
    for start, size in _batches(n_resamples, n):
        idx = rng.integers(0, n, (size, n), dtype=np.int32 if n < 2**31 else np.int64)
        for c, (m, var) in zip(centred, outs):
            x = c[idx]
            mm = x.mean(axis=1)
            ss = np.einsum("ij,ij->i", x, x)
            v = (ss - n * mm * mm) / (n - 1)
            # Cancellation leaves ~eps * ss for a resample of one value: that is sd* = 0.
            v[v <= 1e-10 * ss / (n - 1)] = 0.0
            m[start:start + size] = mm
            var[start:start + size] = v
    return outs


def bootstrap_t_test(d: np.ndarray, moments, alpha: float, tol: float):
    """Symmetric studentized bootstrap (Hall 1988): t* = (mean* - mean)/(sd*_ddof1/sqrt n);
    p = (1 + #{|t*| >= |t|}) / (B + 1); interval mean +- q se with q the K-th largest |t*|, which is
    exactly the set of shifts this test does not reject. A resample with zero SD has t* = inf
    (0 when its mean equals the observed one). Returns (t, p, mc_stderr, lo, hi)."""
    n = d.size
    m, var = moments
    theta = float(np.mean(d))
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    sd_star = np.sqrt(var)
    degenerate = sd_star <= tol
    with np.errstate(divide="ignore", invalid="ignore"):
        tstar = np.abs(m) / (sd_star / math.sqrt(n))
    tstar[degenerate] = np.where(np.abs(m[degenerate]) > tol, np.inf, 0.0)
    t_obs = theta / se
    count = int(np.count_nonzero(tstar >= abs(t_obs) * (1.0 - TIE_RTOL)))
    B = tstar.size
    p, mc = _mc_p(count, B)
    k = _min_count(alpha, B, plus_one=True)
    if k == 0:
        return t_obs, p, mc, None, None
    q = float(-np.partition(-tstar, k - 1)[k - 1])
    if not math.isfinite(q):
        return t_obs, p, mc, None, None
    half = q * se / (1.0 - TIE_RTOL)
    return t_obs, p, mc, theta - half, theta + half


# --------------------------------------------------------------------------- t, McNemar, Wilcoxon

def t_interval(d: np.ndarray, alpha: float):
    n = d.size
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    h = float(stats.t.ppf(1.0 - alpha / 2.0, n - 1)) * se
    m = float(np.mean(d))
    return m - h, m + h


def newcombe_interval(n11: int, n10: int, n01: int, n00: int, alpha: float):
    """Newcombe (1998) method 10: paired difference of proportions from Wilson score limits; stays
    inside [-1, 1]. No longer reported on rows (it does not match the exact McNemar test: under
    the null it excluded 0 while McNemar was not significant in 6 % of rows at n = 10); kept as a
    library function."""
    n = n11 + n10 + n01 + n00
    z = float(special.ndtri(1.0 - alpha / 2.0))

    def wilson(x):
        p = x / n
        c = (x + z * z / 2.0) / (n + z * z)
        h = z * math.sqrt(x * (n - x) / n + z * z / 4.0) / (n + z * z)
        return p, c - h, c + h

    p1, l1, u1 = wilson(n11 + n10)
    p2, l2, u2 = wilson(n11 + n01)
    den = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    phi = (n11 * n00 - n10 * n01) / math.sqrt(den) if den > 0 else 0.0
    delta = p1 - p2
    lo = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = delta + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def _clopper_pearson(x: int, m: int, alpha: float) -> Tuple[float, float]:
    if m == 0:
        return 0.0, 1.0
    lo = 0.0 if x == 0 else float(special.betaincinv(x, m - x + 1, alpha / 2.0))
    hi = 1.0 if x == m else float(special.betaincinv(x + 1, m - x, 1.0 - alpha / 2.0))
    return lo, hi


def exact_conditional_interval(n10: int, n01: int, n: int, alpha: float) -> Tuple[float, float]:
    """Interval of delta = P(a=1,b=0) - P(a=0,b=1) = psi (2 pi - 1) matching the exact McNemar test:
    pi in its Clopper-Pearson interval (whose exclusion of 1/2 is exactly McNemar's p < alpha, the
    binomial being symmetric there) and psi = (n10 + n01)/n in its Clopper-Pearson interval; the
    interval is the range of psi (2 pi - 1) over that box, inside [-1, 1]."""
    m = n10 + n01
    pl, pu = _clopper_pearson(n10, m, alpha)
    sl, su = _clopper_pearson(m, n, alpha)
    a, b = 2.0 * pl - 1.0, 2.0 * pu - 1.0
    lo = a * (su if a < 0 else sl)
    hi = b * (su if b > 0 else sl)
    return max(-1.0, lo), min(1.0, hi)


def _binary_table(a: np.ndarray, b: np.ndarray):
    n10 = int(np.count_nonzero((a == 1) & (b == 0)))
    n01 = int(np.count_nonzero((a == 0) & (b == 1)))
    n11 = int(np.count_nonzero((a == 1) & (b == 1)))
    return n11, n10, n01, a.size - n11 - n10 - n01


def _doubled_midranks(x: np.ndarray) -> np.ndarray:
    """2 x midranks of x (integers), values within TIE_RTOL of each other tied."""
    m = x.size
    order = np.argsort(x, kind="stable")
    s = x[order]
    new = np.ones(m, dtype=bool)
    new[1:] = np.diff(s) > TIE_RTOL * s[1:]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], m) - 1
    gid = np.cumsum(new) - 1
    out = np.empty(m, dtype=np.int64)
    out[order] = (starts + ends + 2)[gid]
    return out


def wilcoxon_work(m: int) -> int:
    """Element operations of the exact signed-rank distribution for m non-zero differences."""
    return m * m * (m + 1)


def wilcoxon_exact_allowed(n: int, m: int, max_work: Optional[int]) -> bool:
    """Exact signed-rank distribution for m non-zero of n differences: within the size limit and
    within max_work (otherwise the normal approximation, reported in p_value_method)."""
    return m <= WILCOXON_EXACT_MAX_NZ and (max_work is None or n + wilcoxon_work(m) <= max_work)


def wilcoxon_signed_rank(d: np.ndarray, exact: Optional[bool] = None):
    """Wilcoxon signed-rank test, zero_method 'wilcox' (zeros dropped), two-sided.

    The null distribution is the exact conditional one given the observed |d| ranks (ties get
    midranks), computed by a vectorised convolution over the doubled ranks (no 2**n enumeration;
    SciPy's permutation path cost 176 ms at n = 10 and 1.5 s at n = 13); with ``exact`` False (by
    default: more than WILCOXON_EXACT_MAX_NZ non-zero differences) the normal approximation with
    the tie-corrected variance and a continuity correction of half the lattice step.
    Returns (W, p, method, sign of r_plus - r_minus, work)."""
    nz = d[d != 0.0]
    m = nz.size
    r2 = _doubled_midranks(np.abs(nz))
    total = int(r2.sum())
    t2 = int(r2[nz > 0].sum())
    w = min(t2, total - t2) / 2.0
    direction = _sign(2 * t2 - total)
    if exact is None:
        exact = m <= WILCOXON_EXACT_MAX_NZ
    if exact:
        work = wilcoxon_work(m)
        pmf = np.zeros(total + 1)
        pmf[0] = 1.0
        top = 0
        for r in r2:
            r = int(r)
            shifted = pmf[:top + 1] * 0.5
            pmf[:top + 1] *= 0.5
            pmf[r:r + top + 1] += shifted
            top += r
        low = min(t2, total - t2)
        p = min(1.0, 2.0 * float(np.sum(pmf[:low + 1])))
        return w, p, "exact_signed_rank", direction, work
    mu = total / 2.0
    sd = math.sqrt(float(np.sum(r2.astype(np.float64) ** 2)) / 4.0)
    cc = float(np.gcd.reduce(r2)) / 2.0
    z = (abs(t2 - mu) - cc) / sd
    p = 1.0 if z <= 0 else min(1.0, 2.0 * float(special.ndtr(-z)))
    return w, p, "normal_approx_signed_rank", direction, m


def effect_sizes(a: np.ndarray, b: np.ndarray, d: np.ndarray, binary: bool, tol: float) -> dict:
    n = d.size
    out = {
        "cohens_dz": None,
        "prob_superiority": None,
        "rank_biserial": None,
        "cohens_h": None,
        "discordant_a_only": None,
        "discordant_b_only": None,
        "discordant_odds_ratio": None,
    }
    if n == 0:
        return out
    out["prob_superiority"] = (np.count_nonzero(d > 0) + 0.5 * np.count_nonzero(d == 0)) / n
    if n >= 2 and not is_zero_variance(d, tol):
        out["cohens_dz"] = float(np.mean(d)) / float(np.std(d, ddof=1))
    nz = d[d != 0.0]
    if nz.size:
        r = stats.rankdata(np.abs(nz))
        out["rank_biserial"] = float((r[nz > 0].sum() - r[nz < 0].sum()) / r.sum())
    if binary:
        _, n10, n01, _ = _binary_table(a, b)
        pa, pb = float(np.mean(a)), float(np.mean(b))
        out["cohens_h"] = 2.0 * math.asin(math.sqrt(pa)) - 2.0 * math.asin(math.sqrt(pb))
        out["discordant_a_only"], out["discordant_b_only"] = n10, n01
        out["discordant_odds_ratio"] = n10 / n01 if n01 else None
    return out


def resolve_auto(binary: bool, n: int) -> str:
    """Dror et al. 2018: pick by the metric's nature. 0/1 -> McNemar (= exact sign flip on 0/1);
    otherwise paired t once the CLT is plausible, sign flips below that."""
    if binary:
        return "mcnemar"
    return "t_test" if n >= AUTO_T_MIN_N else "permutation"


def estimate_work(test: str, d: np.ndarray, binary: bool, n_resamples: int, tol: float,
                  max_work: Optional[int] = None) -> int:
    """Element operations a row will cost (what compare.max_work caps)."""
    n = d.size
    if test == "none" or n < 2:
        return 0
    if test in ("t_test", "mcnemar"):
        return n
    zero_var = is_zero_variance(d, tol)
    if test == "bootstrap":
        return n if zero_var else n * n_resamples
    if test == "permutation":
        return n if (zero_var or binary) else sign_flip_work(n, n_resamples)
    if test == "wilcoxon":
        m = int(np.count_nonzero(d))
        if binary or zero_var or not wilcoxon_exact_allowed(n, m, max_work):
            return n
        return n + wilcoxon_work(m)
    return n


# --------------------------------------------------------------------------- one row

def _set_interval(res: TestResult, lo, hi, method: str, matches: bool, p: Optional[float], alpha: float,
                  estimate: float, clip: bool) -> None:
    if lo is None or hi is None:
        if clip:  # an unbounded set of mean differences of 0/1 scores is [-1, 1]
            lo, hi = -1.0, 1.0
        else:
            res.ci_method, res.ci_matches_test = method, matches
            res.note = res.note or "interval_unbounded"
            return
    if clip:
        lo, hi = max(-1.0, lo), min(1.0, hi)
    if matches and p is not None:
        lo, hi = reconcile(lo, hi, p, alpha, estimate)
    res.ci_low, res.ci_high, res.ci_method, res.ci_matches_test = float(lo), float(hi), method, matches


def run_test(
    test: str,
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float,
    n_resamples: int,
    rng_factory: Callable[[], np.random.Generator],
    binary: bool,
    d: Optional[np.ndarray] = None,
    moments=None,
    tol: Optional[float] = None,
    max_work: Optional[int] = None,
) -> TestResult:
    """Run one (already resolved) test on (already rescaled) scores with the shared degenerate rule.

    ``d`` (cleaned differences), ``tol`` (zero tolerance) and ``moments`` (bootstrap moments drawn
    by the caller from a shared index stream) are optional precomputations. Intervals and the
    "mean_difference" statistic are in the units of a and b."""
    n = a.size
    res = TestResult(test=test)
    if test == "none":
        return res
    if n < 2:
        res.note = "insufficient_samples"
        return res
    if d is None:
        d = clean_differences(a, b)
    if tol is None:
        tol = zero_tolerance(a, b)
    mean_d = float(np.mean(d))
    res.direction = _sign(mean_d)
    all_ties = not np.any(d)
    zero_var = is_zero_variance(d, tol)
    res.work = estimate_work(test, d, binary, n_resamples, tol, max_work)

    def binary_interval(p):
        _, n10, n01, _ = _binary_table(a, b)
        lo, hi = exact_conditional_interval(n10, n01, n, alpha)
        _set_interval(res, lo, hi, "exact_conditional", True, p, alpha, mean_d, clip=True)

    if test == "mcnemar":
        _, n10, n01, _ = _binary_table(a, b)
        res.statistic_name, res.statistic = "n10", float(n10)
        res.p_value = float(stats.binomtest(n10, n10 + n01, 0.5).pvalue) if n10 + n01 else 1.0
        res.p_value_method = "exact_binomial"
        if all_ties:
            res.note = "all_ties"
        binary_interval(res.p_value)
        return res

    if zero_var:
        # One rule for every test: the exact sign-flip p (1 for all ties, else 2**(1-n)).
        p, method, se = sign_flip_pvalue(d, n_resamples, rng_factory)
        res.p_value, res.p_value_method, res.mc_stderr = p, method, se
        res.note = "all_ties" if all_ties else "zero_variance"
        if test in ("t_test", "bootstrap"):  # t is 0/0 or infinite
            res.statistic_name, res.statistic = "t", (0.0 if all_ties else None)
        elif test == "wilcoxon":
            res.statistic_name = "W"
            res.statistic = 0.0 if all_ties else wilcoxon_signed_rank(d, exact=False)[0]
        else:
            res.statistic_name, res.statistic = "mean_difference", mean_d
        if binary:
            binary_interval(p)
        return res

    if test == "t_test":
        tt = stats.ttest_1samp(d, 0.0)
        res.statistic_name, res.statistic = "t", float(tt.statistic)
        res.p_value, res.p_value_method = float(tt.pvalue), "student_t"
        lo, hi = t_interval(d, alpha)
        _set_interval(res, lo, hi, "t", True, res.p_value, alpha, mean_d, clip=binary)
        return res

    if test == "bootstrap":
        if moments is None:
            moments = bootstrap_moments(d, n_resamples, rng_factory())
        t_obs, p, se, lo, hi = bootstrap_t_test(d, moments, alpha, tol)
        res.statistic_name, res.statistic = "t", float(t_obs)
        res.p_value, res.p_value_method, res.mc_stderr = p, "bootstrap_t", se
        _set_interval(res, lo, hi, "bootstrap_t", True, p, alpha, mean_d, clip=binary)
        return res

    if test == "permutation":
        res.statistic_name, res.statistic = "mean_difference", mean_d
        if binary:  # all |d| = 1: the sign-flip test is the exact sign test = exact McNemar
            p, method, se = sign_flip_pvalue(d, n_resamples, rng_factory)
            res.p_value, res.p_value_method, res.mc_stderr = p, method, se
            binary_interval(p)
            return res
        p, method, se, lo, hi = sign_flip_test(d, alpha, n_resamples, rng_factory)
        res.p_value, res.p_value_method, res.mc_stderr = p, method, se
        _set_interval(res, lo, hi, "sign_flip", True, p, alpha, mean_d, clip=False)
        return res

    if test == "wilcoxon":
        res.statistic_name = "W"
        if binary:  # all |d| tied: the signed-rank test is the sign test, exact at any n
            _, n10, n01, _ = _binary_table(a, b)
            res.statistic = float(min(n10, n01)) * (n10 + n01 + 1) / 2.0
            res.p_value = float(stats.binomtest(n10, n10 + n01, 0.5).pvalue)
            res.p_value_method = "exact_signed_rank"
            res.direction = _sign(n10 - n01)
            binary_interval(res.p_value)
            return res
        m = int(np.count_nonzero(d))
        w, p, method, direction, _ = wilcoxon_signed_rank(d, wilcoxon_exact_allowed(n, m, max_work))
        res.statistic, res.p_value, res.p_value_method, res.direction = float(w), p, method, direction
        if method != "exact_signed_rank" and m <= WILCOXON_EXACT_MAX_NZ:
            res.note = "exact_wilcoxon_over_max_work"
        if res.direction != _sign(mean_d):
            res.note = "wilcoxon_direction_disagrees_with_delta"
        lo, hi = t_interval(d, alpha)  # Wilcoxon tests the pseudo-median: a separate interval of the mean
        _set_interval(res, lo, hi, "t_separate", False, None, alpha, mean_d, clip=False)
        return res

    raise ValueError(f"unknown test {test!r}")
