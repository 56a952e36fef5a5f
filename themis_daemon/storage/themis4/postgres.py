"""Read a Themis 4 PostgreSQL run store (spec §3.3, §14.3), strictly read-only, with psycopg 3.

* One connection is kept between polls (autocommit, `default_transaction_read_only = on`);
  every statement group is its own short `REPEATABLE READ READ ONLY` transaction, so nothing is
  held across polls and the writer is never held up. A lost connection raises `Unavailable`
  (one immediate reconnect is tried first when a healthy connection breaks, e.g. after a
  server restart); later polls reconnect with a backoff.
* Positions are `run_events.id` (global, never reused). Events are read `WHERE id > cursor
  ORDER BY id LIMIT batch`; the last `OVERLAP` ids below the cursor are re-checked on every
  poll so that an id that commits after a larger one (several writer processes, §14.3) is not
  skipped.
* A run's incarnation token is the `xmin` of its `run_snapshots` row. `rerun` deletes and
  re-inserts that row, so a new token puts the run in `Poll.reset` and all its events
  (`WHERE run_id = ... ORDER BY id`, index `idx_run_events_run_id_id`) follow in the same poll.
  So does a run that receives an event older than one already delivered for it.
* JSON is fetched as text (`event_json::text`, `snapshot_json::text`); the source decodes it.
* The password (URL, PGPASSWORD/.pgpass through libpq, or `password_file`) never appears in a
  message or log line: locations are shown redacted and error texts are scrubbed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from ..base import NotAStore
from .reader import DEFAULT_BATCH, EventReader, Poll, Row, Unavailable, redact_url, runs_in_part

log = logging.getLogger("themis_daemon.storage.postgres")

OVERLAP = 256            # ids below the cursor re-checked on every poll (§14.3 multi-writer caveat)
CONNECT_TIMEOUT = 5      # seconds, unless the URL sets connect_timeout
STATEMENT_TIMEOUT_MS = 30000
EXPECTED = "expected the tables run_snapshots and run_events of a Themis 4 store"

_EVENT_COLS = "id, run_id, event_type, event_json::text"
_PROBE_SQL = (
    "SELECT to_regclass('run_events')::oid::bigint,"
    " (SELECT max(id) FROM run_events),"
    " (SELECT count(*) FROM run_events WHERE id > %s AND id <= %s),"
    " (SELECT count(*) FROM run_snapshots),"
    " (SELECT md5(coalesce(string_agg(run_id || ':' || xmin::text, ',' ORDER BY run_id), ''))"
    " FROM run_snapshots)"
)


redact = redact_url  # the name this module has always offered


def _url_passwords(location: str) -> List[str]:
    out: List[str] = []
    try:
        parts = urlsplit(location)
        if parts.password:
            out += [parts.password, unquote(parts.password)]
        out.extend(v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v)
    except ValueError:
        pass
    out.extend(m.group(2).strip("'") for m in re.finditer(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", location, re.I))
    return out


class PostgresReader(EventReader):
    kind = "postgres"
    global_positions = True

    def __init__(self, location: str, *, batch: int = DEFAULT_BATCH, password_file: Optional[str] = None,
                 reconnect_min: float = 0.5, reconnect_max: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(location, batch=batch)
        self.password_file = password_file
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._clock = clock
        self._psycopg: Any = None
        self._conn: Any = None
        self._lock = threading.RLock()
        self._password: Optional[str] = None
        self._password_loaded = False
        self._secrets: List[str] = [p for p in _url_passwords(location) if p]
        env_pw = os.environ.get("PGPASSWORD")
        if env_pw:
            self._secrets.append(env_pw)
        # reconnect backoff
        self._delay = 0.0
        self._retry_at = 0.0
        self._last_error = ""
        self._reason = ""  # why the last connection attempt failed
        # cursor state (only changed after a poll's transaction succeeded)
        self._table: Optional[int] = None          # oid of run_events: a new table means a new store
        self._cursor = 0                           # every id <= cursor was scanned
        self._seen: Set[int] = set()               # delivered/skipped ids above cursor - OVERLAP
        self._known: Dict[str, int] = {}           # run -> token last reported (kept when a run vanishes)
        self._run_max: Dict[str, int] = {}         # run -> largest id delivered
        self._orphans: Set[str] = set()            # runs with skipped rows (events without snapshot)
        self._probe: Optional[Tuple[Any, ...]] = None
        self._more = False
        self._polled = False

    # ------------------------------------------------------------------ public interface

    def describe(self) -> str:
        return redact(self.location)

    def validate(self) -> None:
        where = self.describe()
        try:
            self._import()
        except ImportError:
            raise NotAStore(f"{where}: cannot read a PostgreSQL store: the psycopg package is missing "
                            "(install themis-daemon[postgres])") from None
        with self._lock:
            try:
                self._load_password()
            except OSError as exc:
                raise NotAStore(f"{where}: cannot read the password file {self.password_file} "
                                f"({exc.strerror or exc}); {EXPECTED}") from None
            try:
                conn = self._connection()
            except Unavailable:
                raise NotAStore(f"{where}: cannot connect to the PostgreSQL server at start-up "
                                f"({self._reason or self._last_error}); {EXPECTED}") from None
            pg = self._psycopg
            try:
                with conn.transaction():
                    found = conn.execute("SELECT to_regclass('run_snapshots') IS NOT NULL,"
                                         " to_regclass('run_events') IS NOT NULL").fetchone()
                    missing = [name for name, ok in zip(("run_snapshots", "run_events"), found) if not ok]
                    if missing:
                        raise NotAStore(f"{where}: not a Themis 4 store: table {' and '.join(missing)} missing "
                                        f"in database {conn.info.dbname!r}; {EXPECTED}")
                    conn.execute("SELECT run_id, snapshot_json FROM run_snapshots LIMIT 0")
                    conn.execute(f"SELECT {_EVENT_COLS} FROM run_events LIMIT 0")
            except NotAStore:
                raise
            except pg.errors.InsufficientPrivilege as exc:
                raise NotAStore(f"{where}: cannot read the Themis 4 tables ({self._clean(exc)}); "
                                f"{EXPECTED}, readable by this role") from None
            except (pg.errors.UndefinedColumn, pg.errors.UndefinedTable) as exc:
                raise NotAStore(f"{where}: not a Themis 4 store ({self._clean(exc)}); {EXPECTED}") from None
            except pg.Error as exc:
                self._drop()
                raise NotAStore(f"{where}: the PostgreSQL server cannot be queried at start-up "
                                f"({self._clean(exc)}); {EXPECTED}") from None

    def changed(self) -> bool:
        if not self._polled or self._more or self._probe is None:
            return True
        with self._lock:
            low, cursor = self._window()
            probe = self._run(lambda conn: tuple(conn.execute(_PROBE_SQL, (low, cursor)).fetchone()))
            return probe != self._probe

    def poll(self) -> Poll:
        with self._lock:
            return self._run(self._poll_tx)

    def snapshot(self, run_id: str) -> Any:
        with self._lock:
            row = self._run(lambda conn: conn.execute(
                "SELECT snapshot_json::text FROM run_snapshots WHERE run_id = %s", (run_id,)).fetchone())
        return row[0] if row else None

    def _events_at(self, run_id: str, positions: List[int], columns: str) -> List[tuple]:
        """Rows (id, *columns) of a run's events at `positions` (what `fetch` and
        `output_batches` read, each with its own columns)."""
        ids = sorted({int(p) for p in positions})
        if not ids:
            return []
        if len(ids) > 2000:
            # A whole big run: walk its index range once rather than look up thousands of ids.
            wanted = set(ids)
            sql = (f"SELECT id, {columns} FROM run_events WHERE run_id = %s AND id >= %s AND id <= %s"
                   " AND event_type IN ('generation_completed', 'reduction_completed')")
            with self._lock:
                rows = self._run(lambda conn: conn.execute(sql, (run_id, ids[0], ids[-1])).fetchall())
            return [r for r in rows if int(r[0]) in wanted]
        sql = f"SELECT id, {columns} FROM run_events WHERE run_id = %s AND id = ANY(%s)"
        with self._lock:
            return self._run(lambda conn: conn.execute(sql, (run_id, ids)).fetchall())

    _OUTPUT_COLUMNS = ("(event_json -> 'result' -> 'final_output')::text,"
                       " (event_json -> 'result' -> 'conversation')::text")
    OUTPUT_BATCH = 2500  # events per statement of a big detail

    def output_batches(self, run_id: str, positions: List[int]):
        """A big detail's events in several statements, so that the caller decodes one batch
        while the server extracts the next (one statement for 5,000 cases took about 100 ms,
        with nothing to decode until its end)."""
        ids = sorted({int(p) for p in positions})
        for start in range(0, len(ids), self.OUTPUT_BATCH):
            rows = self._events_at(run_id, ids[start:start + self.OUTPUT_BATCH], self._OUTPUT_COLUMNS)
            yield {int(i): (o, c) for i, o, c in rows}

    def fetch(self, run_id: str, positions: List[int]) -> Dict[int, Any]:
        return {int(i): data for i, data in self._events_at(run_id, positions, "event_json::text")}

    def close(self) -> None:
        with self._lock:
            self._drop()

    def options(self) -> Dict[str, Any]:
        return {"batch": self.batch, "password_file": self.password_file}

    def open(self) -> None:
        """Connect now rather than at the first query (a detail worker, ahead of its first page)."""
        with self._lock:
            self._connection()

    # ------------------------------------------------------------------ parallel first scan

    def cold_mark(self) -> Optional[Dict[str, Any]]:
        def work(conn: Any) -> Dict[str, Any]:
            table = conn.execute("SELECT to_regclass('run_events')::oid::bigint").fetchone()[0]
            if table is None:
                raise Unavailable(f"{self.describe()}: table run_events is missing")
            tokens = {r: int(t) for r, t in conn.execute("SELECT run_id, xmin::text::bigint FROM run_snapshots")}
            low, upto = conn.execute("SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM run_events").fetchone()
            events = int(upto) - int(low) + 1 if upto else 0  # an estimate from the primary key alone
            return {"table": table, "tokens": tokens, "upto": int(upto), "events": events}

        with self._lock:
            return self._run(work)

    def partition_snapshots(self, mark: Dict[str, Any], part: int, parts: int) -> Dict[str, Tuple[Any, Any]]:
        mine = runs_in_part(mark["tokens"], part, parts)
        out: Dict[str, Tuple[Any, Any]] = {}
        for start in range(0, len(mine), 8):  # a few snapshots (each holds a whole dataset) per transaction
            chunk = mine[start:start + 8]
            with self._lock:
                rows = self._run(lambda conn: conn.execute(
                    "SELECT run_id, snapshot_json::text FROM run_snapshots WHERE run_id = ANY(%s)", (chunk,)).fetchall())
            out.update({r: (raw, mark["tokens"][r]) for r, raw in rows if r in mark["tokens"]})
        return out

    def partition_rows(self, mark: Dict[str, Any], part: int, parts: int):
        mine = runs_in_part(mark["tokens"], part, parts)
        # Runs are read one at a time through the (run_id, id) index, in short batches: 500
        # events (about 300 KB of JSON text made by the server) keep each transaction to a few
        # milliseconds even while both cores are busy with the scan.
        batch = min(self.batch, 500)
        for run_id in mine:
            last = 0
            while True:
                with self._lock:
                    rows = self._run(lambda conn: conn.execute(
                        "SELECT id, run_id, event_json::text FROM run_events WHERE run_id = %s AND id > %s"
                        " AND id <= %s ORDER BY id LIMIT %s", (run_id, last, mark["upto"], batch)).fetchall())
                if not rows:
                    break
                last = rows[-1][0]
                yield rows
                if len(rows) < batch:
                    break

    def adopt(self, mark: Dict[str, Any], last_positions: Optional[Dict[str, int]] = None) -> None:
        """Continue after a parallel first scan; `last_positions` (run -> last id folded) comes
        from the scan itself, so no query has to read every event again."""
        upto = mark["upto"]

        def work(conn: Any) -> Tuple[Any, ...]:
            low = max(0, upto - OVERLAP)
            seen = {i for (i,) in conn.execute("SELECT id FROM run_events WHERE id > %s AND id <= %s", (low, upto))}
            probe = tuple(conn.execute(_PROBE_SQL, (low, upto)).fetchone())
            return seen, dict(last_positions or {}), probe

        with self._lock:
            seen, run_max, probe = self._run(work)
            self._table = mark["table"]
            self._cursor = upto
            self._seen = seen
            self._known = dict(mark["tokens"])
            self._run_max = {r: int(m) for r, m in run_max.items()}
            self._orphans = set()
            self._probe = probe
            self._more = False
            self._polled = True

    # ------------------------------------------------------------------ the poll

    def _window(self) -> Tuple[int, int]:
        return max(0, self._cursor - OVERLAP), self._cursor

    def _poll_tx(self, conn: Any) -> Poll:
        table = conn.execute("SELECT to_regclass('run_events')::oid::bigint").fetchone()[0]
        if table is None:
            raise Unavailable(f"{self.describe()}: table run_events is missing")
        fresh = table != self._table  # first poll, or the tables were dropped and re-created
        cursor = 0 if fresh else self._cursor
        seen: Set[int] = set() if fresh else self._seen
        run_max: Dict[str, int] = {} if fresh else self._run_max
        orphans: Set[str] = set() if fresh else self._orphans

        tokens = {r: int(t) for r, t in conn.execute("SELECT run_id, xmin::text::bigint FROM run_snapshots")}
        reset = {r for r, t in tokens.items()
                 if (r in self._known and self._known[r] != t) or r in orphans or (fresh and r in self._known)}

        # Ids below the cursor that committed after the last poll (several writers).
        late: List[Tuple[int, str, str, str]] = []
        low = max(0, cursor - OVERLAP)
        if cursor > 0:
            window = [i for (i,) in conn.execute("SELECT id FROM run_events WHERE id > %s AND id <= %s",
                                                 (low, cursor))]
            missing = [i for i in window if i not in seen]
            if missing:
                late = conn.execute(f"SELECT {_EVENT_COLS} FROM run_events WHERE id = ANY(%s) ORDER BY id",
                                    (missing,)).fetchall()
        new = conn.execute(f"SELECT {_EVENT_COLS} FROM run_events WHERE id > %s ORDER BY id LIMIT %s",
                           (cursor, self.batch)).fetchall()
        more = len(new) >= self.batch

        candidates = [r for r in late + new if r[0] not in seen]
        for pos, run_id, _t, _d in candidates:
            # an event older than one already delivered for that run: fold the run again
            if run_id in tokens and run_id not in reset and pos < run_max.get(run_id, 0):
                reset.add(run_id)

        rows: List[Row] = []
        delivered: Set[int] = set()
        skipped: Set[int] = set()
        reset_max: Dict[str, int] = {}
        if reset:
            for pos, run_id, event_type, data in conn.execute(
                    f"SELECT {_EVENT_COLS} FROM run_events WHERE run_id = ANY(%s) ORDER BY id", (sorted(reset),)):
                rows.append(Row(pos=pos, run_id=run_id, event_type=event_type, data=data))
                delivered.add(pos)
                reset_max[run_id] = pos
        new_orphans: Set[str] = set()
        for pos, run_id, event_type, data in candidates:
            if pos in delivered:
                continue
            if run_id not in tokens:
                skipped.add(pos)          # no snapshot (yet, or any more): fold it when one appears
                new_orphans.add(run_id)
                continue
            rows.append(Row(pos=pos, run_id=run_id, event_type=event_type, data=data))
            delivered.add(pos)
        rows.sort(key=lambda row: row.pos)

        want = sorted(r for r in tokens if r not in self._known or r in reset or fresh)
        snapshots: Dict[str, Any] = {}
        if want:
            snapshots = dict(conn.execute("SELECT run_id, snapshot_json::text FROM run_snapshots"
                                          " WHERE run_id = ANY(%s)", (want,)).fetchall())

        new_cursor = max([cursor] + [r[0] for r in new])
        new_low = max(0, new_cursor - OVERLAP)
        probe = tuple(conn.execute(_PROBE_SQL, (new_low, new_cursor)).fetchone())

        # The transaction succeeded: commit the new state.
        for run_id in reset:
            run_max[run_id] = reset_max.get(run_id, 0)
        for row in rows:
            if row.run_id not in reset and row.pos > run_max.get(row.run_id, 0):
                run_max[row.run_id] = row.pos
        seen |= delivered | skipped
        self._seen = {i for i in seen if i > new_low}
        self._cursor = new_cursor
        self._table = table
        self._run_max = run_max
        self._orphans = (orphans - set(tokens)) | (new_orphans - set(tokens))
        self._known.update(tokens)
        self._probe = probe
        self._more = more
        self._polled = True
        return Poll(runs=tokens, snapshots=snapshots, rows=rows, reset=reset, more=more)

    # ------------------------------------------------------------------ connection handling

    def _import(self) -> Any:
        if self._psycopg is None:
            import psycopg  # the [postgres] extra

            self._psycopg = psycopg
        return self._psycopg

    def _load_password(self) -> None:
        """The optional password file (read once; the trailing newline stripped)."""
        if self._password_loaded or not self.password_file:
            return
        with open(self.password_file, encoding="utf-8") as fh:
            password = fh.read().rstrip("\r\n")
        if password:
            self._secrets.append(password)
        self._password = password or None
        self._password_loaded = True

    def _clean(self, exc: BaseException) -> str:
        """One line of an error text, without any known password."""
        text = str(exc).strip() or type(exc).__name__
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[0] if lines else type(exc).__name__
        # libpq: 'connection to server at "h", port p failed: FATAL:  password authentication ...'
        text = re.sub(r"\s+", " ", text)
        for secret in sorted(set(self._secrets), key=len, reverse=True):
            for form in {secret, _quote(secret)}:
                if form:
                    text = text.replace(form, "***")
        return text

    def _connection(self) -> Any:
        """The open connection, or a new one (respecting the backoff); raises Unavailable."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        now = self._clock()
        if now < self._retry_at:
            raise Unavailable(f"{self.describe()}: {self._last_error} (next attempt in {self._retry_at - now:.1f}s)")
        pg = self._import()
        try:
            self._load_password()
        except OSError as exc:
            self._fail(f"cannot read the password file {self.password_file} ({exc.strerror or exc})")
            raise Unavailable(f"{self.describe()}: {self._last_error}") from None
        kwargs: Dict[str, Any] = {"autocommit": True, "application_name": "themis-daemon"}
        try:
            if "connect_timeout" not in pg.conninfo.conninfo_to_dict(self.location):
                kwargs["connect_timeout"] = CONNECT_TIMEOUT
        except pg.Error:
            pass  # psycopg.connect reports a malformed URL below
        if self._password is not None:
            kwargs["password"] = self._password
        try:
            conn = pg.connect(self.location, **kwargs)
            try:
                conn.isolation_level = pg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                conn.execute("SET default_transaction_read_only = on")
                conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                conn.execute(f"SET idle_in_transaction_session_timeout = {2 * STATEMENT_TIMEOUT_MS}")
            except BaseException:
                conn.close()
                raise
        except pg.Error as exc:
            self._reason = re.sub(r"^connection failed: ", "", self._clean(exc))
            self._fail(f"cannot connect: {self._reason}")
            raise Unavailable(f"{self.describe()}: {self._last_error}") from None
        if self._delay:
            log.info("%s: connected again", self.describe())
        self._conn, self._delay, self._retry_at, self._last_error = conn, 0.0, 0.0, ""
        return conn

    def _fail(self, message: str) -> None:
        self._last_error = message
        self._delay = min(self.reconnect_max, max(self.reconnect_min, self._delay * 2))
        self._retry_at = self._clock() + self._delay
        log.warning("%s: %s (retrying in %.1fs)", self.describe(), message, self._delay)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def _run(self, work: Callable[[Any], Any]) -> Any:
        """`work(conn)` inside one REPEATABLE READ READ ONLY transaction. A connection that
        breaks is replaced once at once (a restarted server); otherwise Unavailable."""
        pg = self._import()
        for attempt in (1, 2):
            had_conn = self._conn is not None
            conn = self._connection()
            try:
                with conn.transaction():
                    return work(conn)
            except (pg.OperationalError, pg.InterfaceError) as exc:
                # server gone, restarted, connection reset, statement timeout, ...
                self._drop()
                broken = isinstance(exc, pg.InterfaceError) or conn.closed or conn.broken
                if attempt == 1 and had_conn and broken:
                    continue
                self._fail(f"query failed: {self._clean(exc)}")
                raise Unavailable(f"{self.describe()}: {self._last_error}") from None
            except pg.Error as exc:
                # anything else (a table dropped, permissions revoked): report, stay connected
                raise Unavailable(f"{self.describe()}: {self._clean(exc)}") from None
        raise AssertionError("unreachable")


def _quote(secret: str) -> str:
    from urllib.parse import quote

    return quote(secret, safe="")
