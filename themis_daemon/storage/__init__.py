"""Read-only access to the Themis 1.x storage layout; no Tornado, no writes."""

from .jsonl import CorruptFile, JsonlTail
from .run import RunState, View
from .store import RefreshResult, RunNotFound, Store

__all__ = ["CorruptFile", "JsonlTail", "RefreshResult", "RunNotFound", "RunState", "Store", "View"]
