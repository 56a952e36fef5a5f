"""Pairwise comparison of evaluation runs: the engine behind ``POST /api/compare``.

Pure and deterministic: the same inputs give a byte-identical ``json.dumps`` of the result, every
random draw comes from a stream derived from ``seed`` and the identity of what is being tested, and
no NaN/Infinity is ever returned. Response shape and meaning follow Themis 1.4.0 (see
docs/compare-semantics.md); everything new is in additional keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from .align import MetricSamples, align, collapse_metric, stable_mean
from .correction import CORRECTION_LABELS, CORRECTIONS, reject
from .errors import TESTS, CompareError
from .paired_tests import (
    TestResult,
    cancellable,
    check_cancelled,
    clean_differences,
    effect_sizes,
    estimate_work,
    is_zero_variance,
    needs_index_bootstrap,
    resolve_auto,
    run_test,
    scale_exponent,
    scaled,
    shared_index_bootstrap,
    zero_tolerance,
)

RESAMPLING_TESTS = ("bootstrap", "permutation")

Scores = Mapping[str, Mapping[Hashable, Sequence[float]]]


def summarize_scores(scores: Scores) -> Dict[str, Optional[float]]:
    """Per-metric mean over samples (repeats averaged first, non-finite dropped), i.e. exactly what
    compare uses, so REST summaries and compare agree."""
    return {m: collapse_metric(scores[m]).mean() for m in sorted(scores)}


def _stream(seed: int, *identity: Any) -> np.random.Generator:
    """Generator keyed by seed + identity via SHA-256 (Python's hash() is salted per process)."""
    digest = hashlib.sha256(json.dumps(list(identity), separators=(",", ":")).encode()).digest()
    key = int.from_bytes(digest[:8], "big")
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(key,)))


def _factory(seed: int, *identity: Any):
    calls = [0]

    def make() -> np.random.Generator:
        calls[0] += 1
        return _stream(seed, *identity, calls[0])

    return make


def _finite(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None, recursively."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


def _validate(runs, test, alpha, correction, seed, n_resamples, max_work) -> None:
    if test not in TESTS:
        raise CompareError(400, f"Invalid statistical test: {test}")
    if correction not in CORRECTIONS:
        raise CompareError(400, f"Invalid correction: {correction} (expected one of {', '.join(CORRECTIONS)})")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < 1.0:
        raise CompareError(400, f"alpha must be a number strictly between 0 and 1, got {alpha!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise CompareError(400, f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, numbers.Integral) or n_resamples < 1:
        raise CompareError(400, f"n_resamples must be a positive integer, got {n_resamples!r}")
    if max_work is not None and (isinstance(max_work, bool) or not isinstance(max_work, numbers.Integral)):
        raise CompareError(400, f"max_work must be an integer or None, got {max_work!r}")
    if len(runs) < 2:
        raise CompareError(400, "Need at least 2 runs to compare")


def _select_metrics(run_ids: List[str], scores: List[Scores], metrics: Optional[Iterable[str]]) -> List[str]:
    if metrics is None:
        common = set(scores[0])
        for s in scores[1:]:
            common &= set(s)
        if not common:
            raise CompareError(400, "No common metrics across the compared runs",
                               {"metrics_per_run": {rid: sorted(s) for rid, s in zip(run_ids, scores)}})
        return sorted(common)
    # Upstream kept duplicates (and counted them twice in Holm); de-duplicate, keep order.
    chosen = list(dict.fromkeys(metrics))
    if not chosen:
        raise CompareError(400, "metrics must name at least one metric (or be null for all common metrics)")
    for m in chosen:
        for rid, s in zip(run_ids, scores):
            if m not in s:
                raise CompareError(400, f"Metric '{m}' not found in run '{rid}'", {"run_id": rid, "metric": m})
    return chosen


def _unscaler(e: int, metric: str, run_a: str, run_b: str, row: dict):
    """x * 2**e for a row rescaled by 2**-e; a result beyond the float64 range is a client error
    (400 naming the metric, the runs and the sample with the largest difference), never an
    Infinity/null in the answer."""
    def unscale(x: float) -> float:
        try:
            out = math.ldexp(float(x), e)
        except OverflowError:
            out = math.inf
        if math.isfinite(out):
            return out
        a, b = row["al"].a, row["al"].b
        with np.errstate(over="ignore", invalid="ignore"):
            k = int(np.argmax(np.abs(row["a"] - row["b"])))
        key = row["al"].keys[k] if len(row["al"].keys) > k else k
        raise CompareError(
            400,
            f"Scores of metric '{metric}' are too large to compare runs '{run_a}' and '{run_b}': the mean "
            f"difference or its confidence interval is beyond the float64 range (largest difference at sample "
            f"{key!r}: {float(a[k])!r} vs {float(b[k])!r}); rescale the metric",
            {"metric": metric, "run_a": run_a, "run_b": run_b, "sample_id": key},
        )
    return unscale


def _winner(significant: bool, direction: int, delta: float, run_a: str, run_b: str, lower: bool) -> str:
    if not significant or delta == 0 or direction != (1 if delta > 0 else -1):
        return "tie"
    a_better = (delta > 0) != lower
    return run_a if a_better else run_b


def _best_and_ranks(run_ids, prepared, metric, lower):
    """Means on the samples common to ALL runs (so 'best' is comparable with the rows); falls back
    to each run's own samples when there is no common sample."""
    preps = [prepared[i][metric] for i in range(len(run_ids))]
    if all(p.keys == preps[0].keys for p in preps[1:]):  # the usual case: same sample set everywhere
        common = preps[0].keys
    else:
        common = set(preps[0].keys)
        for p in preps[1:]:
            common &= set(p.keys)
    if common and isinstance(common, tuple):
        basis = "common_samples"
        means = [p.mean() for p in preps]
    elif common:
        basis = "common_samples"
        means = []
        for p in preps:
            idx = np.fromiter((i for i, k in enumerate(p.keys) if k in common), dtype=np.intp)
            means.append(stable_mean(p.values[idx]))
    else:
        basis = "all_samples"
        means = [p.mean() for p in preps]
    best = None
    for i, m in enumerate(means):
        if m is None or not math.isfinite(m):
            continue
        if best is None or (m < means[best] if lower else m > means[best]):
            best = i
    valid = [i for i, m in enumerate(means) if m is not None and math.isfinite(m)]
    ranks: Dict[int, float] = {}
    if valid:
        keyed = np.array([means[i] if lower else -means[i] for i in valid])
        for i, r in zip(valid, stats.rankdata(keyed)):
            ranks[i] = float(r)
    return (run_ids[best] if best is not None else None), basis, len(common), means, ranks


def compare_runs(
    runs: Sequence[Tuple[str, Scores]],
    metrics: Optional[Sequence[str]] = None,
    test: str = "bootstrap",
    alpha: float = 0.05,
    correction: str = "holm",
    seed: int = 0,
    n_resamples: int = 10_000,
    lower_is_better: Iterable[str] = (),
    max_work: Optional[int] = None,
    cancelled: Optional[Callable[[], bool]] = None,
) -> dict:
    """Compare every pair of runs on every metric; see the module docstring and the README.

    `max_work` caps the whole job: the sum of every row's work (see estimate_work). With
    `cancelled`, the job raises Cancelled soon after it turns true (checked between rows and
    between resampling batches), so a worker is not held for an answer nobody will read.
    """
    with cancellable(cancelled):
        return _compare_runs(runs, metrics, test, alpha, correction, seed, n_resamples, lower_is_better, max_work)


def _compare_runs(runs, metrics, test, alpha, correction, seed, n_resamples, lower_is_better, max_work) -> dict:
    runs = list(runs)
    _validate(runs, test, alpha, correction, seed, n_resamples, max_work)
    alpha = float(alpha)
    seed, n_resamples = int(seed), int(n_resamples)
    run_ids = [str(rid) for rid, _ in runs]
    scores = [s for _, s in runs]
    metric_list = _select_metrics(run_ids, scores, metrics)
    lower = {lower_is_better} if isinstance(lower_is_better, str) else set(lower_is_better or ())

    # Collapse each (run, metric) once; duplicate run entries sharing a scores object share the work.
    cache: Dict[Tuple[int, str], MetricSamples] = {}
    prepared: List[Dict[str, MetricSamples]] = []
    for s in scores:
        entry = {}
        for m in metric_list:
            if (id(s), m) not in cache:
                cache[(id(s), m)] = collapse_metric(s[m])
            entry[m] = cache[(id(s), m)]
        prepared.append(entry)

    binary = {m: all(p[m].is_binary for p in prepared) for m in metric_list}
    if test == "mcnemar":
        for m in metric_list:
            if not binary[m]:
                bad = next(rid for rid, p in zip(run_ids, prepared) if not p[m].is_binary)
                raise CompareError(400, f"mcnemar requires 0/1 scores, but metric '{m}' has other values "
                                        f"(e.g. in run '{bad}')", {"metric": m, "run_id": bad})

    # Phase 1: align every row, rescale it if its magnitude is extreme, and check limits before
    # doing any heavy work.
    pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    rows: List[dict] = []
    total_work = 0
    for m in metric_list:
        for i, j in pairs:
            check_cancelled()
            pa, pb = prepared[i][m], prepared[j][m]
            al = align(pa, pb)
            n = int(al.a.size)
            if n == 0:
                raise CompareError(
                    400,
                    f"No overlapping samples for metric '{m}' between runs '{run_ids[i]}' ({len(pa.keys)} samples) "
                    f"and '{run_ids[j]}' ({len(pb.keys)} samples)",
                    {"metric": m, "run_a": run_ids[i], "run_b": run_ids[j],
                     "n_samples_a": len(pa.keys), "n_samples_b": len(pb.keys)},
                )
            used = resolve_auto(binary[m], n) if test == "auto" else test
            e = scale_exponent(al.a, al.b)
            a_s, b_s = scaled(al.a, e), scaled(al.b, e)
            d = clean_differences(a_s, b_s)
            tol = zero_tolerance(a_s, b_s)
            work = estimate_work(used, d, binary[m], n_resamples, tol, max_work)
            if max_work is not None and work > max_work:
                resampling = used in RESAMPLING_TESTS and work == n * n_resamples
                what = (f"{n} aligned samples x {n_resamples} resamples = {work}" if resampling
                        else f"{n} aligned samples; {used} needs {work} operations")
                raise CompareError(
                    400,
                    f"Comparison too large: metric '{m}', runs '{run_ids[i]}' vs '{run_ids[j]}' have {what} "
                    f"> max_work {max_work}; lower n_resamples or use t_test/wilcoxon/mcnemar",
                    {"metric": m, "n": n, "n_resamples": n_resamples, "work": work, "max_work": max_work},
                )
            total_work += work
            rows.append({"metric": m, "i": i, "j": j, "al": al, "test": used, "n": n, "e": e,
                         "a": a_s, "b": b_s, "d": d, "tol": tol,
                         "dropped": pa.n_dropped_nonfinite + pb.n_dropped_nonfinite})

    if max_work is not None and total_work > max_work:
        raise CompareError(
            400,
            f"Comparison too large: {len(rows)} rows ({len(metric_list)} metrics x {len(pairs)} pairs of runs) "
            f"need {total_work} operations in total > max_work {max_work}; compare fewer runs or metrics, "
            f"lower n_resamples or use t_test/wilcoxon/mcnemar",
            {"rows": len(rows), "n_resamples": n_resamples, "work": total_work, "max_work": max_work},
        )

    # Phase 2: bootstrap index streams shared per (metric, n) for continuous rows.
    groups: Dict[Tuple[str, int], List[dict]] = {}
    for r in rows:
        if (r["test"] == "bootstrap" and r["n"] >= 2 and not is_zero_variance(r["d"], r["tol"])
                and needs_index_bootstrap(r["d"])):
            groups.setdefault((r["metric"], r["n"]), []).append(r)
    for (m, n), grp in groups.items():
        moments = shared_index_bootstrap([r["d"] for r in grp], n_resamples,
                                         _stream(seed, "bootstrap-indices", m, n, n_resamples))
        for r, mo in zip(grp, moments):
            r["moments"] = mo

    # Phase 3: tests, per row, each with its own stream.
    results: List[TestResult] = []
    for r in rows:
        check_cancelled()
        ra, rb = run_ids[r["i"]], run_ids[r["j"]]
        results.append(run_test(
            r["test"], r["a"], r["b"], alpha=alpha, n_resamples=n_resamples,
            rng_factory=_factory(seed, r["metric"], ra, rb, r["test"], n_resamples),
            binary=binary[r["metric"]], d=r["d"], moments=r.get("moments"), tol=r["tol"], max_work=max_work,
        ))

    # Phase 4: one correction over every row that has a p-value (whole table, like upstream).
    tested = [k for k, res in enumerate(results) if res.p_value is not None]
    adj, rej = reject([results[k].p_value for k in tested], alpha, correction)
    corrected = {k: (float(p), bool(x)) for k, p, x in zip(tested, adj, rej)}

    pairwise: List[dict] = []
    wl = {m: {rid: [0, 0, 0] for rid in run_ids} for m in metric_list}
    for k, (r, res) in enumerate(zip(rows, results)):
        m, ra, rb = r["metric"], run_ids[r["i"]], run_ids[r["j"]]
        e = r["e"]
        ma, mb = stable_mean(r["a"]), stable_mean(r["b"])
        unscale = _unscaler(e, m, ra, rb, r)
        mean_a, mean_b = unscale(ma), unscale(mb)
        delta = unscale(ma - mb)
        cp, cs = corrected.get(k, (None, None))
        significant = bool(cs)
        winner = _winner(significant, res.direction, ma - mb, ra, rb, m in lower)
        if winner == "tie":
            wl[m][ra][2] += 1
            wl[m][rb][2] += 1
        else:
            loser = rb if winner == ra else ra
            wl[m][winner][0] += 1
            wl[m][loser][1] += 1
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            delta_percent = ((ma - mb) / abs(mb) * 100.0) if mb != 0 else None
        statistic = res.statistic
        if statistic is not None and res.statistic_name == "mean_difference":
            statistic = unscale(statistic)
        row = {
            "metric": m,
            "run_a": ra,
            "run_b": rb,
            "run_a_mean": mean_a,
            "run_b_mean": mean_b,
            "delta": delta,
            "delta_percent": delta_percent,
            "winner": winner,
            "significant": significant,
            "p_value": res.p_value,
            "corrected_significant": cs,
            "corrected_p_value": cp,
            "test": res.test,
            "p_value_method": res.p_value_method,
            "statistic": statistic,
            "statistic_name": res.statistic_name,
            "mc_stderr": res.mc_stderr,
            "ci_low": unscale(res.ci_low) if res.ci_low is not None else None,
            "ci_high": unscale(res.ci_high) if res.ci_high is not None else None,
            "ci_method": res.ci_method,
            "ci_level": 1.0 - alpha if res.ci_method else None,
            "ci_matches_test": res.ci_matches_test,
            "n": r["n"],
            "n_only_a": r["al"].n_only_a,
            "n_only_b": r["al"].n_only_b,
            "n_dropped_nonfinite": r["dropped"],
            "lower_is_better": m in lower,
        }
        row.update(effect_sizes(r["a"], r["b"], r["d"], binary[m], r["tol"]))
        row["note"] = res.note
        pairwise.append(row)

    best_run_per_metric: Dict[str, Optional[str]] = {}
    best_basis: Dict[str, str] = {}
    n_common: Dict[str, int] = {}
    rank_sum = [0.0] * len(run_ids)
    rank_cnt = [0] * len(run_ids)
    for m in metric_list:
        best, basis, nc, _, ranks = _best_and_ranks(run_ids, prepared, m, m in lower)
        best_run_per_metric[m], best_basis[m], n_common[m] = best, basis, nc
        for i, rk in ranks.items():
            rank_sum[i] += rk
            rank_cnt[i] += 1

    win_loss_summary = {}
    for m in metric_list:
        entries = [{"run_id": rid, "wins": wl[m][rid][0], "losses": wl[m][rid][1], "ties": wl[m][rid][2]}
                   for rid in run_ids]
        entries.sort(key=lambda e: (-e["wins"], e["losses"]))  # stable: request order breaks ties
        win_loss_summary[m] = {"rankings": entries}

    total_w = {rid: sum(wl[m][rid][0] for m in metric_list) for rid in run_ids}
    total_l = {rid: sum(wl[m][rid][1] for m in metric_list) for rid in run_ids}
    mean_rank = [rank_sum[i] / rank_cnt[i] if rank_cnt[i] else math.inf for i in range(len(run_ids))]
    order = sorted(range(len(run_ids)),
                   key=lambda i: (-total_w[run_ids[i]], total_l[run_ids[i]], mean_rank[i], i))
    overall_best_run = run_ids[order[0]]

    result = {
        "run_ids": run_ids,
        "metrics": metric_list,
        "best_run_per_metric": best_run_per_metric,
        "overall_best_run": overall_best_run,
        "pairwise_results": pairwise,
        "win_loss_summary": win_loss_summary,
        "metadata": {
            "statistical_test": test,
            "alpha": alpha,
            "n_runs": len(run_ids),
            "n_metrics": len(metric_list),
            "multiple_comparison_correction": CORRECTION_LABELS[correction],
            "n_hypotheses_corrected": len(tested) if correction != "none" else 0,
            "correction": correction,
            "seed": seed,
            "n_resamples": n_resamples,
            "lower_is_better": sorted(m for m in metric_list if m in lower),
            "best_run_basis": best_basis,
            "n_common_samples": n_common,
            "mean_rank": {rid: (mean_rank[i] if math.isfinite(mean_rank[i]) else None)
                          for i, rid in enumerate(run_ids)},
        },
    }
    return _finite(result)
