"""Multiple-comparison adjustment of a family of p-values.

Implemented in numpy (SciPy has no Holm, and ``false_discovery_control`` only exists from 1.11);
the test-suite cross-checks BH/BY against SciPy.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

CORRECTIONS = ("holm", "bh", "by", "bonferroni", "none")

# Long names for ``metadata.multiple_comparison_correction``; "holm-bonferroni" is upstream's value.
CORRECTION_LABELS = {
    "holm": "holm-bonferroni",
    "bh": "benjamini-hochberg",
    "by": "benjamini-yekutieli",
    "bonferroni": "bonferroni",
    "none": "none",
}


def adjust_pvalues(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjusted p-values in input order.

    Holm (FWER, any dependence) is the default because it is what upstream did; BH controls the
    FDR under independence/positive dependence, BY under any dependence. Ties are ordered by input
    position (stable sort) so the output is deterministic.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}")
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0 or method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    order = np.argsort(p, kind="stable")
    ps = p[order]
    rank = np.arange(1, m + 1, dtype=np.float64)
    if method == "holm":
        adj = np.maximum.accumulate((m - rank + 1) * ps)
    else:
        scale = 1.0 if method == "bh" else float(np.sum(1.0 / rank))
        adj = np.minimum.accumulate((ps * m * scale / rank)[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def reject(p_values: Sequence[float], alpha: float, method: str = "holm") -> Tuple[np.ndarray, np.ndarray]:
    """(adjusted p, rejected). A strict ``adjusted < alpha`` reproduces upstream's Holm step-down
    rule exactly (reject while p(k) < alpha/(m-k+1), stop at the first failure)."""
    adj = adjust_pvalues(p_values, method)
    return adj, adj < alpha
