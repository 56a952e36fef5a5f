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
    c = CASES[name]
    ref = c["scipy"].get("wilcoxon_wilcox", {})
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="wilcoxon"))
    if c["scipy"]["n"] < 2:
        assert row["p_value"] is None
    elif "p_value" not in ref:
        assert row["p_value"] == 1.0 and row["significant"] is False
    else:
        assert row["p_value"] == pytest.approx(ref["p_value"], rel=1e-9)
        assert row["statistic"] == pytest.approx(ref["statistic"])


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
        assert row["ci_method"] == "newcombe"
        assert -1 <= row["ci_low"] <= row["delta"] <= row["ci_high"] <= 1


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if "bootstrap_mean_diff" in CASES[n]["scipy"]])
def test_reference_bootstrap_bca_interval(name):
    c = CASES[name]
    ref = c["scipy"]["bootstrap_mean_diff"]["BCa"]
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="bootstrap", seed=0))
    assert row["ci_method"] == "bca"
    binary = set(c["a"]) | set(c["b"]) <= {0.0, 1.0}
    step = 1.0 / c["scipy"]["n"] if binary else 0.0  # 0/1 means live on a 1/n grid
    # The reference gives min/max over 12 seeds; a 13th draw lands outside that range with
    # probability ~2/13 per side, so widen the range by its own width (and one grid step).
    for value, key in ((row["ci_low"], "ci95_low_range_B10000_12seeds"),
                       (row["ci_high"], "ci95_high_range_B10000_12seeds")):
        lo, hi = ref[key]
        w = max(hi - lo, step)
        assert lo - w - 1e-12 <= value <= hi + w + 1e-12, (key, value, lo, hi)


def test_bootstrap_small_n_takes_exact_sign_flip_p():
    c = CASES["continuous_16"]
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="bootstrap"))
    assert row["p_value"] == pytest.approx(c["scipy"]["paired_permutation"]["exact_p"], rel=1e-9)
    assert row["p_value_method"] == "exact_sign_flip"


def test_bootstrap_shift_p_matches_normal_theory_at_n200():
    # Shift-method p ~ P(|N(0, se)| >= |delta|) with the bootstrap SE sd(d)/sqrt(n) for a smooth case.
    c = CASES["continuous_200_skewed"]
    d = np.array(c["a"]) - np.array(c["b"])
    se = d.std(ddof=0) / math.sqrt(d.size)
    expected = 2 * stats.norm.sf(abs(d.mean()) / se)
    row = row_of(compare_runs(pair(c["a"], c["b"]), test="bootstrap", seed=3))
    assert row["p_value_method"] == "bootstrap_shift"
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


def test_max_work_caps_resampling_only():
    runs = pair(np.linspace(0, 1, 100), np.linspace(0.1, 0.9, 100) ** 2)
    with pytest.raises(CompareError) as e:
        compare_runs(runs, test="bootstrap", n_resamples=10_000, max_work=100 * 10_000 - 1)
    assert e.value.status == 400 and "max_work" in e.value.detail
    compare_runs(runs, test="bootstrap", n_resamples=10_000, max_work=100 * 10_000)
    compare_runs(runs, test="t_test", n_resamples=10_000, max_work=1)


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
        {"run_ids": ["a"]},  # "fewer than 2" is the handler's 400, not a schema error
        {"run_ids": ["a", "a"], "metrics": None, "statistical_test": "T_TEST"},  # handler's 400
        {"run_ids": ["a", "b"], "metrics": ["acc"], "alpha": 0.1, "correction": "by", "seed": 3,
         "n_resamples": 2000, "lower_is_better": ["loss"], "statistical_test": "auto"},
    ]
    bad = [
        {},
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
