"""Pure statistics engine (numpy + SciPy, no web framework) for comparing evaluation runs."""

from .align import collapse_metric, sample_sort_key
from .compare import TESTS, CompareError, compare_runs, summarize_scores
from .correction import CORRECTION_LABELS, CORRECTIONS, adjust_pvalues
from .paired_tests import Cancelled, newcombe_interval, run_test, sign_flip_pvalue

__all__ = [
    "compare_runs",
    "Cancelled",
    "summarize_scores",
    "CompareError",
    "TESTS",
    "CORRECTIONS",
    "CORRECTION_LABELS",
    "adjust_pvalues",
    "collapse_metric",
    "sample_sort_key",
    "newcombe_interval",
    "run_test",
    "sign_flip_pvalue",
]
