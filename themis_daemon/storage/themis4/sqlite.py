"""Reader of a Themis 4 SQLite store (spec §3.1, §14.1), read-only and gentle with the writer.

Themis keeps the database in rollback-journal mode and commits about nine times per event; a
reader that holds a read transaction for more than the writer's 5 s busy timeout makes the
writer retry and duplicate events. So: `mode=ro`, autocommit statements only (each its own
short transaction), a small busy timeout, a capped number of rows per statement, and a locked
database simply means "try at the next poll".
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from ..base import NotAStore
from .reader import EventReader, NoExtraction, Poll, Row, Unavailable, part_bounds, runs_in_part

HEADER = b"SQLite format 3\x00"
REQUIRED_TABLES = {"run_snapshots", "run_events"}
BUSY_TIMEOUT_S = 0.05  # never wait long for the writer's lock: the next poll retries
# Reads a user asked for (a run's samples, a download) have no next poll: they wait for a
# committing writer up to about this many tries of BUSY_TIMEOUT_S + 10 ms (~2 s).
ON_DEMAND_ATTEMPTS = 40
# Rows per statement: in rollback-journal mode a writer cannot commit while a read statement
# runs, so each one is kept to a few milliseconds (about 1.5 KB per Themis event).
SQLITE_BATCH = 1000


def looks_like_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == HEADER
    except OSError:
        return False


class SqliteReader(EventReader):
    kind = "sqlite"
    global_positions = True

    def __init__(self, path: str, busy_timeout: float = BUSY_TIMEOUT_S, **kwargs: Any):
        kwargs.setdefault("batch", SQLITE_BATCH)
        super().__init__(os.path.abspath(path), **kwargs)
        self.busy_timeout = busy_timeout
        self._conn: Optional[sqlite3.Connection] = None
        self._last_id = 0
        self._tokens: Dict[str, int] = {}       # run_id -> rowid of its snapshot row
        self._probe: Optional[Tuple[int, int, int, bytes]] = None
        self._probe_at_poll: Optional[Tuple[int, int, int, bytes]] = None
        self._conn_ino: Optional[int] = None

    # ------------------------------------------------------------------ connection

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = "file:%s?mode=ro" % quote(self.location)
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            except sqlite3.Error as exc:
                raise Unavailable(self._explain(exc)) from None
            self._conn = conn
            try:
                self._conn_ino = os.stat(self.location).st_ino
            except OSError:
                self._conn_ino = None
        return self._conn

    def _explain(self, exc: Exception) -> str:
        text = str(exc)
        if "readonly" in text or "read-only" in text:
            # A hot journal left by a killed writer: only a read-write connection (the next
            # Themis writer) can roll it back, and this daemon never opens one.
            return ("store needs recovery: a writer died mid-commit and left a hot journal "
                    f"({os.path.basename(self.location)}-journal); the next Themis run on this "
                    "store rolls it back")
        if "locked" in text or "busy" in text:
            return "database is locked by a writer; retrying at the next poll"
        return f"{text} ({self.location})"

    def _query(self, sql: str, args: Tuple = ()) -> List[tuple]:
        conn = self._connect()
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._unavailable(exc, conn) from None

    def _unavailable(self, exc: sqlite3.Error, conn: sqlite3.Connection) -> Unavailable:
        """The error as users see it. A lock is momentary (a writer committing); anything else
        closes the connection outside a transaction, so a replaced or broken file is opened
        afresh next time."""
        locked = "locked" in str(exc)
        if not locked and not conn.in_transaction:
            self.close()
        return Unavailable(self._explain(exc), transient=locked)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    # ------------------------------------------------------------------ interface

    def validate(self) -> None:
        if not os.path.isfile(self.location):
            raise NotAStore(f"{self.location}: not found (expected a Themis 4 SQLite store)")
        if not looks_like_sqlite(self.location):
            raise NotAStore(f"{self.location}: not an SQLite database (expected a Themis 4 SQLite store)")
        try:
            # A writer committing right now holds the lock for a moment: wait for it (bounded)
            # rather than refuse to start next to a live run.
            tables = {r[0] for r in self._patient_query("SELECT name FROM sqlite_master WHERE type='table'",
                                                        attempts=250)}
        except Unavailable as exc:
            if exc.transient:
                return  # locked for seconds on end: start anyway, the polls will retry
            raise NotAStore(f"{self.location}: cannot be read: {exc}") from None
        missing = REQUIRED_TABLES - tables
        if missing:
            raise NotAStore(f"{self.location}: an SQLite database without the Themis 4 tables "
                            f"{', '.join(sorted(missing))} (expected a Themis 4 SQLite store)")

    def _signature(self) -> Tuple[int, int, int, bytes]:
        """Inode, size, mtime and the header's file change counter (offset 24), read with a
        plain pread: no SQLite lock is taken. Every commit moves the counter."""
        try:
            fd = os.open(self.location, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise Unavailable(f"{exc.strerror}: {self.location}") from None
        try:
            st = os.fstat(fd)
            head = os.pread(fd, 4, 24)
        finally:
            os.close(fd)
        return st.st_ino, st.st_size, st.st_mtime_ns, head

    def changed(self) -> bool:
        sig = self._signature()
        if self._conn_ino is not None and sig[0] != self._conn_ino:
            # The file was replaced (a restore, a move): read the new one from the start, as
            # its ids need not continue the old file's.
            self.close()
            self._conn_ino = None
            self._last_id = 0
            self._tokens = {}
        self._probe = sig
        return sig != self._probe_at_poll

    def poll(self) -> Poll:
        sig = self._probe = self._probe or self._signature()
        conn = self._connect()
        try:
            # One short read transaction, so the snapshot list and the events are consistent:
            # a run re-created by `rerun` then only has events above the last id seen.
            conn.execute("BEGIN")
            try:
                out = self._read()
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._unavailable(exc, conn) from None
        if not out.more:
            self._probe_at_poll = sig
        return out

    def _read(self) -> Poll:
        out = Poll()
        snaps = self._query("SELECT rowid, run_id FROM run_snapshots")
        current = {r[1]: r[0] for r in snaps}
        out.runs = current
        fresh = [rid for rid, token in current.items() if self._tokens.get(rid) != token]
        out.reset = {rid for rid in fresh if rid in self._tokens}  # deleted and re-created (rerun)
        if fresh:
            out.snapshots = self._snapshots(fresh)
        out.rows = self._rows("SELECT id, run_id, event_type, CAST(event_json AS BLOB) FROM run_events WHERE id > ? "
                              "ORDER BY id LIMIT ?", (self._last_id, self.batch))
        if out.rows:
            self._last_id = out.rows[-1][0]
        out.more = len(out.rows) >= self.batch
        self._tokens = current
        return out

    # ------------------------------------------------------------------ parallel first scan

    def cold_mark(self) -> Optional[Dict[str, Any]]:
        sig = self._signature()
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            try:
                tokens = {r[1]: r[0] for r in conn.execute("SELECT rowid, run_id FROM run_snapshots")}
                # min/max of the rowid are two b-tree lookups; count(*) would read the whole
                # table inside this transaction and hold a writer up for as long.
                # (two statements: SQLite answers a lone min() or max() from the b-tree's ends)
                low = conn.execute("SELECT coalesce(min(id), 0) FROM run_events").fetchone()[0]
                upto = conn.execute("SELECT coalesce(max(id), 0) FROM run_events").fetchone()[0]
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._unavailable(exc, conn) from None
        return {"tokens": tokens, "upto": upto, "events": upto - low + 1 if upto else 0, "sig": sig}

    def partition_snapshots(self, mark: Dict[str, Any], part: int, parts: int) -> Dict[str, Tuple[Any, Any]]:
        mine = runs_in_part(mark["tokens"], part, parts)
        snaps = self._snapshots(mine, patient=True)
        return {rid: (snaps[rid], mark["tokens"][rid]) for rid in mine if rid in snaps}

    def _patient_query(self, sql: str, args: Tuple = (), attempts: int = 200) -> List[tuple]:
        """A scan worker's or an on-demand statement: a writer's commit holds the lock for a
        moment, so wait for it a little (bounded) instead of failing the whole first scan, or a
        download the user just asked for."""
        for attempt in range(attempts):
            try:
                return self._query(sql, args)
            except Unavailable as exc:
                if not exc.transient or attempt == attempts - 1:
                    raise
                time.sleep(0.01)
        raise AssertionError("unreachable")

    def partition_rows(self, mark: Dict[str, Any], part: int, parts: int):
        low, high = part_bounds(part, parts)  # one hex digit each: safe to write into the SQL
        where = " AND ".join(([f"run_id >= '{low}'"] if low else []) + ([f"run_id < '{high}'"] if high else [])) or "1"
        # Each statement covers a bounded id range rather than a number of matching rows: the
        # other partition's runs would otherwise make one statement read a long stretch of the
        # table while a writer waits for the lock.
        step = self.batch
        last, upto = 0, mark["upto"]
        while last < upto:
            high = min(upto, last + step)
            rows = self._patient_query(f"SELECT id, run_id, CAST(event_json AS BLOB) FROM run_events WHERE id > ? "
                                       f"AND id <= ? AND {where} ORDER BY id", (last, high))
            last = high
            if rows:
                yield rows

    def adopt(self, mark: Dict[str, Any], last_positions: Optional[Dict[str, int]] = None) -> None:
        self._last_id = mark["upto"]
        self._tokens = dict(mark["tokens"])
        self._probe = self._probe_at_poll = mark["sig"]

    def _snapshots(self, run_ids: List[str], patient: bool = False) -> Dict[str, Any]:
        query = self._patient_query if patient else self._query
        found: Dict[str, Any] = {}
        for start in range(0, len(run_ids), 200):
            part = run_ids[start:start + 200]
            marks = ",".join("?" * len(part))
            for rid, text in query(f"SELECT run_id, CAST(snapshot_json AS BLOB) FROM run_snapshots "
                                         f"WHERE run_id IN ({marks})", tuple(part)):
                found[rid] = text
        return found

    def _rows(self, sql: str, args: Tuple) -> List[Row]:
        # Plain (id, run_id, event_type, event_json) tuples straight from SQLite: the same
        # fields as Row, without a Python object per row.
        return self._query(sql, args)  # type: ignore[return-value]

    def snapshot(self, run_id: str) -> Any:
        rows = self._patient_query("SELECT CAST(snapshot_json AS BLOB) FROM run_snapshots WHERE run_id = ?",
                                   (run_id,), ON_DEMAND_ATTEMPTS)
        return rows[0][0] if rows else None

    def output_batches(self, run_id: str, positions: List[int]):
        """Outputs in batches of short statements, so a caller can decode one batch
        while SQLite extracts the next (SQLite runs without the GIL). A run's events mostly
        lie close together: a whole big run is read by id range, a few events by id."""
        wanted = sorted(set(positions))
        if not wanted:
            return
        cols = "SELECT id, run_id, event_json -> '$.result.final_output', event_json -> '$.result.conversation'"
        try:
            if len(wanted) > 2000 and wanted[-1] - wanted[0] < 8 * len(wanted):
                keep = set(wanted)
                step = 5000  # ids per statement: each one stays a few ms long
                for low in range(wanted[0], wanted[-1] + 1, step):
                    rows = self._patient_query(
                        f"{cols} FROM run_events WHERE id >= ? AND id < ? AND run_id = ? AND "
                        "event_type IN ('generation_completed', 'reduction_completed')",
                        (low, low + step, run_id), ON_DEMAND_ATTEMPTS)
                    yield {pos: (output, conv) for pos, _rid, output, conv in rows if pos in keep}
                return
            for start in range(0, len(wanted), 500):
                part = wanted[start:start + 500]
                marks = ",".join("?" * len(part))
                rows = self._patient_query(f"{cols} FROM run_events WHERE id IN ({marks})", tuple(part),
                                           ON_DEMAND_ATTEMPTS)
                yield {pos: (output, conv) for pos, rid, output, conv in rows if rid == run_id}
        except Unavailable as exc:
            if "malformed JSON" in str(exc) or "syntax error" in str(exc):
                raise NoExtraction() from None  # a bare NaN somewhere, or an SQLite without `->`
            raise

    def fetch(self, run_id: str, positions: List[int]) -> Dict[int, Any]:
        out: Dict[int, Any] = {}
        wanted = sorted(set(positions))
        for start in range(0, len(wanted), 500):
            part = wanted[start:start + 500]
            marks = ",".join("?" * len(part))
            for pos, rid, text in self._patient_query(
                    f"SELECT id, run_id, CAST(event_json AS BLOB) FROM run_events WHERE id IN ({marks})", tuple(part),
                    ON_DEMAND_ATTEMPTS):
                if rid == run_id:
                    out[pos] = text
        return out
