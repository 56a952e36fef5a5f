"""Which paired samples fall in which cell of a two-run comparison on one metric.

Pairs are made exactly as ``compare_runs`` makes them (``collapse_metric`` then ``align``), so
the cells' sizes are the counts McNemar's test and the ``discordant_*`` effect sizes use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence

import numpy as np

from .align import align, collapse_metric, sample_sort_key, stable_mean
from .errors import CompareError

CELLS = ("a_only", "b_only", "both", "neither")
KINDS = CELLS + ("by_delta",)


@dataclass(frozen=True)
class Selection:
    """The samples of one kind, in their order, plus what the whole pairing looked like."""

    keys: List[Hashable]
    a: np.ndarray
    b: np.ndarray
    binary: bool
    n: int
    n_only_a: int
    n_only_b: int
    n_different: int
    counts: Optional[Dict[str, int]]
    mean_a: Optional[float]
    mean_b: Optional[float]


def select(scores_a: Mapping[str, Mapping[Any, Sequence[float]]], scores_b: Mapping[str, Mapping[Any, Sequence[float]]],
           metric: str, kind: str, run_a: str = "A", run_b: str = "B") -> Selection:
    """The paired samples of `kind`: a McNemar cell of a 0/1 metric (in sample-id order, as
    compare aligns them) or every pair sorted by |A - B|, largest first (ties in id order)."""
    if kind not in KINDS:
        raise CompareError(400, f"Unknown kind {kind!r}; use one of {', '.join(KINDS)}", {"kinds": list(KINDS)})
    for rid, scores in ((run_a, scores_a), (run_b, scores_b)):
        if metric not in scores:
            raise CompareError(404, f"Metric '{metric}' not found in run '{rid}'",
                               {"run_id": rid, "metric": metric, "metrics": sorted(scores)})
    xa, xb = collapse_metric(scores_a[metric]), collapse_metric(scores_b[metric])
    binary = xa.is_binary and xb.is_binary
    if kind in CELLS and not binary:
        bad = run_a if not xa.is_binary else run_b
        raise CompareError(400, f"kind '{kind}' needs a 0/1 metric, but '{metric}' has other values "
                                f"(e.g. in run '{bad}'); use kind=by_delta",
                           {"metric": metric, "run_id": bad, "binary": False})
    al = align(xa, xb)
    a, b = al.a, al.b
    diff = a - b
    counts = None
    if binary:
        cells = {
            "a_only": (a == 1.0) & (b == 0.0),
            "b_only": (a == 0.0) & (b == 1.0),
            "both": (a == 1.0) & (b == 1.0),
            "neither": (a == 0.0) & (b == 0.0),
        }
        counts = {k: int(np.count_nonzero(v)) for k, v in cells.items()}
    if kind == "by_delta":
        with np.errstate(over="ignore", invalid="ignore"):
            size = np.abs(diff)
        # Differences of huge opposite values overflow to inf: still the largest.
        order = np.argsort(-np.nan_to_num(size, nan=np.inf), kind="stable")
    else:
        order = np.flatnonzero(cells[kind])
    return Selection(
        keys=[al.keys[i] for i in order], a=a[order], b=b[order], binary=binary, n=int(a.size),
        n_only_a=al.n_only_a, n_only_b=al.n_only_b, n_different=int(np.count_nonzero(a != b)),
        counts=counts, mean_a=stable_mean(a) if a.size else None, mean_b=stable_mean(b) if b.size else None)


def pair_items(sel: Selection, start: int, stop: int, samples_a: List[Dict[str, Any]],
               samples_b: List[Dict[str, Any]], metric: str) -> List[Dict[str, Any]]:
    """One item per pair of the page: the prompt and reference once (B's only when they
    differ), both responses, the metric's paired scores and each run's full sample scores."""
    # Typed keys, as align pairs them: 1, 1.0, True and "1" stay distinct samples.
    by_a = {sample_sort_key(s.get("id")): s for s in samples_a}
    by_b = {sample_sort_key(s.get("id")): s for s in samples_b}
    out = []
    for key, va, vb in zip(sel.keys[start:stop], sel.a[start:stop], sel.b[start:stop]):
        sa, sb = by_a.get(sample_sort_key(key), {}), by_b.get(sample_sort_key(key), {})
        item: Dict[str, Any] = {
            "id": key,
            "prompt": sa.get("prompt", ""),
            "reference": sa.get("reference") if sa.get("reference") is not None else sb.get("reference"),
            "score_a": float(va),
            "score_b": float(vb),
            "delta": float(va - vb),
            "a": _side(sa),
            "b": _side(sb),
        }
        if sb.get("prompt") not in (None, sa.get("prompt")):
            item["prompt_b"] = sb.get("prompt")
        if sa.get("reference") is not None and sb.get("reference") not in (None, sa.get("reference")):
            item["reference_b"] = sb.get("reference")
        out.append(item)
    return out


def _side(sample: Dict[str, Any]) -> Dict[str, Any]:
    side = {"response": sample.get("response", ""), "scores": sample.get("scores") or {}}
    for field in ("details", "errors", "error", "candidates"):
        if sample.get(field):
            side[field] = sample[field]
    return side
