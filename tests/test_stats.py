"""Tests of the pure compare engine (themis_daemon.stats).

Expected values come from SciPy calls recorded in tests/data/compare-reference-cases.json, from
independent brute-force re-implementations written here, or from statistical properties; never
from the engine's own output.
"""

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from themis_daemon.stats import (
    CORRECTIONS,
    TESTS,
    CompareError,
    adjust_pvalues,
    compare_runs,
    newcombe_interval,
    sign_flip_pvalue,
    summarize_scores,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
with open(os.path.join(HERE, "data", "compare-reference-cases.json"), encoding="utf-8") as fh:
    REF = json.load(fh)
CASES = {c["name"]: c for c in REF["cases"]}


def run(run_id, metric_values, keys=None):
    """(run_id, scores) with one value per sample; keys default to 0..n-1."""
    out = {}
    for metric, values in metric_values.items():
        ks = keys if keys is not None else range(len(values))
        out[metric] = {k: [float(v)] for k, v in zip(ks, values)}
    return run_id, out


def pair(a, b, metric="m"):
    return [run("A", {metric: a}), run("B", {metric: b})]


def row_of(result, metric=None, run_a=None, run_b=None):
    rows = [r for r in result["pairwise_results"]
            if (metric is None or r["metric"] == metric)
            and (run_a is None or r["run_a"] == run_a) and (run_b is None or r["run_b"] == run_b)]
    assert len(rows) == 1
    return rows[0]


def dumps(result):
    return json.dumps(result, allow_nan=False, sort_keys=False)


# --------------------------------------------------------------------------- reference cases

@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_means_and_delta(name):
    c = CASES[name]
    ref = c["scipy"]
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="none"))
    assert row["n"] == ref["n"]
    assert row["run_a_mean"] == pytest.approx(ref["mean_a"], rel=1e-12, abs=1e-12)
    assert row["run_b_mean"] == pytest.approx(ref["mean_b"], rel=1e-12, abs=1e-12)
    assert row["delta"] == pytest.approx(ref["delta"], rel=1e-9, abs=1e-12)
    if ref["mean_b"] == 0:
        assert row["delta_percent"] is None  # upstream said 0.0 (W8)
    else:
        assert row["delta_percent"] == pytest.approx(ref["delta_percent_upstream_rule"], rel=1e-9)
    assert row["p_value"] is None and row["significant"] is False and row["winner"] == "tie"


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_t_test(name):
    c = CASES[name]
    tt = c["scipy"].get("ttest_rel", {})
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="t_test"))
    if c["scipy"]["n"] < 2:
        assert row["p_value"] is None and row["significant"] is False
        return
    p, t = tt["p_value"], tt["statistic"]
    if isinstance(t, str):  # SciPy's nan (identical) / inf (zero variance): must be guarded (W5)
        ref_perm = c["scipy"]["paired_permutation"]["exact_p"]
        assert row["p_value"] == pytest.approx(ref_perm, rel=1e-12)
        assert row["significant"] is False
        return
    assert row["p_value"] == pytest.approx(p, rel=1e-9, abs=1e-15)
    assert row["statistic"] == pytest.approx(t, rel=1e-9, abs=1e-12)
    assert [row["ci_low"], row["ci_high"]] == pytest.approx(tt["ci95"], rel=1e-9, abs=1e-12)
    assert row["ci_method"] == "t"
    up = c.get("upstream_themis_1_4_0", {}).get("with_scipy", {}).get("t_test")
    if up:
        assert row["p_value"] == pytest.approx(up["p_value"], rel=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_permutation_is_paired_and_in_band(name):
    c = CASES[name]
    ref = c["scipy"]["paired_permutation"]
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="permutation", seed=0))
    if c["scipy"]["n"] < 2:
        assert row["p_value"] is None and row["note"] == "insufficient_samples"
        return
    lo, hi = ref["band_for_B_10000"]
    assert lo - 1e-12 <= row["p_value"] <= hi + 1e-12
    if "exact_p" in ref:
        # every exact reference case is small or has equal |d|: we must be exact too
        assert row["p_value"] == pytest.approx(ref["exact_p"], rel=1e-9)
        assert row["p_value_method"] in ("exact_sign_flip", "all_ties")
    # upstream's unpaired permutation gave p ~ 0.3 on continuous_16 (W4); paired must be far below
    if name == "continuous_16":
        assert row["p_value"] < 0.001 and row["winner"] == "B"


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_wilcoxon(name):
    """Exact conditional signed-rank p (issue 13, item 6): equal to SciPy where SciPy is exact
    (n <= 50 without ties, or its exhaustive permutation path); where SciPy falls back to the
    normal approximation the engine stays exact: the sign test on 0/1 data, an independent
    Monte-Carlo of the tied signed-rank statistic otherwise."""
    c = CASES[name]
    ref = c["scipy"].get("wilcoxon_wilcox", {})
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="wilcoxon"))
    if c["scipy"]["n"] < 2:
        assert row["p_value"] is None
        return
    if "p_value" not in ref:
        assert row["p_value"] == 1.0 and row["significant"] is False
        return
    assert row["statistic"] == pytest.approx(ref["statistic"])
    d = np.array(c["a"]) - np.array(c["b"])
    nz = d[d != 0]
    scipy_exact = nz.size <= 50 and np.unique(np.abs(nz)).size == nz.size
    if scipy_exact:
        assert row["p_value"] == pytest.approx(ref["p_value"], rel=1e-9)
    elif "mcnemar" in c["scipy"]:
        assert row["p_value"] == pytest.approx(c["scipy"]["mcnemar"]["exact_p"], rel=1e-9)
        assert row["ci_method"] == "exact_conditional" and row["ci_matches_test"] is True
    else:
        r = stats.rankdata(np.abs(nz))
        t_obs = r[nz > 0].sum()
        rng = np.random.default_rng(0)
        sims = (rng.random((200_000, nz.size)) < 0.5) @ r
        mu = r.sum() / 2
        mc = np.mean(np.abs(sims - mu) >= abs(t_obs - mu) - 1e-9)
        assert row["p_value"] == pytest.approx(mc, abs=0.005)
        assert row["p_value"] == pytest.approx(ref["p_value"], abs=0.01)  # SciPy's normal approximation
    # zero-variance rows follow the one degenerate rule (exact sign-flip p, the same number here)
    assert row["p_value_method"] == ("exact_sign_flip" if row["note"] == "zero_variance" else "exact_signed_rank")


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if "mcnemar" in CASES[n]["scipy"]])
def test_reference_mcnemar_and_auto(name):
    c = CASES[name]
    ref = c["scipy"]["mcnemar"]
    for test in ("mcnemar", "auto"):
        row = row_of(compare_runs(pair(c["a"], c["b"]), test=test))
        assert row["test"] == "mcnemar"
        if c["scipy"]["n"] < 2:
            assert row["p_value"] is None and row["winner"] == "tie"
            continue
        assert row["p_value"] == pytest.approx(ref["exact_p"], rel=1e-9)
        assert row["discordant_a_only"] == ref["n10_a_only"]
        assert row["discordant_b_only"] == ref["n01_b_only"]
        # the interval matching the exact test (was Newcombe's, which did not match it: issue 13)
        assert row["ci_method"] == "exact_conditional" and row["ci_matches_test"] is True
        assert -1 <= row["ci_low"] <= row["delta"] <= row["ci_high"] <= 1
        assert (row["ci_low"] > 0 or row["ci_high"] < 0) == (row["p_value"] < 0.05)


def brute_bootstrap_t_interval(d, alpha=0.05, B=20_000, seed=12345):
    """Symmetric studentized bootstrap, written out independently of the engine."""
    d = np.asarray(d, float)
    n = d.size
    rng = np.random.default_rng(seed)
    x = d[rng.integers(0, n, (B, n))]
    sd = x.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(sd > 0, np.abs(x.mean(axis=1) - d.mean()) / (sd / math.sqrt(n)), np.inf)
    q = np.quantile(t, 1 - alpha)
    se = d.std(ddof=1) / math.sqrt(n)
    return d.mean() - q * se, d.mean() + q * se, q


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if "bootstrap_mean_diff" in CASES[n]["scipy"]])
def test_reference_bootstrap_t_interval(name):
    """The bootstrap row's interval is the symmetric bootstrap-t interval (issue 13; it was BCa,
    which covered 0.80-0.91 at n = 10 and did not match the p-value)."""
    c = CASES[name]
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="bootstrap", seed=0))
    assert row["ci_method"] == "bootstrap_t" and row["ci_matches_test"] is True
    assert row["p_value_method"] == "bootstrap_t"
    d = np.array(c["a"]) - np.array(c["b"])
    lo, hi, q = brute_bootstrap_t_interval(d)
    half = (hi - lo) / 2
    assert (row["ci_low"] + row["ci_high"]) / 2 == pytest.approx(d.mean(), abs=1e-12)
    assert (row["ci_high"] - row["ci_low"]) / 2 == pytest.approx(half, rel=0.04)
    if c["scipy"]["n"] >= 200:  # large n: bootstrap-t ~ Student t
        t_lo, t_hi = c["scipy"]["ttest_rel"]["ci95"]
        assert (row["ci_high"] - row["ci_low"]) == pytest.approx(t_hi - t_lo, rel=0.05)


def test_bootstrap_p_is_bootstrap_t_at_every_n():
    """Issue 13, item 1: one method with a correct null at every n (studentized, ddof = 1), not a
    z-type shift p above n = 30 and sign flips below."""
    c = CASES["continuous_16"]
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="bootstrap"))
    assert row["p_value_method"] == "bootstrap_t" and row["statistic_name"] == "t"
    assert row["statistic"] == pytest.approx(c["scipy"]["ttest_rel"]["statistic"], rel=1e-9)
    assert row["p_value"] < 0.01 and row["significant"] and row["ci_high"] < 0


def test_bootstrap_t_p_matches_student_t_at_n200():
    # Bootstrap-t p ~ Student t p (ddof = 1) for a smooth case at n = 200.
    c = CASES["continuous_200_skewed"]
    expected = c["scipy"]["ttest_rel"]["p_value"]
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="bootstrap", seed=3))
    assert row["p_value_method"] == "bootstrap_t"
    assert row["p_value"] == pytest.approx(expected, abs=0.03)
    assert row["mc_stderr"] == pytest.approx(math.sqrt(row["p_value"] * (1 - row["p_value"]) / 10_000))


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_effect_sizes(name):
    c = CASES[name]
    ref = c["scipy"].get("effect_sizes", {})
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="none"))
    for ours, theirs in (("cohens_dz", "cohens_dz"), ("prob_superiority", "prob_a_beats_b_paired"),
                         ("cohens_h", "cohens_h"), ("discordant_odds_ratio", "discordant_odds_ratio")):
        if theirs not in ref:
            continue
        if ref[theirs] is None:
            assert row[ours] is None, ours
        else:
            assert row[ours] == pytest.approx(ref[theirs], rel=1e-9, abs=1e-12), ours


# --------------------------------------------------------------------------- sign flips

def brute_force_sign_flip(d):
    d = np.asarray(d, float)
    obs = abs(d.sum())
    tol = 1e-9 * np.abs(d).sum()
    hits = sum(abs(np.dot(s, np.abs(d))) >= obs - tol for s in itertools.product((-1, 1), repeat=d.size))
    return hits / 2 ** d.size


@pytest.mark.parametrize("seed", range(6))
def test_exact_sign_flip_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    d = np.round(rng.normal(0.3, 1.0, 12), 3)
    p, method, se = sign_flip_pvalue(d, 1000, lambda: np.random.default_rng(0))
    assert method == "exact_sign_flip" and se is None
    assert p == pytest.approx(brute_force_sign_flip(d), rel=1e-12)


def test_few_distinct_monte_carlo_sign_flip_vs_exact_convolution():
    # Likert-style differences in {-2,-1,0,1,2}: the exact null is a convolution of two binomials.
    rng = np.random.default_rng(7)
    d = rng.choice([-2, -1, 0, 1, 2], size=300, p=[0.1, 0.2, 0.3, 0.22, 0.18]).astype(float)
    m1, m2 = int(np.sum(np.abs(d) == 1)), int(np.sum(np.abs(d) == 2))
    obs = abs(d.sum())
    k1, k2 = np.arange(m1 + 1), np.arange(m2 + 1)
    t = (2 * k1[:, None] - m1) + 2 * (2 * k2[None, :] - m2)
    pr = stats.binom.pmf(k1, m1, 0.5)[:, None] * stats.binom.pmf(k2, m2, 0.5)[None, :]
    exact = pr[np.abs(t) >= obs - 1e-9].sum()
    p, method, se = sign_flip_pvalue(d, 10_000, lambda: np.random.default_rng(1))
    assert method == "monte_carlo_sign_flip"
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / 10_000) + 1e-4


# --------------------------------------------------------------------------- determinism

def _three_runs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random(n)
    return [run(f"r{k}", {"acc": (rng.random(n) < 0.55 + 0.05 * k).astype(float),
                          "f1": np.clip(base + rng.normal(0.02 * k, 0.1, n), 0, 1)})
            for k in range(3)]


@pytest.mark.parametrize("test", TESTS)
def test_same_seed_gives_identical_json(test):
    runs = _three_runs()
    kwargs = dict(test=test, seed=11, n_resamples=2000)
    if test == "mcnemar":
        kwargs["metrics"] = ["acc"]
    assert dumps(compare_runs(runs, **kwargs)) == dumps(compare_runs(runs, **kwargs))


def test_seed_is_used_for_resampling():
    runs = _three_runs()
    r1 = row_of(compare_runs(runs, metrics=["f1"], test="bootstrap", seed=1, n_resamples=2000), "f1", "r0", "r1")
    r2 = row_of(compare_runs(runs, metrics=["f1"], test="bootstrap", seed=2, n_resamples=2000), "f1", "r0", "r1")
    assert (r1["ci_low"], r1["ci_high"]) != (r2["ci_low"], r2["ci_high"])


@pytest.mark.parametrize("test", ["bootstrap", "permutation"])
def test_rows_do_not_depend_on_other_rows_or_input_order(test):
    runs = _three_runs()
    full = compare_runs(runs, metrics=["f1", "acc"], test=test, correction="none", n_resamples=2000)
    sub = compare_runs(runs[:2], metrics=["acc", "f1"], test=test, correction="none", n_resamples=2000)
    for metric in ("acc", "f1"):
        assert row_of(full, metric, "r0", "r1") == row_of(sub, metric, "r0", "r1")
    # sample insertion order (file order) must not matter either
    shuffled = []
    rng = np.random.default_rng(5)
    for rid, scores in runs:
        shuffled.append((rid, {m: dict(sorted(v.items(), key=lambda kv: rng.random()))
                               for m, v in reversed(list(scores.items()))}))
    again = compare_runs(shuffled, metrics=["f1", "acc"], test=test, correction="none", n_resamples=2000)
    assert dumps(again) == dumps(full)


def test_mixed_key_types_and_hash_seed_independence():
    code = (
        "import json, sys; sys.path.insert(0, %r)\n"
        "from themis_daemon.stats import compare_runs\n"
        "a = {'m': {**{i: [i %% 3 / 2] for i in range(40)}, **{str(i): [0.2] for i in range(5)}}}\n"
        "b = {'m': {**{i: [(i * 7 %% 5) / 4] for i in range(40)}, **{str(i): [0.7] for i in range(5)}}}\n"
        "print(json.dumps(compare_runs([('x', a), ('y', b)], test='permutation', n_resamples=500), allow_nan=False))\n"
    ) % REPO
    outs = set()
    for hs in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1
    assert json.loads(outs.pop())["pairwise_results"][0]["n"] == 45


# --------------------------------------------------------------------------- degenerate inputs

@pytest.mark.parametrize("test", [t for t in TESTS if t != "none"])
def test_single_common_sample_is_never_significant(test):
    res = compare_runs(pair([1.0], [0.0]), test=test)
    row = row_of(res)
    assert row["p_value"] is None and row["significant"] is False and row["winner"] == "tie"
    assert row["corrected_p_value"] is None and row["note"] == "insufficient_samples"
    assert res["metadata"]["n_hypotheses_corrected"] == 0


@pytest.mark.parametrize("test", ["t_test", "bootstrap", "permutation", "wilcoxon", "auto"])
def test_zero_variance_differences_use_exact_sign_flip(test):
    a = [0.61, 0.72, 0.33, 0.94, 0.45]
    b = [x - 0.01 for x in a]  # differences all 0.01 up to float noise
    row = row_of(compare_runs(pair(a, b), test=test))
    assert row["p_value"] == pytest.approx(2 / 2 ** 5)  # smallest attainable two-sided p at n=5
    assert row["significant"] is False and row["winner"] == "tie"


@pytest.mark.parametrize("test", [t for t in TESTS if t != "none"])
def test_all_ties_give_p_one(test):
    a = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0] * 6
    row = row_of(compare_runs(pair(a, list(a)), test=test))
    assert row["p_value"] == 1.0 and row["significant"] is False and row["winner"] == "tie"


def test_float_noise_differences_count_as_ties():
    a = [0.1 + 0.2] * 50
    b = [0.3] * 50
    row = row_of(compare_runs(pair(a, b), test="t_test"))
    assert row["p_value"] == 1.0 and row["winner"] == "tie"


def test_self_comparison_via_duplicate_run_ids():
    _, scores = run("A", {"m": [0.1, 0.5, 0.9, 0.3]})
    res = compare_runs([("A", scores), ("A", scores)], test="t_test")
    row = row_of(res)
    assert row["p_value"] == 1.0 and row["winner"] == "tie"
    assert [e["run_id"] for e in res["win_loss_summary"]["m"]["rankings"]] == ["A", "A"]
    assert res["win_loss_summary"]["m"]["rankings"][0]["ties"] == 2  # upstream: doubled counts


# --------------------------------------------------------------------------- missing data

def test_non_finite_values_are_dropped_and_counted():
    a = {"m": {0: [1.0, float("nan")], 1: [0.5], 2: [float("inf")], 3: [0.25], 4: [0.75, 0.25]}}
    b = {"m": {0: [0.5], 1: [float("-inf"), 0.0], 2: [1.0], 3: [0.5], 5: [0.1]}}
    res = compare_runs([("A", a), ("B", b)], test="t_test")
    row = row_of(res)
    assert row["n_dropped_nonfinite"] == 3
    assert row["n"] == 3  # samples 0, 1, 3 (sample 2 lost its only value in A)
    assert row["n_only_a"] == 1 and row["n_only_b"] == 2
    assert row["run_a_mean"] == pytest.approx((1.0 + 0.5 + 0.25) / 3)
    assert row["run_b_mean"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    dumps(res)  # no NaN/Infinity anywhere
    assert summarize_scores(a) == {"m": pytest.approx((1.0 + 0.5 + 0.25 + 0.5) / 4)}


def test_summarize_scores_agrees_with_compare_means():
    runs = _three_runs()
    res = compare_runs(runs, test="none")
    for rid, scores in runs:
        summary = summarize_scores(scores)
        for r in res["pairwise_results"]:
            if r["run_a"] == rid:
                assert r["run_a_mean"] == summary[r["metric"]]
            if r["run_b"] == rid:
                assert r["run_b_mean"] == summary[r["metric"]]


@pytest.mark.parametrize("test", TESTS)
def test_output_is_strict_json_for_awkward_inputs(test):
    runs = [("A", {"m": {0: [0.0], 1: [0.0], 2: [float("nan")]}}),
            ("B", {"m": {0: [0.0], 1: [0.0], 2: [0.0]}})]
    if test == "mcnemar":
        runs = [("A", {"m": {0: [0.0], 1: [1.0]}}), ("B", {"m": {0: [0.0], 1: [1.0]}})]
    dumps(compare_runs(runs, test=test))


# --------------------------------------------------------------------------- errors

def test_errors_are_client_errors_with_useful_details():
    runs = pair([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    with pytest.raises(CompareError) as e:
        compare_runs(runs, metrics=["m", "bleu"])
    assert e.value.status == 400 and "bleu" in e.value.detail and "'A'" in e.value.detail

    with pytest.raises(CompareError) as e:
        compare_runs([run("A", {"x": [1]}), run("B", {"y": [1]})])
    assert e.value.status == 400 and "common metrics" in e.value.detail

    with pytest.raises(CompareError) as e:
        compare_runs([run("A", {"m": [1, 0]}, keys=["p", "q"]), run("B", {"m": [1, 0, 1]}, keys=["r", "s", "t"])])
    assert e.value.status == 400 and "(2 samples)" in e.value.detail and "(3 samples)" in e.value.detail

    with pytest.raises(CompareError) as e:
        compare_runs(runs, test="mcnemar")
    assert e.value.status == 400 and "'m'" in e.value.detail

    with pytest.raises(CompareError) as e:
        compare_runs(runs, test="T_TEST")
    assert e.value.detail == "Invalid statistical test: T_TEST"

    with pytest.raises(CompareError) as e:
        compare_runs(runs[:1])
    assert e.value.detail == "Need at least 2 runs to compare"

    for bad in (0.0, 1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(CompareError):
            compare_runs(runs, alpha=bad)
    with pytest.raises(CompareError):
        compare_runs(runs, correction="fdr")


def test_max_work_counts_every_test():
    """Issue 13, item 6: every test's cost is counted (it capped bootstrap/permutation only, so
    t_test passed max_work=1; now the closed-form tests cost n)."""
    runs = pair(np.linspace(0, 1, 100), np.linspace(0.1, 0.9, 100) ** 2)
    with pytest.raises(CompareError) as e:
        compare_runs(runs, test="bootstrap", n_resamples=10_000, max_work=100 * 10_000 - 1)
    assert e.value.status == 400 and "max_work" in e.value.detail
    compare_runs(runs, test="bootstrap", n_resamples=10_000, max_work=100 * 10_000)
    with pytest.raises(CompareError) as e:
        compare_runs(runs, test="permutation", n_resamples=10_000, max_work=100 * 10_000 - 1)
    assert e.value.status == 400 and "max_work" in e.value.detail
    for test in ("t_test", "mcnemar", "wilcoxon"):
        rr = runs if test != "mcnemar" else pair([1, 0] * 50, [0, 0] * 50)
        with pytest.raises(CompareError) as e:
            compare_runs(rr, test=test, max_work=99)
        assert e.value.status == 400 and "max_work" in e.value.detail, test
    compare_runs(runs, test="t_test", n_resamples=10_000, max_work=100)
    compare_runs(runs, test="none", max_work=0)


def test_duplicate_metrics_are_deduplicated():
    runs = pair([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])
    res = compare_runs(runs, metrics=["m", "m"], test="t_test")
    assert res["metrics"] == ["m"] and len(res["pairwise_results"]) == 1


# --------------------------------------------------------------------------- direction, delta%

def test_delta_percent_sign_and_zero_base():
    row = row_of(compare_runs(pair([-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]), test="none"))
    assert row["delta"] == 1.0 and row["delta_percent"] == pytest.approx(50.0)  # upstream: -50
    row = row_of(compare_runs(pair([0.5, 0.5], [0.0, 0.0]), test="none"))
    assert row["delta_percent"] is None  # upstream: 0.0


def test_lower_is_better_inverts_winner_and_best():
    rng = np.random.default_rng(1)
    good = rng.random(300) * 0.1
    bad = good + 0.2 + rng.random(300) * 0.05
    runs = [run("bad", {"error_rate": bad}), run("good", {"error_rate": good})]
    res = compare_runs(runs, test="t_test", lower_is_better=["error_rate"])
    row = row_of(res)
    assert row["delta"] > 0 and row["significant"] and row["winner"] == "good"
    assert res["best_run_per_metric"]["error_rate"] == "good"
    assert res["overall_best_run"] == "good"
    plain = compare_runs(runs, test="t_test")
    assert row_of(plain)["winner"] == "bad" and plain["best_run_per_metric"]["error_rate"] == "bad"


def test_best_run_uses_samples_common_to_all_runs():
    # W7: A and B share samples 0-4; there A = 1.0 and B = 0.6, but B's full-set mean is higher.
    a = run("A", {"accuracy": [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]})
    b = run("B", {"accuracy": [0.6] * 5 + [1.0] * 5}, keys=list(range(5)) + list(range(10, 15)))
    res = compare_runs([a, b], test="none")
    assert res["best_run_per_metric"]["accuracy"] == "A"
    assert res["metadata"]["best_run_basis"]["accuracy"] == "common_samples"
    # no sample common to all three runs -> fall back to each run's own samples
    a2 = run("A", {"accuracy": [0.5, 0.5]}, keys=[100, 0])
    b2 = run("B", {"accuracy": [0.7, 0.7]}, keys=[0, 1])
    c = run("C", {"accuracy": [0.9, 0.9]}, keys=[1, 100])
    res = compare_runs([a2, b2, c], test="none")
    assert res["metadata"]["best_run_basis"]["accuracy"] == "all_samples"
    assert res["best_run_per_metric"]["accuracy"] == "C"


def test_overall_best_run_is_not_just_the_first_run_when_nothing_is_significant():
    runs = [run("worst", {"m1": [0.1, 0.2], "m2": [0.0, 0.1]}),
            run("mid", {"m1": [0.3, 0.4], "m2": [0.2, 0.3]}),
            run("best", {"m1": [0.5, 0.6], "m2": [0.4, 0.5]})]
    res = compare_runs(runs, test="none")
    assert res["overall_best_run"] == "best"
    assert all(r["winner"] == "tie" for r in res["pairwise_results"])
    # full ties everywhere -> request order decides
    same = [run(x, {"m": [0.5, 0.5]}) for x in ("q", "p")]
    assert compare_runs(same, test="none")["overall_best_run"] == "q"


def test_wilcoxon_direction_disagreeing_with_mean_is_not_a_win():
    b = np.linspace(0.2, 0.6, 21)
    a = b + 0.1
    a[-1] = b[-1] - 5.0  # mean difference negative, almost every sample positive
    row = row_of(compare_runs(pair(a, b), test="wilcoxon"))
    assert row["delta"] < 0 and row["p_value"] < 0.01 and row["significant"]
    assert row["winner"] == "tie" and row["note"] == "wilcoxon_direction_disagrees_with_delta"


def test_auto_resolves_per_metric_kind_and_size():
    rng = np.random.default_rng(3)
    runs = [run(k, {"acc": (rng.random(50) < 0.6).astype(float), "big": rng.random(50),
                    "small": rng.random(50)}) for k in ("A", "B")]
    runs = [(rid, {**s, "small": {k: v for k, v in s["small"].items() if k < 12}}) for rid, s in runs]
    res = compare_runs(runs, test="auto")
    assert row_of(res, "acc")["test"] == "mcnemar"
    assert row_of(res, "big")["test"] == "t_test"
    assert row_of(res, "small")["test"] == "permutation"
    assert row_of(res, "small")["p_value_method"] == "exact_sign_flip"
    assert res["metadata"]["statistical_test"] == "auto"


# --------------------------------------------------------------------------- correction

def test_adjusted_p_values_match_reference_table():
    mc = REF["multiple_comparison"]
    ps = mc["p_values"]
    assert adjust_pvalues(ps, "holm") == pytest.approx(mc["holm"], rel=1e-12)
    assert adjust_pvalues(ps, "bonferroni") == pytest.approx(mc["bonferroni"], rel=1e-12)
    assert adjust_pvalues(ps, "bh") == pytest.approx(mc["benjamini_hochberg"], rel=1e-12)
    assert adjust_pvalues(ps, "by") == pytest.approx(mc["benjamini_yekutieli"], rel=1e-12)
    assert list(adjust_pvalues(ps, "none")) == ps


def hand_holm(ps, alpha):
    """Upstream's step-down rule, written out: reject while p(k) < alpha/(m-k+1)."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: (ps[i], i))
    rejected = [False] * m
    adjusted = [0.0] * m
    running = 0.0
    stop = False
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * ps[i]))
        adjusted[i] = running
        if not stop and ps[i] < alpha / (m - k):
            rejected[i] = True
        else:
            stop = True
    return adjusted, rejected


@pytest.mark.parametrize("seed", range(5))
def test_correction_vs_scipy_and_hand_holm(seed):
    rng = np.random.default_rng(seed)
    ps = np.concatenate([rng.random(12) * 0.05, rng.random(13)])
    ps[3] = ps[7]  # a tie
    for method in ("bh", "by"):
        assert adjust_pvalues(ps, method) == pytest.approx(stats.false_discovery_control(ps, method=method),
                                                           rel=1e-12)
    adj, rej = hand_holm(list(ps), 0.05)
    ours = adjust_pvalues(ps, "holm")
    assert ours == pytest.approx(adj, rel=1e-12)
    assert list(ours < 0.05) == rej


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_correction_applied_to_every_row_and_p_value_stays_raw(correction):
    rng = np.random.default_rng(4)
    base = rng.random(80)
    runs = [run(f"r{k}", {"m": np.clip(base + rng.normal(0.03 * k, 0.1, 80), 0, 1)}) for k in range(4)]
    res = compare_runs(runs, test="t_test", correction=correction)
    rows = res["pairwise_results"]
    raw = [r["p_value"] for r in rows]
    expected = adjust_pvalues(raw, correction)
    for r, e in zip(rows, expected):
        assert r["corrected_p_value"] == pytest.approx(e)
        assert r["significant"] == r["corrected_significant"] == (e < 0.05)
        assert (r["winner"] != "tie") == r["significant"]
        ttest = stats.ttest_rel([v[0] for v in dict(runs)[r["run_a"]]["m"].values()],
                                [v[0] for v in dict(runs)[r["run_b"]]["m"].values()])
        assert r["p_value"] == pytest.approx(ttest.pvalue, rel=1e-9)
    meta = res["metadata"]
    assert meta["n_hypotheses_corrected"] == (0 if correction == "none" else 6)
    assert meta["correction"] == correction
    if correction == "holm":
        assert meta["multiple_comparison_correction"] == "holm-bonferroni"


@pytest.mark.parametrize("test", ["bootstrap", "permutation"])
def test_resampling_tests_are_corrected_too(test):
    runs = _three_runs()
    res = compare_runs(runs, metrics=["f1"], test=test, n_resamples=2000)
    assert res["metadata"]["n_hypotheses_corrected"] == 3
    assert all(r["corrected_p_value"] is not None for r in res["pairwise_results"])


def test_none_test_has_no_p_values():
    res = compare_runs(_three_runs(), test="none")
    for r in res["pairwise_results"]:
        assert r["p_value"] is None and r["corrected_p_value"] is None and r["corrected_significant"] is None
        assert r["significant"] is False and r["winner"] == "tie"
    assert res["metadata"]["n_hypotheses_corrected"] == 0


# --------------------------------------------------------------------------- result shape

def test_result_keys_keep_upstream_contract():
    res = compare_runs(_three_runs(), test="t_test")
    assert list(res) == ["run_ids", "metrics", "best_run_per_metric", "overall_best_run", "pairwise_results",
                         "win_loss_summary", "metadata"]
    upstream_row = ["metric", "run_a", "run_b", "run_a_mean", "run_b_mean", "delta", "delta_percent", "winner",
                    "significant", "p_value", "corrected_significant", "corrected_p_value"]
    for r in res["pairwise_results"]:
        assert list(r)[:12] == upstream_row
    # metric-major, then pairs i<j in request order
    assert [(r["metric"], r["run_a"], r["run_b"]) for r in res["pairwise_results"]] == [
        (m, a, b) for m in ("acc", "f1") for a, b in (("r0", "r1"), ("r0", "r2"), ("r1", "r2"))]
    for m, summary in res["win_loss_summary"].items():
        ranks = summary["rankings"]
        assert sorted(e["run_id"] for e in ranks) == ["r0", "r1", "r2"]
        assert ranks == sorted(ranks, key=lambda e: (-e["wins"], e["losses"]))
    for key in ("statistical_test", "alpha", "n_runs", "n_metrics", "multiple_comparison_correction",
                "n_hypotheses_corrected", "seed", "n_resamples", "correction"):
        assert key in res["metadata"]


def test_newcombe_interval_properties():
    lo, hi = newcombe_interval(40, 30, 16, 114, 0.05)
    assert lo < (30 - 16) / 200 < hi and -1 <= lo and hi <= 1
    lo, hi = newcombe_interval(0, 5, 0, 0, 0.05)  # all discordant one way: bounded by 1, not past it
    assert 0 < lo < hi <= 1
    # at large n it must agree with the Wald interval for paired proportions
    n11, n10, n01, n00 = 8000, 1500, 1200, 9300
    n = n11 + n10 + n01 + n00
    delta = (n10 - n01) / n
    se = math.sqrt(n10 + n01 - (n10 - n01) ** 2 / n) / n
    lo, hi = newcombe_interval(n11, n10, n01, n00, 0.05)
    assert lo == pytest.approx(delta - 1.959964 * se, abs=2e-4)
    assert hi == pytest.approx(delta + 1.959964 * se, abs=2e-4)


# --------------------------------------------------------------------------- issue 13 regressions

ALL_TESTS = ["t_test", "bootstrap", "permutation", "wilcoxon", "mcnemar", "auto"]


def packed(datasets):
    """Two runs whose metrics are independent datasets (rows are independent: own streams)."""
    ra, rb = {}, {}
    for k, (a, b) in enumerate(datasets):
        ra[f"m{k:03d}"] = {i: [float(x)] for i, x in enumerate(a)}
        rb[f"m{k:03d}"] = {i: [float(x)] for i, x in enumerate(b)}
    return [("A", ra), ("B", rb)]


def binary_datasets(n, count, seed, pa=0.3, pb=0.3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        z = rng.standard_normal(n)
        a = (0.7 * z + 0.7 * rng.standard_normal(n) < stats.norm.ppf(pa)).astype(float)
        b = (0.7 * z + 0.7 * rng.standard_normal(n) < stats.norm.ppf(pb)).astype(float)
        out.append((a, b))
    return out


def continuous_datasets(n, count, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        item = rng.random(n)
        out.append((item + rng.standard_t(3, n) * 0.2 + shift, item + rng.standard_t(3, n) * 0.2))
    return out


def excludes_zero(row):
    return row["ci_low"] is not None and not row["ci_low"] <= 0.0 <= row["ci_high"]


@pytest.mark.parametrize("test", ALL_TESTS)
def test_interval_excludes_zero_exactly_when_p_below_alpha(test):
    """Item 2: Newcombe vs McNemar disagreed in 6 % of null rows at n = 10 (17.5 % for 0.4 vs 0.3
    at n = 30), BCa vs the bootstrap p in 10 % / 4 %. Every row now says whether its interval is
    the test's own; where it is, "excludes 0" and "p < alpha" are the same statement."""
    data = (binary_datasets(10, 40, 1) + binary_datasets(30, 40, 2, pa=0.4) + binary_datasets(30, 40, 3))
    if test != "mcnemar":
        data += continuous_datasets(10, 40, 4) + continuous_datasets(30, 40, 5, shift=0.1)
        data += continuous_datasets(30, 40, 6)
    res = compare_runs(packed(data), test=test, correction="none", n_resamples=2000, seed=13)
    matched = disagree = unlabelled = 0
    for row in res["pairwise_results"]:
        if row["ci_method"] is None:
            assert row.get("ci_matches_test") is None and row["note"] in ("zero_variance", "all_ties")
            continue
        if test == "wilcoxon" and row["ci_method"] != "exact_conditional":
            # Wilcoxon tests the pseudo-median: its interval of the mean difference is separate
            assert row["ci_method"] == "t_separate" and row.get("ci_matches_test") is False, row
            continue
        matched += 1
        disagree += excludes_zero(row) != (row["p_value"] < 0.05)
        assert row["significant"] == (row["p_value"] < 0.05)
        unlabelled += row.get("ci_matches_test") is not True
    assert disagree == 0, f"{disagree} of {matched} rows: interval and p-value disagree"
    assert unlabelled == 0
    assert matched >= (120 if test != "wilcoxon" else 60)


@pytest.mark.parametrize("test", ALL_TESTS)
def test_binary_intervals_stay_inside_minus_one_one(test):
    """Item 3: scores [1, 0] vs [0, 1] gave the t interval [-12.7, 12.7] (and 22 % of random
    tables at n = 10 reached outside [-1, 1])."""
    row = row_of(compare_runs(pair([1, 0], [0, 1]), test=test))
    assert -1.0 <= row["ci_low"] <= row["ci_high"] <= 1.0
    res = compare_runs(packed(binary_datasets(10, 60, 7)), test=test, correction="none", n_resamples=1000)
    for row in res["pairwise_results"]:
        assert row["ci_method"] is not None  # 0/1 rows always have a (bounded) interval
        assert -1.0 <= row["ci_low"] <= row["delta"] <= row["ci_high"] <= 1.0, row


def brute_sign_flip_p(d, alpha_shift):
    x = np.asarray(d, float) - alpha_shift
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=x.size)))
    return float(np.mean(np.abs(signs @ x) >= abs(x.sum()) - 1e-9 * np.abs(x).sum()))


def test_sign_flip_interval_is_the_set_of_shifts_not_rejected():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, b = rng.normal(0.4, 1, 9), rng.normal(0, 1, 9)
        row = row_of(compare_runs(pair(a, b), test="permutation"))
        assert row["ci_method"] == "sign_flip" and row["p_value_method"] == "exact_sign_flip"
        d = a - b
        assert row["p_value"] == pytest.approx(brute_sign_flip_p(d, 0.0), abs=1e-12)
        lo, hi = row["ci_low"], row["ci_high"]
        for delta in np.linspace(lo - 1.0, hi + 1.0, 41):
            if min(abs(delta - lo), abs(delta - hi)) < 1e-7:
                continue
            assert (lo <= delta <= hi) == (brute_sign_flip_p(d, delta) >= 0.05), delta
        for end, outside in ((lo, -1), (hi, 1)):  # just inside / just outside each end
            eps = 1e-6 * (hi - lo)
            assert brute_sign_flip_p(d, end - outside * eps) >= 0.05
            assert brute_sign_flip_p(d, end + outside * eps) < 0.05


@pytest.mark.parametrize("test,n", [("bootstrap", 40), ("bootstrap", 300), ("permutation", 40)])
def test_resampling_interval_ends_are_where_the_test_starts_rejecting(test, n):
    """The reported interval is the inversion of the row's own Monte-Carlo test: shifting run a
    by delta (same seed, so the same resamples) gives p >= alpha just inside an end and p < alpha
    just outside."""
    rng = np.random.default_rng(n)
    base = rng.random(n)
    a, b = base + rng.normal(0.05, 0.2, n), base + rng.normal(0, 0.2, n)
    row = row_of(compare_runs(pair(a, b), test=test, seed=5, n_resamples=3000))
    assert row["ci_matches_test"] is True and row["p_value_method"] in ("bootstrap_t", "monte_carlo_sign_flip")
    lo, hi = row["ci_low"], row["ci_high"]
    for end, outside in ((lo, -1), (hi, 1)):
        eps = 1e-6 * (hi - lo)
        p_in = row_of(compare_runs(pair(a - (end - outside * eps), b), test=test, seed=5, n_resamples=3000))
        p_out = row_of(compare_runs(pair(a - (end + outside * eps), b), test=test, seed=5, n_resamples=3000))
        assert p_in["p_value"] >= 0.05 > p_out["p_value"], (end, p_in["p_value"], p_out["p_value"])


def exact_coverage(n, p10, p01, alpha=0.05):
    from themis_daemon.stats.paired_tests import exact_conditional_interval
    psi, total = p10 + p01, 0.0
    for m in range(n + 1):
        pm = stats.binom.pmf(m, n, psi)
        for x in range(m + 1):
            px = stats.binom.pmf(x, m, p10 / psi)
            lo, hi = exact_conditional_interval(x, m - x, n, alpha)
            total += pm * px * (lo <= p10 - p01 <= hi)
    return total


@pytest.mark.parametrize("n", [10, 25])
def test_exact_conditional_interval_covers_at_small_n(n):
    """The 0/1 interval covers >= 0.95 exactly (Newcombe's covered 0.91 at n = 10 under the
    calibration harness's correlated Bernoulli(0.3))."""
    for p10, p01 in ((0.1, 0.1), (0.2, 0.05), (0.3, 0.0), (0.05, 0.4), (0.45, 0.45)):
        assert exact_coverage(n, p10, p01) >= 0.95, (p10, p01)


def test_huge_scores_give_the_answers_of_ordinary_scores():
    """Item 4: four positive differences of values near 1e308 gave p = 1.0 labelled exact (exact
    p = 0.125), a bootstrap interval with a null end, and significant with winner 'tie' and delta
    null. Rescaling by a power of two must not change any p-value or verdict."""
    a = [1.7e308, 1.6e308, 1.5e308, 1.65e308]
    b = [1.0e308, 0.9e308, 1.1e308, 1.2e308]
    row = row_of(compare_runs(pair(a, b), test="permutation"))
    assert row["p_value"] == 0.125 and row["p_value_method"] == "exact_sign_flip"
    rng = np.random.default_rng(9)
    base = rng.random(12)
    x, y = base + rng.normal(0.3, 0.2, 12), base + rng.normal(0, 0.2, 12)
    for test in ALL_TESTS[:-2]:
        plain = row_of(compare_runs(pair(x, y), test=test))
        for e in (1000, -1000):  # ~1e301 and ~1e-301 (2**-1060 would make the inputs subnormal)
            s = 2.0 ** e
            row = row_of(compare_runs(pair(x * s, y * s), test=test))
            dumps(row)
            assert row["p_value"] == plain["p_value"], (test, e)
            assert (row["significant"], row["p_value_method"], row["ci_method"]) == (
                plain["significant"], plain["p_value_method"], plain["ci_method"])
            assert row["delta"] == pytest.approx(plain["delta"] * s, rel=1e-12)
            for key in ("ci_low", "ci_high"):
                assert row[key] == pytest.approx(plain[key] * s, rel=1e-9), (test, e, key)
            assert not (row["significant"] and row["winner"] == "tie")


def test_unrepresentable_difference_is_a_400_naming_runs_metric_and_sample():
    a = {"loss": {"q1": [1.7e308], "q2": [1.6e308], "q3": [1.5e308]}}
    b = {"loss": {"q1": [-1.7e308], "q2": [-1.6e308], "q3": [-1.5e308]}}
    for test in ("t_test", "bootstrap", "permutation", "none"):
        with pytest.raises(CompareError) as e:
            compare_runs([("big", a), ("neg", b)], test=test)
        assert e.value.status == 400
        for needle in ("'loss'", "'big'", "'neg'", "'q1'"):
            assert needle in e.value.detail, (test, e.value.detail)


def test_repeats_near_float_max_are_averaged_without_overflow():
    scores = {"m": {0: [1.5e308, 1.5e308], 1: [1.0e308], 2: [1.2e308, 1.6e308]}}
    assert summarize_scores(scores)["m"] == pytest.approx(1.5e308 / 3 + 1.0e308 / 3 + 1.4e308 / 3, rel=1e-12)
    other = {"m": {0: [1.0e308], 1: [0.5e308], 2: [1.0e308]}}
    res = compare_runs([("A", scores), ("B", other)], test="t_test")
    row = row_of(res)
    assert row["run_a_mean"] == pytest.approx(1.3e308, rel=1e-12) and row["delta"] > 0
    assert res["best_run_per_metric"]["m"] == "A"
    dumps(res)


def test_zero_variance_rule_is_the_same_for_every_test():
    """Item 5: zero-variance differences gave a zero-width 'bca' interval in bootstrap but none in
    permutation and t_test. One rule: exact sign-flip p, no interval except on 0/1 metrics."""
    a = [0.61, 0.72, 0.33, 0.94, 0.45, 0.52, 0.18, 0.77]
    b = [x - 0.01 for x in a]
    for test in ("t_test", "bootstrap", "permutation", "wilcoxon", "auto"):
        row = row_of(compare_runs(pair(a, b), test=test))
        assert (row["p_value"], row["p_value_method"], row["note"]) == (2 / 2 ** 8, "exact_sign_flip", "zero_variance")
        assert (row["ci_low"], row["ci_high"], row["ci_method"], row.get("ci_matches_test")) == (None, None, None, None)
        assert row["significant"] and row["winner"] == "A"
    ones, zeros = [1.0] * 8, [0.0] * 8
    for test in ALL_TESTS:
        row = row_of(compare_runs(pair(ones, zeros), test=test))
        assert row["p_value"] == pytest.approx(2 / 2 ** 8)
        assert row["ci_method"] == "exact_conditional" and row["ci_matches_test"] is True
        assert 0.0 < row["ci_low"] <= row["ci_high"] == 1.0


def test_zero_tolerance_is_relative():
    """Item 5: differences of 7e-13 on scores of scale 5e-13 were called all ties (the tolerance
    was absolute below scale 1); float noise at any scale still is a tie."""
    a = np.array([5e-13 * (1 + 0.1 * i) for i in range(10)])
    b = a - np.array([7e-13 * (1 + 0.05 * i) for i in range(10)])
    for test in ("t_test", "permutation", "wilcoxon", "bootstrap"):
        row = row_of(compare_runs(pair(a, b), test=test))
        assert row["note"] != "all_ties" and row["p_value"] < 0.01 and row["winner"] == "A", test
    for scale in (1e-200, 1.0, 1e200):
        row = row_of(compare_runs(pair([(0.1 + 0.2) * scale] * 20, [0.3 * scale] * 20), test="t_test"))
        assert row["p_value"] == 1.0 and row["note"] == "all_ties"


def test_wilcoxon_with_ties_is_exact_fast_and_agrees_with_scipy():
    """Item 6: SciPy's permutation path took 176 ms per row at n = 10 and 1.5 s at n = 13."""
    import time
    rng = np.random.default_rng(11)
    data = [(rng.integers(0, 5, 13) / 4.0, rng.integers(0, 5, 13) / 4.0) for _ in range(10)]
    compare_runs(packed(data[:1]), test="wilcoxon")  # warm-up
    t0 = time.perf_counter()
    res = compare_runs(packed(data), test="wilcoxon", correction="none")
    assert time.perf_counter() - t0 < 1.0  # 10 rows; SciPy needed ~15 s
    for (a, b), row in zip(data, res["pairwise_results"]):
        if not np.any(a - b):
            continue
        ref = stats.wilcoxon(a, b, zero_method="wilcox")
        assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert row["p_value_method"] == "exact_signed_rank"


def test_wilcoxon_cost_is_counted_and_capped():
    rng = np.random.default_rng(12)
    a, b = rng.random(60), rng.random(60)
    with pytest.raises(CompareError) as e:
        compare_runs(pair(a, b), test="wilcoxon", max_work=59)
    assert e.value.status == 400 and "max_work" in e.value.detail
    from themis_daemon.stats.paired_tests import wilcoxon_work
    exact = row_of(compare_runs(pair(a, b), test="wilcoxon"))
    assert exact["p_value_method"] == "exact_signed_rank"
    capped = row_of(compare_runs(pair(a, b), test="wilcoxon", max_work=60 + wilcoxon_work(60) - 1))
    assert capped["p_value_method"] == "normal_approx_signed_rank"
    assert capped["note"] == "exact_wilcoxon_over_max_work"
    assert capped["p_value"] == pytest.approx(exact["p_value"], abs=0.01)


# --------------------------------------------------------------------------- calibration

@pytest.mark.slow
def test_family_wise_error_under_true_null_stays_near_alpha():
    """6 exchangeable runs (15 correlated pairs): upstream's uncorrected bootstrap flagged >= 1 pair
    in 30% of replications (W1). With correction on every test the FWER must stay <= alpha, and
    the uncorrected per-comparison rate must be near alpha (small-n included, W6)."""
    alpha, reps = 0.05, 300
    rng = np.random.default_rng(2024)
    fam = {"bootstrap": 0, "permutation": 0, "t_test": 0}
    per = {"bootstrap": [0, 0], "permutation": [0, 0]}
    small_fp = 0
    for rep in range(reps):
        difficulty = rng.beta(2, 2, 100)
        runs = [run(f"r{k}", {"m": np.clip(difficulty + rng.normal(0, 0.15, 100), 0, 1)}) for k in range(6)]
        for test in fam:
            res = compare_runs(runs, test=test, seed=rep, n_resamples=1000, alpha=alpha)
            fam[test] += any(r["significant"] for r in res["pairwise_results"])
        for test in per:
            res = compare_runs(runs[:3], test=test, seed=rep, n_resamples=1000, correction="none")
            per[test][0] += sum(r["significant"] for r in res["pairwise_results"])
            per[test][1] += len(res["pairwise_results"])
        small = [run(f"s{k}", {"m": rng.lognormal(0, 1, 12)}) for k in range(2)]
        small_fp += row_of(compare_runs(small, test="bootstrap", seed=rep))["significant"]
    se = math.sqrt(alpha * (1 - alpha) / reps)
    for test, hits in fam.items():
        assert hits / reps <= alpha + 3 * se, (test, hits / reps)
    for test, (hits, total) in per.items():
        assert 0.02 <= hits / total <= 0.085, (test, hits / total)
    assert small_fp / reps <= alpha + 3 * se  # percentile bootstrap was at 11-15% here (W6)


# --------------------------------------------------------------------------- request schema

def test_compare_request_schema():
    jsonschema = pytest.importorskip("jsonschema")
    with open(os.path.join(REPO, "schemas", "compare_request.schema.json"), encoding="utf-8") as fh:
        schema = json.load(fh)
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    ok = [
        {"run_ids": ["a", "b"]},
        {"run_ids": ["a", "c"], "metrics": None, "statistical_test": "T_TEST"},  # handler's 400
        {"run_ids": ["a", "b"], "metrics": ["acc"], "alpha": 0.1, "correction": "by", "seed": 3,
         "n_resamples": 2000, "lower_is_better": ["loss"], "statistical_test": "auto"},
    ]
    bad = [
        {},
        {"run_ids": ["a", "a"]},  # distinct ids (the handler answers 400 naming them first)
        {"run_ids": ["a"]},  # at least 2 (the handler answers its original 400 first)
        {"run_ids": "a"},
        {"run_ids": ["a", "b"], "metrics": []},
        {"run_ids": ["a", "b"], "metrics": [""]},
        {"run_ids": ["a", "b"], "alpha": 1.5},
        {"run_ids": ["a", "b"], "alpha": 0},
        {"run_ids": ["a", "b"], "correction": "fdr"},
        {"run_ids": ["a", "b"], "seed": -1},
        {"run_ids": ["a", "b"], "seed": 1.5},
        {"run_ids": ["a", "b"], "n_resamples": 10},
        {"run_ids": ["a", "b"], "statistical_test": 3},
        {"run_ids": ["a", "b"], "extra": 1},
    ]
    for body in ok:
        assert v.is_valid(body), body
    for body in bad:
        assert not v.is_valid(body), body
    for name, prop in schema["properties"].items():
        assert prop.get("title") and prop.get("description"), name
    # the schema's enums/defaults must agree with the engine
    assert schema["properties"]["correction"]["enum"] == list(CORRECTIONS)
    assert set(schema["properties"]["statistical_test"]["examples"]) == set(TESTS)
