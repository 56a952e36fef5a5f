"""Paired two-sided tests on aligned score vectors (d = a - b).

Every test here is paired, because both runs are scored on the same samples and the per-sample
correlation is where the power comes from (upstream's unpaired permutation wasted it, W4).
Randomised procedures take an explicit ``numpy.random.Generator`` so callers control determinism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
from scipy import special, stats

# |d_i| this small relative to the scores is float noise (0.1 + 0.2 - 0.3), not a difference.
ZERO_RTOL = 1e-12
# Resampled statistics within this relative distance of the observed one count as ties (>=), so
# summation-order noise can never turn a tie into a "more extreme" or "less extreme" draw.
TIE_RTOL = 1e-9
# Up to this many non-zero differences the sign-flip distribution is enumerated exactly
# (meet in the middle: 2 x 2**15 subset sums).
EXACT_MAX_NONZERO = 30
# Data with at most this many distinct values are resampled through their counts (multinomial /
# binomial), which has exactly the same distribution as index resampling but is ~100x cheaper.
FEW_DISTINCT = 64
# Elements per resampling batch, to keep temporaries around 10-20 MB.
BATCH_ELEMS = 1 << 18
# Below this n the percentile/BCa bootstrap is anti-conservative (W6): take p from sign flips.
BOOTSTRAP_MIN_N_FOR_P = 30
# auto: paired t is trusted from this n on, exact sign flips below.
AUTO_T_MIN_N = 30


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
    mc_stderr: Optional[float] = None
    note: Optional[str] = None
    # Sign of the effect the test actually measured (+1 favours a). Differs from sign(delta) only
    # for Wilcoxon, which tests the pseudo-median rather than the mean.
    direction: int = 0


def clean_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    scale = np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    return np.where(np.abs(d) <= ZERO_RTOL * scale, 0.0, d)


def is_zero_variance(d: np.ndarray) -> bool:
    """t = inf / p = 0 guard (W5): SD judged with a tolerance, not ``== 0``."""
    if d.size < 2:
        return True
    return float(np.std(d, ddof=1)) <= ZERO_RTOL * max(1.0, float(np.mean(np.abs(d))))


def _sign(x: float) -> int:
    return 1 if x > 0 else (-1 if x < 0 else 0)


def _mc_p(count: int, n_resamples: int) -> Tuple[float, float]:
    """Phipson & Smyth 2010: (b + 1) / (m + 1), never 0."""
    p = (count + 1.0) / (n_resamples + 1.0)
    return p, math.sqrt(p * (1.0 - p) / n_resamples)


def _subset_sums(v: np.ndarray) -> np.ndarray:
    s = np.zeros(1)
    for x in v:
        s = np.concatenate((s + x, s - x))
    return s


def _batches(total: int, per_row: int):
    size = max(1, BATCH_ELEMS // max(1, per_row))
    for start in range(0, total, size):
        yield start, min(size, total - start)


def sign_flip_pvalue(d: np.ndarray, n_resamples: int, rng_factory: Callable[[], np.random.Generator]):
    """Paired randomisation test of mean(d) = 0: returns (p, method, mc_stderr).

    Exact whenever that is cheap (all |d| equal -> binomial sign test, which on 0/1 data *is*
    exact McNemar; <= 30 non-zero d -> full enumeration), Monte Carlo otherwise.
    """
    nz = d[d != 0.0]
    v = np.abs(nz)
    m = v.size
    if m == 0:
        return 1.0, "all_ties", None
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
        # Number of '+' signs per distinct |d| value is Binomial(count, 1/2).
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


def bootstrap_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> Tuple[np.ndarray, float]:
    """Paired bootstrap distribution of mean(d), plus mean(d) computed the same way, so that exact
    ties between resampled and observed means (common with 0/1 data) are recognised as ties."""
    n = d.size
    vals, counts = np.unique(d, return_counts=True)
    out = np.empty(n_resamples)
    if vals.size <= FEW_DISTINCT:
        probs = counts / n
        for start, size in _batches(n_resamples, vals.size):
            out[start:start + size] = (rng.multinomial(n, probs, size=size) @ vals) / n
        return out, float(counts @ vals) / n
    return shared_index_bootstrap([d], n_resamples, rng)[0], float(np.mean(d))


def needs_index_bootstrap(d: np.ndarray) -> bool:
    return np.unique(d).size > FEW_DISTINCT


def shared_index_bootstrap(ds, n_resamples: int, rng: np.random.Generator):
    """Bootstrap means of several equal-length difference vectors from ONE stream of resampled
    indices (Koehn 2004's paired bootstrap over systems). Each vector's result depends only on the
    stream, not on which other vectors share it, and index generation (half the cost) is paid once."""
    n = ds[0].size
    outs = [np.empty(n_resamples) for _ in ds]
    for start, size in _batches(n_resamples, n):
        idx = rng.integers(0, n, (size, n), dtype=np.int32 if n < 2**31 else np.int64)
        for d, out in zip(ds, outs):
            out[start:start + size] = d[idx].mean(axis=1)
    return outs


def bca_interval(d: np.ndarray, boot: np.ndarray, theta_hat: float, alpha: float):
    """BCa (Efron 1987) with SciPy's conventions (mid-rank z0, linear quantiles); the jackknife of a
    mean is closed-form. None when z0 is infinite (degenerate bootstrap distribution)."""
    n = d.size
    frac = (np.count_nonzero(boot < theta_hat) + np.count_nonzero(boot <= theta_hat)) / (2.0 * boot.size)
    if not 0.0 < frac < 1.0:
        return None
    z0 = special.ndtri(frac)
    jack = (np.sum(d) - d) / (n - 1)
    u = np.mean(jack) - jack
    den = float(np.sum(u**2))
    acc = float(np.sum(u**3)) / (6.0 * den**1.5) if den > 0 else 0.0
    z = special.ndtri(np.array([alpha / 2.0, 1.0 - alpha / 2.0]))
    levels = special.ndtr(z0 + (z0 + z) / (1.0 - acc * (z0 + z)))
    if not np.all(np.isfinite(levels)):
        return None
    lo, hi = np.quantile(boot, levels)
    return float(lo), float(hi)


def t_interval(d: np.ndarray, alpha: float):
    n = d.size
    se = float(np.std(d, ddof=1)) / math.sqrt(n)
    h = float(stats.t.ppf(1.0 - alpha / 2.0, n - 1)) * se
    m = float(np.mean(d))
    return m - h, m + h


def newcombe_interval(n11: int, n10: int, n01: int, n00: int, alpha: float):
    """Newcombe (1998) method 10: paired difference of proportions from Wilson score limits; stays
    inside [-1, 1] and behaves at small n, unlike Wald."""
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


def _binary_table(a: np.ndarray, b: np.ndarray):
    n10 = int(np.count_nonzero((a == 1) & (b == 0)))
    n01 = int(np.count_nonzero((a == 0) & (b == 1)))
    n11 = int(np.count_nonzero((a == 1) & (b == 1)))
    return n11, n10, n01, a.size - n11 - n10 - n01


def effect_sizes(a: np.ndarray, b: np.ndarray, d: np.ndarray, binary: bool) -> dict:
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
    if n >= 2 and not is_zero_variance(d):
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
    otherwise paired t once the CLT is plausible, exact sign flips below that."""
    if binary:
        return "mcnemar"
    return "t_test" if n >= AUTO_T_MIN_N else "permutation"


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
    boot: Optional[np.ndarray] = None,
) -> TestResult:
    """Run one (already resolved) test with the shared degenerate-input guards.

    ``d`` (cleaned differences) and ``boot`` (bootstrap means drawn by the caller from a shared
    index stream) are optional precomputations.
    """
    n = a.size
    res = TestResult(test=test)
    if test == "none":
        return res
    if n < 2:
        res.note = "insufficient_samples"
        return res
    if d is None:
        d = clean_differences(a, b)
    mean_d = float(np.mean(d))
    res.direction = _sign(mean_d)
    all_ties = not np.any(d)
    zero_var = is_zero_variance(d)

    if test == "t_test":
        res.statistic_name = "t"
        if all_ties or zero_var:
            p, method, se = sign_flip_pvalue(d, n_resamples, rng_factory)
            res.p_value, res.p_value_method, res.mc_stderr = p, method, se
            res.note = "all_ties" if all_ties else "zero_variance"
            if all_ties:
                res.statistic, res.ci_low, res.ci_high, res.ci_method = 0.0, 0.0, 0.0, "t"
        else:
            tt = stats.ttest_1samp(d, 0.0)
            res.statistic, res.p_value, res.p_value_method = float(tt.statistic), float(tt.pvalue), "student_t"
            res.ci_low, res.ci_high = t_interval(d, alpha)  # the test's own interval, as SciPy's
            res.ci_method = "t"
        return res

    if test == "bootstrap":
        res.statistic_name = "mean_difference"
        res.statistic = mean_d
        if boot is None:
            boot, theta = bootstrap_means(d, n_resamples, rng_factory())
        else:
            theta = mean_d
        ci = bca_interval(d, boot, theta, alpha)
        if ci is not None:
            res.ci_low, res.ci_high, res.ci_method = ci[0], ci[1], "bca"
        else:
            lo, hi = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
            res.ci_low, res.ci_high, res.ci_method = float(lo), float(hi), "percentile"
        if all_ties:
            res.p_value, res.p_value_method, res.note = 1.0, "all_ties", "all_ties"
        elif n < BOOTSTRAP_MIN_N_FOR_P or zero_var:
            p, method, se = sign_flip_pvalue(d, n_resamples, rng_factory)
            res.p_value, res.p_value_method, res.mc_stderr = p, method, se
            res.note = "zero_variance" if zero_var else "small_n_p_from_sign_flip"
        else:
            # Berg-Kirkpatrick et al. 2012: centre the bootstrap distribution at the null.
            thr = abs(theta) - TIE_RTOL * float(np.mean(np.abs(d)))
            count = int(np.count_nonzero(np.abs(boot - theta) >= thr))
            res.p_value, res.mc_stderr = _mc_p(count, n_resamples)
            res.p_value_method = "bootstrap_shift"
        return res

    if test == "permutation":
        res.statistic_name = "mean_difference"
        res.statistic = mean_d
        p, method, se = sign_flip_pvalue(d, n_resamples, rng_factory)
        res.p_value, res.p_value_method, res.mc_stderr = p, method, se
        if all_ties:
            res.note = "all_ties"
        _interval(res, a, b, d, alpha, zero_var, all_ties, binary)
        return res

    if test == "wilcoxon":
        res.statistic_name = "W"
        if all_ties:
            res.p_value, res.p_value_method, res.note, res.statistic = 1.0, "all_ties", "all_ties", 0.0
        else:
            w = stats.wilcoxon(d, zero_method="wilcox", method="auto")
            res.statistic, res.p_value = float(w.statistic), float(w.pvalue)
            res.p_value_method = "wilcoxon_signed_rank"
            nz = d[d != 0.0]
            r = stats.rankdata(np.abs(nz))
            res.direction = _sign(float(r[nz > 0].sum() - r[nz < 0].sum()))
            if res.direction != _sign(mean_d):
                res.note = "wilcoxon_direction_disagrees_with_delta"
        _interval(res, a, b, d, alpha, zero_var, all_ties, binary)
        return res

    if test == "mcnemar":
        n11, n10, n01, n00 = _binary_table(a, b)
        res.statistic_name = "n10"
        res.statistic = float(n10)
        res.p_value = float(stats.binomtest(n10, n10 + n01, 0.5).pvalue) if n10 + n01 else 1.0
        res.p_value_method = "exact_binomial"
        if all_ties:
            res.note = "all_ties"
        res.ci_low, res.ci_high = newcombe_interval(n11, n10, n01, n00, alpha)
        res.ci_method = "newcombe"
        return res

    raise ValueError(f"unknown test {test!r}")


def _interval(res: TestResult, a: np.ndarray, b: np.ndarray, d: np.ndarray, alpha: float,
              zero_var: bool, all_ties: bool, binary: bool) -> None:
    """The interval reported for tests without a natural one.

    On 0/1 metrics it is Newcombe's interval for the paired difference of proportions, which
    stays inside [-1, 1]; otherwise the t-interval of the mean difference (none under zero
    variance: a zero-width interval would overstate certainty)."""
    if binary:
        res.ci_low, res.ci_high = newcombe_interval(*_binary_table(a, b), alpha)
        res.ci_method = "newcombe"
        return
    if all_ties:
        res.ci_low, res.ci_high, res.ci_method = 0.0, 0.0, "t"
        return
    if zero_var:
        return
    res.ci_low, res.ci_high = t_interval(d, alpha)
    res.ci_method = "t"
