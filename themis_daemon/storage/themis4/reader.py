"""The one small interface every Themis 4 backend reader implements (SQLite, JSONL, PostgreSQL).

A reader only moves rows: it never folds, never writes, and keeps its own cursor. The source
(`source.py`) turns what a poll returns into run state with the pure fold (`fold.py`).
Spec: ../shared/docs/themis-storage-v4.md §3 (layout) and §14 (reading a live store safely).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from ..base import Unavailable  # noqa: F401  (re-exported for the readers)

# Rows per poll: keeps every read transaction short (a few ms) so a writer is never held up.
DEFAULT_BATCH = 5000


class NoExtraction(Exception):
    """The database cannot extract fields from these events (a bare NaN in one, an old
    SQLite): the caller fetches whole events instead."""


class Row(NamedTuple):
    """One stored event (a plain tuple: a poll of a big store carries a million of them). `pos` is the store's own position: the `run_events.id` for SQLite and
    PostgreSQL (global, strictly increasing, never reused), the byte offset of the line in
    `events.jsonl` for JSONL (per run). `data` is the raw `event_json` (str/bytes), decoded by
    the source off the reader's transaction."""

    pos: int
    run_id: str
    event_type: str
    data: Any


@dataclass
class Poll:
    runs: Dict[str, Any] = field(default_factory=dict)        # every run with a snapshot -> incarnation token
    snapshots: Dict[str, Any] = field(default_factory=dict)   # raw snapshot JSON of runs new or re-created since the last poll
    rows: List[Row] = field(default_factory=list)             # new events in store order
    reset: Set[str] = field(default_factory=set)              # runs to fold again from scratch (their rows follow in `rows`)
    more: bool = False                                        # rows were capped at the batch size: poll again


def part_bounds(part: int, parts: int) -> Tuple[Optional[str], Optional[str]]:
    """The run ids of one part of a parallel first scan: `low <= run_id < high` (None: open).
    Run ids are SHA-256 hex, so ranges of their first character split runs evenly. Plain
    comparisons, which SQLite and Python order alike (UTF-8 keeps code point order), put any id
    in exactly one part, and cost SQLite far less per row than a function of the id."""
    digits = "0123456789abcdef"
    low = digits[16 * part // parts] if part else None
    high = digits[16 * (part + 1) // parts] if part < parts - 1 else None
    return low, high


def runs_in_part(run_ids: Iterable[str], part: int, parts: int) -> List[str]:
    low, high = part_bounds(part, parts)
    return [r for r in run_ids if (low is None or r >= low) and (high is None or r < high)]


class EventReader:
    """Base class; see the module docstring. Subclasses set `kind` and `global_positions`."""

    kind = "?"
    global_positions = False  # True when `pos` is comparable across runs (one event log per store)

    def __init__(self, location: str, *, batch: int = DEFAULT_BATCH):
        self.location = location
        self.batch = batch

    def validate(self) -> None:
        """Raise `NotAStore` (from ..base) with one line naming the location and what was
        expected when this is not a Themis 4 store. Called once at start-up."""
        raise NotImplementedError

    def changed(self) -> bool:
        """A cheap probe (a stat, a header read, `max(id)`): False only when nothing can have
        changed since the last `poll`. May raise `Unavailable`."""
        return True

    def poll(self) -> Poll:
        """What changed since the last poll. Each statement is its own short transaction; no
        cursor or transaction is held across calls. May raise `Unavailable`."""
        raise NotImplementedError

    def fetch(self, run_id: str, positions: List[int]) -> Dict[int, Any]:
        """Raw `event_json` of some events of a run, by position (for run details)."""
        raise NotImplementedError

    def output_batches(self, run_id: str, positions: List[int]):
        """Like `fetch`, but only what a detail shows of each event, as `(final_output,
        conversation)` JSON texts extracted by the database (far less to move and decode for
        a big run), as an iterator of partial dicts (a caller decodes one while the next is
        read); raises `NoExtraction` where the backend cannot, and the caller uses `fetch`."""
        raise NoExtraction()
        yield  # a generator, like the backends' own

    def fetch_outputs(self, run_id: str, positions: List[int]) -> Optional[Dict[int, Any]]:
        """`output_batches` in one dict; None where the backend cannot extract."""
        out: Dict[int, Any] = {}
        try:
            for batch in self.output_batches(run_id, positions):
                out.update(batch)
        except NoExtraction:
            return None
        return out

    def snapshot(self, run_id: str) -> Any:
        """The raw snapshot JSON of one run (None if it is gone): details read the dataset's
        references and inputs from it instead of keeping them for every run."""
        raise NotImplementedError

    def describe(self) -> str:
        """The location as it may be shown and logged (a URL without its password)."""
        return self.location

    def options(self) -> Dict[str, Any]:
        """Constructor options a scan worker process needs to open the same store."""
        return {"batch": self.batch}

    # A reader that can split its store for a parallel first scan also implements
    # `cold_mark()` (a consistent mark: event count, last position, run tokens),
    # `partition_snapshots(mark, part, parts)` ({run_id: (snapshot, token)}),
    # `partition_rows(mark, part, parts)` (batches of (pos, run_id, data) up to the mark, in
    # store order) and `adopt(mark)` (continue polling after the mark).

    def close(self) -> None:
        pass


def redact_url(url: str) -> str:
    """A connection string without its password, for logs, errors and the API: the userinfo
    password and a `password=` query parameter of a URL, or `password=...` in a libpq
    key=value string."""
    import re
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url, flags=re.I)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if port:
            host = f"{host}:{port}"
        netloc = f"{parts.username}:***@{host}" if parts.username else f"***@{host}"
    query = parts.query
    if query and "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
