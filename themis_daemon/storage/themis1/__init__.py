"""Themis 1.x file layout (experiments/<exp>/runs/<run>/): read incrementally, never written."""

from .jsonl import CorruptFile, JsonlTail
from .run import RunState, View
from .store import Store

__all__ = ["CorruptFile", "JsonlTail", "RunState", "Store", "View"]
