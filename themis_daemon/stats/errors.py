"""What callers of the statistics engine need without loading it (NumPy, SciPy): the test
names and the engine's two exceptions. The serving process validates requests with these and
leaves the statistics to a worker process (`themis_daemon.compute`)."""

from __future__ import annotations

from typing import Optional

TESTS = ("t_test", "bootstrap", "permutation", "none", "wilcoxon", "mcnemar", "auto")


class CompareError(Exception):
    """A client error (HTTP 4xx) detected by the engine; upstream turned all of these into 500s."""

    def __init__(self, status: int, detail: str, extra: Optional[dict] = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra or {}

    def __reduce__(self):  # it crosses from the statistics process
        return (CompareError, (self.status, self.detail, self.extra))


class Cancelled(Exception):
    """The caller no longer wants the answer (its client went away, or the server stops)."""
