"""Per-sample collapsing and pairwise alignment of metric scores.

Kept separate from the tests so that REST summaries (``summarize_scores``) and the
compare engine share one definition of "the score of a sample".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np


def stable_mean(values: np.ndarray) -> float:
    """Mean of finite float64 values that cannot overflow: values whose magnitude is near the top
    of the float range are scaled by a power of two (exact) before summing. |mean| <= max |value|,
    so the result is always finite; for ordinary values it is bit-identical to np.mean."""
    v = np.asarray(values, dtype=np.float64)
    top = float(np.max(np.abs(v)))
    if top <= 2.0 ** 1000:
        m = float(np.mean(v))
        if math.isfinite(m):
            return m
    e = math.frexp(top)[1]
    return math.ldexp(float(np.mean(np.ldexp(v, -e))), e)


def sample_sort_key(key: Hashable) -> Tuple[str, Any]:
    """Total order over mixed str/int sample ids (``1`` and ``"1"`` are distinct ids)."""
    return (type(key).__name__, key)


def sort_sample_keys(keys) -> List[Hashable]:
    keys = list(keys)
    try:
        if all(type(k) is str for k in keys) or all(type(k) is int for k in keys):
            return sorted(keys)
        return sorted(keys, key=sample_sort_key)
    except TypeError:
        # Exotic key types (e.g. None mixed with str): fall back to their repr so the order stays
        # deterministic instead of raising.
        return sorted(keys, key=lambda k: (type(k).__name__, repr(k)))


@dataclass(frozen=True)
class MetricSamples:
    """One run's scores for one metric, collapsed to one value per sample and sorted by sample id."""

    keys: Tuple[Hashable, ...]
    values: np.ndarray  # float64, finite, aligned with keys
    n_dropped_nonfinite: int  # individual values dropped (NaN/inf/non-numeric)
    index: Dict[Hashable, int]

    @property
    def is_binary(self) -> bool:
        v = self.values
        return bool(v.size == 0 or np.all((v == 0.0) | (v == 1.0)))

    def mean(self) -> Optional[float]:
        return stable_mean(self.values) if self.values.size else None


def _slow_collapse(items) -> Tuple[List[Hashable], List[float], int]:
    keys: List[Hashable] = []
    means: List[float] = []
    dropped = 0
    for key, raw in items:
        seq = raw if isinstance(raw, (list, tuple, np.ndarray)) else [raw]
        good = []
        for x in seq:
            try:
                fx = float(x)
            except (TypeError, ValueError):
                dropped += 1
                continue
            if math.isfinite(fx):
                good.append(fx)
            else:
                dropped += 1
        if good:
            keys.append(key)
            total = sum(good)  # sequential, like the bincount path
            means.append(total / len(good) if math.isfinite(total) else stable_mean(np.asarray(good)))
    return keys, means, dropped


def collapse_metric(per_sample: Mapping[Hashable, Sequence[float]]) -> MetricSamples:
    """Average repeats per sample (Miller 2024: it reduces within-question variance), dropping and
    counting non-finite values; a sample left with no finite value is treated as missing."""
    items = [(k, per_sample[k]) for k in sort_sample_keys(per_sample.keys())]
    try:
        lengths = np.fromiter((len(v) for _, v in items), dtype=np.int64, count=len(items))
        flat = np.fromiter(chain.from_iterable(v for _, v in items), dtype=np.float64, count=int(lengths.sum()))
    except (TypeError, ValueError):
        keys, means, dropped = _slow_collapse(items)
        vals = np.asarray(means, dtype=np.float64)
    else:
        finite = np.isfinite(flat)
        dropped = int(flat.size - np.count_nonzero(finite))
        if dropped == 0 and flat.size == len(items):
            keys, vals = [k for k, _ in items], flat  # the common case: one finite value per sample
        else:
            seg = np.repeat(np.arange(len(items)), lengths)
            cnt = np.bincount(seg[finite], minlength=len(items))
            tot = np.bincount(seg[finite], weights=flat[finite], minlength=len(items))
            keep = cnt > 0
            keys = [k for (k, _), ok in zip(items, keep) if ok]
            vals = tot[keep] / cnt[keep]
            if not np.all(np.isfinite(vals)):
                # Repeats near the top of the float range overflowed their sum: average them
                # scaled by a power of two (exact), then scale back (|mean| <= max |value|).
                e = math.frexp(float(np.max(np.abs(flat[finite]))))[1]
                tot = np.bincount(seg[finite], weights=np.ldexp(flat[finite], -e), minlength=len(items))
                vals = np.ldexp(tot[keep] / cnt[keep], e)
    vals = np.ascontiguousarray(vals, dtype=np.float64)
    keys_t = tuple(keys)
    return MetricSamples(keys_t, vals, dropped, {k: i for i, k in enumerate(keys_t)})


@dataclass(frozen=True)
class Aligned:
    a: np.ndarray
    b: np.ndarray
    n_only_a: int
    n_only_b: int
    keys: Tuple[Hashable, ...] = ()


def align(x: MetricSamples, y: MetricSamples) -> Aligned:
    """Intersect by sample id, in sorted-id order, so results do not depend on file order."""
    if x.keys == y.keys:
        return Aligned(x.values, y.values, 0, 0, x.keys)
    common = [i for i, k in enumerate(x.keys) if k in y.index]
    ia = np.asarray(common, dtype=np.intp)
    ib = np.asarray([y.index[x.keys[i]] for i in common], dtype=np.intp)
    return Aligned(x.values[ia], y.values[ib], len(x.keys) - len(common), len(y.keys) - len(common),
                   tuple(x.keys[i] for i in common))
