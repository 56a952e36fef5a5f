"""Pure statistics engine (numpy + SciPy, no web framework) for comparing evaluation runs.

The engine's modules load NumPy and SciPy (seconds of import, holding the GIL): they are loaded
on first use of a name that needs them, so `stats.errors` and `stats.samples` stay light."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import TESTS, Cancelled, CompareError

_LAZY = {
    "compare_runs": ".compare",
    "summarize_scores": ".compare",
    "CORRECTIONS": ".correction",
    "CORRECTION_LABELS": ".correction",
    "adjust_pvalues": ".correction",
    "collapse_metric": ".align",
    "sample_sort_key": ".align",
    "newcombe_interval": ".paired_tests",
    "run_test": ".paired_tests",
    "sign_flip_pvalue": ".paired_tests",
}

__all__ = ["Cancelled", "CompareError", "TESTS", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
