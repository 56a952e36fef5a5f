"""Read-only access to Themis stores of both generations; no Tornado, no writes.

`sources.Sources` is the one interface the rest of the daemon uses; `themis1/` reads the 1.x
file layout, `themis4/` the event-sourced stores of themis-eval 4.x (SQLite, JSONL, PostgreSQL).
"""

from .base import FINAL_STATUSES, STATUSES, NotAStore, RefreshResult, RunNotFound, Unavailable
from .sources import AmbiguousRun, Sources, detect, open_configured, open_source, open_sources
from .themis1 import Store

__all__ = ["AmbiguousRun", "FINAL_STATUSES", "NotAStore", "RefreshResult", "RunNotFound", "STATUSES",
           "Sources", "Store", "Unavailable", "detect", "open_configured", "open_source", "open_sources"]
