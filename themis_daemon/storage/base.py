"""What every storage source shares: the result of a refresh, errors and the status vocabulary.

A *source* is one configured store (a Themis 1.x root, or a Themis 4 SQLite file, JSONL root
or PostgreSQL database). The monitor, REST, compare and WebSocket code only use the interface
of :class:`themis_daemon.storage.sources.Sources`, never a source's format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

# `pending` only occurs for Themis 4 runs (a snapshot without events).
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
FINAL_STATUSES = ("completed", "failed", "cancelled")


class RunNotFound(KeyError):
    pass


class NotAStore(Exception):
    """A configured path or URL is not a store this daemon can read (fatal at start-up)."""


class Unavailable(Exception):
    """A transient condition (database locked, hot journal, server down): keep the last known
    state, report the message, and try again at a later poll. `transient` marks conditions
    that normally clear within a poll or two (a writer holding its lock)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass
class RefreshResult:
    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    changed: List[str] = field(default_factory=list)
    error: Optional[str] = None
    duration: float = 0.0
    # Store positions (Themis 4 event ids) of what a refresh saw, per run: lets every worker
    # and every replica number the same event the same way (see Monitor).
    positions: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def merge(self, other: "RefreshResult") -> None:
        self.added.extend(other.added)
        self.removed.extend(other.removed)
        self.changed.extend(other.changed)
        self.positions.update(other.positions)
        if other.error:
            self.error = f"{self.error}; {other.error}" if self.error else other.error
