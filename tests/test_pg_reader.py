"""PostgresReader against a real PostgreSQL server holding the restored Themis 4 fixture dump.

Skipped (with the reason) when Debian's `postgresql` package or psycopg is not installed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter

import pytest

from themis_daemon.storage.base import NotAStore
from themis_daemon.storage.themis4.reader import Poll, Unavailable

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'themis-daemon[postgres]')")
import psycopg  # noqa: E402

from themis_daemon.storage.themis4.postgres import PostgresReader, redact  # noqa: E402

# The fixtures come from pg_fixtures.py, which conftest.py imports (`from pg_fixtures import *`);
# until it does, load the module as a plugin so that this file also runs on its own.
if "pg_fixtures" not in sys.modules:
    pytest_plugins = ["pg_fixtures"]

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "themis-v4")
with open(os.path.join(DATA, "postgres", "manifest.json"), encoding="utf-8") as _fh:
    MANIFEST = json.load(_fh)
with open(os.path.join(DATA, "expected.json"), encoding="utf-8") as _fh:
    EXPECTED = json.load(_fh)["backends"]["postgres"]
RUN_IDS = {name: info["run_id"] for name, info in MANIFEST["runs"].items()}
TABLES = ("run_events", "run_snapshots", "run_projections", "run_store_meta", "stage_cache")


def reader_for(url, **kwargs) -> PostgresReader:
    kwargs.setdefault("reconnect_min", 0.05)
    kwargs.setdefault("reconnect_max", 0.2)
    reader = PostgresReader(url, **kwargs)
    reader.validate()
    return reader


def drain(reader: PostgresReader, limit: int = 1000) -> Poll:
    """Poll until `more` is False; one Poll with everything (and checks the batch cap)."""
    total = Poll()
    for _ in range(limit):
        poll = reader.poll()
        assert len(poll.rows) <= reader.batch or poll.reset
        total.runs = poll.runs
        total.snapshots.update(poll.snapshots)
        total.rows.extend(poll.rows)
        total.reset |= poll.reset
        if not poll.more:
            return total
    raise AssertionError("poll() never finished")


def db_events(server, dbname, where="true"):
    out = server.psql(dbname, f"SELECT id, run_id, event_type FROM run_events WHERE {where} ORDER BY id")
    return [(int(i), r, t) for i, r, t in (line.split("|") for line in out.splitlines() if line)]


def row_counts(server, dbname):
    return {t: int(server.psql(dbname, f"SELECT count(*) FROM {t}")) for t in TABLES}


@pytest.fixture
def reader(pg_fixture_db):
    r = reader_for(pg_fixture_db)
    yield r
    r.close()


# ---------------------------------------------------------------------------------- validate


def test_validate_ok_and_describe_hides_password(pg_fixture_db):
    reader = reader_for(pg_fixture_db)
    try:
        assert reader.kind == "postgres" and reader.global_positions
        assert pg_fixture_db.password not in reader.describe()
        assert "themis_reader:***@127.0.0.1" in reader.describe()
    finally:
        reader.close()


def test_validate_empty_database_is_not_a_store(pg_server, pg_fixture_db):
    name = pg_fixture_db.dbname + "_empty"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name, user=pg_fixture_db.user, password=pg_fixture_db.password)
        with pytest.raises(NotAStore) as info:
            PostgresReader(url).validate()
        msg = str(info.value)
        assert "\n" not in msg
        assert "run_snapshots" in msg and "run_events" in msg and "missing" in msg
        assert redact(url) in msg and pg_fixture_db.password not in msg
    finally:
        pg_server.drop_database(name)


def test_validate_unreachable_server(pg_fixture_db):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    url = f"postgresql://themis_reader:{pg_fixture_db.password}@127.0.0.1:{port}/themis"
    with pytest.raises(NotAStore) as info:
        PostgresReader(url).validate()
    msg = str(info.value)
    assert "cannot connect" in msg and "\n" not in msg
    assert pg_fixture_db.password not in msg and "r3ader" not in msg
    assert f"127.0.0.1:{port}" in msg


def test_validate_wrong_password_names_no_password(pg_fixture_db, pg_server):
    url = pg_server.url(pg_fixture_db.dbname, user="themis_reader", password="Wr0ng-s3cret")
    with pytest.raises(NotAStore) as info:
        PostgresReader(url).validate()
    msg = str(info.value)
    assert "password authentication failed" in msg and "Wr0ng-s3cret" not in msg


def test_password_from_file_and_from_pgpassword(pg_fixture_db, pg_server, tmp_path, monkeypatch):
    bare = pg_server.url(pg_fixture_db.dbname, user="themis_reader")
    pwfile = tmp_path / "pw"
    pwfile.write_text(pg_fixture_db.password + "\n")
    reader = reader_for(bare, password_file=str(pwfile))
    try:
        assert len(reader.poll().runs) == 12
    finally:
        reader.close()
    monkeypatch.setenv("PGPASSWORD", pg_fixture_db.password)
    reader = reader_for(bare)
    try:
        assert len(reader.poll().runs) == 12
    finally:
        reader.close()


def test_password_in_query_string_is_redacted():
    url = "postgresql://u@h:5/db?sslmode=require&password=hunter2"
    assert "hunter2" not in redact(url) and "sslmode=require" in redact(url)
    assert "hunter2" not in redact("host=h password=hunter2 dbname=d")


def test_missing_psycopg_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    with pytest.raises(NotAStore, match=r"themis-daemon\[postgres\]") as info:
        PostgresReader("postgresql://u:pw123@127.0.0.1:1/db").validate()
    assert "pw123" not in str(info.value)


# ---------------------------------------------------------------------------------- polling


def test_first_poll_returns_every_run_and_event(reader, pg_fixture_db, pg_server):
    poll = reader.poll()
    assert not poll.more and not poll.reset
    assert set(poll.runs) == set(RUN_IDS.values())
    assert set(poll.snapshots) == set(RUN_IDS.values())
    for run_id, text in poll.snapshots.items():
        assert isinstance(text, str)
        assert json.loads(text)["run_id"] == run_id
    stored = db_events(pg_server, pg_fixture_db.dbname)
    assert [(r.pos, r.run_id, r.event_type) for r in poll.rows] == stored
    assert len(stored) == 1043
    for row in poll.rows[:50]:
        assert isinstance(row.data, str) and json.loads(row.data)["event_type"] == row.event_type
    per_run = Counter(r.run_id for r in poll.rows)
    for name, run_id in RUN_IDS.items():
        assert per_run.get(run_id, 0) == EXPECTED["runs"][name]["events"]["total"], name
    assert RUN_IDS["pending"] not in per_run  # a snapshot without events


def test_small_batches_give_the_same_rows(pg_fixture_db):
    big = reader_for(pg_fixture_db)
    small = reader_for(pg_fixture_db, batch=50)
    try:
        everything = big.poll()
        polls = []
        while True:
            poll = small.poll()
            polls.append(poll)
            assert len(poll.rows) <= 50 and set(poll.runs) == set(everything.runs)
            if not poll.more:
                break
        assert len(polls) == 1043 // 50 + 1
        assert polls[0].snapshots == everything.snapshots and not any(p.snapshots for p in polls[1:])
        got = [(r.pos, r.run_id, r.event_type, r.data) for p in polls for r in p.rows]
        assert got == [(r.pos, r.run_id, r.event_type, r.data) for r in everything.rows]
        assert small.changed() is False
    finally:
        big.close()
        small.close()


def test_detail_outputs_come_in_short_statements_with_the_same_rows(reader, monkeypatch):
    """A big detail's outputs are read in statements of OUTPUT_BATCH events (each one a short
    transaction, decoded while the next runs); together they are what one statement gives."""
    every = reader.poll()
    run_id = Counter(r.run_id for r in every.rows).most_common(1)[0][0]
    wanted = [r.pos for r in every.rows if r.run_id == run_id
              and r.event_type in ("generation_completed", "reduction_completed")]
    whole = reader.fetch_outputs(run_id, wanted)
    assert len(whole) == len(wanted) > 4 and any(o is not None for o, _c in whole.values())
    monkeypatch.setattr(PostgresReader, "OUTPUT_BATCH", 3)
    batches = list(reader.output_batches(run_id, wanted + wanted[:2]))  # repeats are read once
    assert [len(b) for b in batches] == [3] * (len(wanted) // 3) + ([len(wanted) % 3] if len(wanted) % 3 else [])
    assert {pos: out for b in batches for pos, out in b.items()} == whole


def test_changed_is_false_when_nothing_changed(reader):
    assert reader.changed() is True  # never polled
    first = reader.poll()
    assert reader.changed() is False
    assert reader.changed() is False
    again = reader.poll()
    assert again.rows == [] and again.snapshots == {} and not again.reset and not again.more
    assert again.runs == first.runs
    assert reader.changed() is False


def test_new_pending_run_is_noticed(reader, pg_fixture_db, pg_server):
    reader.poll()
    new_id = "f" * 64
    pg_server.psql(pg_fixture_db.dbname,
                   f"INSERT INTO run_snapshots SELECT '{new_id}', jsonb_set(snapshot_json, '{{run_id}}', '\"{new_id}\"')"
                   f" FROM run_snapshots WHERE run_id = '{RUN_IDS['pending']}'")
    assert reader.changed() is True
    poll = reader.poll()
    assert new_id in poll.runs and len(poll.runs) == 13
    assert list(poll.snapshots) == [new_id] and json.loads(poll.snapshots[new_id])["run_id"] == new_id
    assert poll.rows == [] and not poll.reset
    assert reader.changed() is False


def test_new_events_are_noticed(reader, pg_fixture_db, pg_server):
    first = reader.poll()
    killed = RUN_IDS["killed"]
    pg_server.psql(pg_fixture_db.dbname,
                   "INSERT INTO run_events (run_id, event_type, event_json) SELECT run_id, event_type, event_json"
                   f" FROM run_events WHERE run_id = '{killed}' ORDER BY id DESC LIMIT 2")
    assert reader.changed() is True
    poll = reader.poll()
    assert [r.run_id for r in poll.rows] == [killed, killed]
    assert [r.pos for r in poll.rows] == [1044, 1045]
    assert poll.runs == first.runs and not poll.snapshots and not poll.reset
    assert reader.fetch(killed, [1044, 1045, 1]) == {r.pos: r.data for r in poll.rows}  # id 1 is alpha's


RERUN_SQL = """
BEGIN;
CREATE TEMP TABLE keep_snap AS SELECT * FROM run_snapshots WHERE run_id = '{run}';
CREATE TEMP TABLE keep_events AS SELECT * FROM run_events WHERE run_id = '{run}';
DELETE FROM run_events WHERE run_id = '{run}';
DELETE FROM run_projections WHERE run_id = '{run}';
DELETE FROM run_snapshots WHERE run_id = '{run}';
{middle}
INSERT INTO run_snapshots SELECT * FROM keep_snap;
INSERT INTO run_events (run_id, event_type, event_json) SELECT run_id, event_type, event_json FROM keep_events ORDER BY id;
COMMIT;
"""


def test_rerun_comes_back_in_reset_with_all_its_events(reader, pg_fixture_db, pg_server):
    first = reader.poll()
    alpha = RUN_IDS["alpha"]
    before = [(r.event_type, r.data) for r in first.rows if r.run_id == alpha]
    pg_server.psql(pg_fixture_db.dbname, RERUN_SQL.format(run=alpha, middle=""))
    assert reader.changed() is True
    poll = reader.poll()
    assert poll.reset == {alpha}
    assert poll.runs[alpha] != first.runs[alpha]
    assert {r: t for r, t in poll.runs.items() if r != alpha} == {r: t for r, t in first.runs.items() if r != alpha}
    assert list(poll.snapshots) == [alpha] and json.loads(poll.snapshots[alpha])["run_id"] == alpha
    assert {r.run_id for r in poll.rows} == {alpha}
    assert [(r.event_type, r.data) for r in poll.rows] == before
    assert [r.pos for r in poll.rows] == list(range(1044, 1044 + len(before)))
    assert reader.changed() is False
    assert reader.poll().rows == []


def test_rerun_seen_half_way(reader, pg_fixture_db, pg_server):
    """clear_run committed (the run vanishes), then the run is written again in later transactions."""
    first = reader.poll()
    beta = RUN_IDS["beta"]
    n = sum(1 for r in first.rows if r.run_id == beta)
    db = pg_fixture_db.dbname
    pg_server.psql(db, f"CREATE TABLE public.keep_s AS SELECT * FROM run_snapshots WHERE run_id = '{beta}';"
                       f" CREATE TABLE public.keep_e AS SELECT * FROM run_events WHERE run_id = '{beta}';"
                       f" BEGIN; DELETE FROM run_events WHERE run_id = '{beta}';"
                       f" DELETE FROM run_snapshots WHERE run_id = '{beta}'; COMMIT")
    assert reader.changed() is True
    gone = reader.poll()
    assert beta not in gone.runs and len(gone.runs) == 11 and gone.rows == [] and not gone.reset
    pg_server.psql(db, "INSERT INTO run_snapshots SELECT * FROM public.keep_s")
    back = reader.poll()
    assert back.reset == {beta} and back.rows == [] and list(back.snapshots) == [beta]
    pg_server.psql(db, "INSERT INTO run_events (run_id, event_type, event_json)"
                       " SELECT run_id, event_type, event_json FROM public.keep_e ORDER BY id")
    rows = drain(reader).rows
    assert len(rows) == n and {r.run_id for r in rows} == {beta}
    assert reader.changed() is False


def test_late_commit_below_the_cursor_is_not_skipped(reader, pg_fixture_db, pg_server):
    """Two writers: the smaller id commits after the larger one (spec §14.3 caveat)."""
    reader.poll()
    flaky, killed = RUN_IDS["flaky"], RUN_IDS["killed"]
    insert = ("INSERT INTO run_events (run_id, event_type, event_json) SELECT run_id, event_type, event_json"
              " FROM run_events WHERE run_id = %s ORDER BY id DESC LIMIT 1 RETURNING id")
    admin = pg_server.url(pg_fixture_db.dbname, password=pg_server.password)
    slow = psycopg.connect(admin)
    fast = psycopg.connect(admin, autocommit=True)
    try:
        (small,) = slow.execute(insert, (flaky,)).fetchone()       # not committed yet
        (large,) = fast.execute(insert, (killed,)).fetchone()
        assert small < large
        poll = reader.poll()
        assert [r.pos for r in poll.rows] == [large]
        assert reader.changed() is False
        slow.commit()
        assert reader.changed() is True
        poll = reader.poll()
        assert [(r.pos, r.run_id) for r in poll.rows] == [(small, flaky)] and not poll.reset
        assert reader.changed() is False

        # the same within one run: the run is folded again from its first event
        (small,) = slow.execute(insert, (killed,)).fetchone()
        (large,) = fast.execute(insert, (killed,)).fetchone()
        assert [r.pos for r in reader.poll().rows] == [large]
        slow.commit()
        poll = reader.poll()
        assert poll.reset == {killed}
        assert [r.pos for r in poll.rows] == [i for i, r, _ in db_events(pg_server, pg_fixture_db.dbname,
                                                                       f"run_id = '{killed}'")]
        assert small in [r.pos for r in poll.rows]
    finally:
        slow.close()
        fast.close()


def test_one_connection_idle_between_polls(reader, pg_fixture_db, pg_server):
    for _ in range(3):
        reader.poll()
        reader.changed()
    states = pg_server.psql(pg_fixture_db.dbname, "SELECT state, backend_xmin IS NULL FROM pg_stat_activity"
                                                  " WHERE application_name = 'themis-daemon'")
    assert states.splitlines() == ["idle|t"]
    conn = reader._conn
    assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
    with conn.transaction():
        assert conn.execute("SHOW transaction_isolation").fetchone()[0] == "repeatable read"
        assert conn.execute("SHOW transaction_read_only").fetchone()[0] == "on"


def test_even_a_superuser_url_cannot_write(pg_fixture_db, pg_server):
    reader = reader_for(pg_server.url(pg_fixture_db.dbname, password=pg_server.password))
    try:
        reader.poll()
        with pytest.raises(Unavailable, match="read-only transaction"):
            reader._run(lambda conn: conn.execute("CREATE TABLE must_not_exist (x int)"))
        assert pg_server.password not in reader.describe()
    finally:
        reader.close()
    assert pg_server.psql(pg_fixture_db.dbname, "SELECT to_regclass('must_not_exist') IS NULL") == "t"


def test_reading_changes_nothing(pg_fixture_db, pg_server):
    before = row_counts(pg_server, pg_fixture_db.dbname)
    ids_before = pg_server.psql(pg_fixture_db.dbname, "SELECT md5(string_agg(id::text || xmin::text, ',' ORDER BY id))"
                                                      " FROM run_events")
    reader = reader_for(pg_fixture_db, batch=100)
    try:
        drain(reader)
        reader.changed()
        reader.fetch(RUN_IDS["alpha"], [1, 2, 3])
    finally:
        reader.close()
    assert row_counts(pg_server, pg_fixture_db.dbname) == before
    assert before["run_events"] == 1043 and before["run_snapshots"] == 12
    assert pg_server.psql(pg_fixture_db.dbname, "SELECT md5(string_agg(id::text || xmin::text, ',' ORDER BY id))"
                                                " FROM run_events") == ids_before


# ---------------------------------------------------------------------------------- server loss


def test_server_killed_then_restarted(reader, pg_fixture_db, pg_server, caplog):
    caplog.set_level(logging.DEBUG)
    first = reader.poll()
    killed = RUN_IDS["killed"]
    add_event = ("INSERT INTO run_events (run_id, event_type, event_json) SELECT run_id, event_type, event_json"
                 f" FROM run_events WHERE run_id = '{killed}' ORDER BY id DESC LIMIT 1")
    pg_server.psql(pg_fixture_db.dbname, add_event)  # committed just before the crash: must survive it
    pg_server.kill()
    try:
        with pytest.raises(Unavailable) as info:
            reader.poll()
        msg = str(info.value)
        assert pg_fixture_db.password not in msg and "themis_reader:***@127.0.0.1" in msg
        with pytest.raises(Unavailable) as info:
            reader.changed()
        assert pg_fixture_db.password not in str(info.value)
    finally:
        pg_server.restart()
    deadline = time.monotonic() + 20
    while True:
        try:
            poll = reader.poll()
            break
        except Unavailable:
            assert time.monotonic() < deadline, "the reader did not reconnect"
            time.sleep(0.1)
    assert [(r.pos, r.run_id) for r in poll.rows] == [(1044, killed)]
    assert poll.runs == first.runs and not poll.reset
    assert reader.changed() is False
    pg_server.psql(pg_fixture_db.dbname, add_event)
    assert reader.changed() is True
    rows = reader.poll().rows
    # after a crash the identity sequence skips ahead (it logs 32 values in advance): ids have gaps
    assert [r.run_id for r in rows] == [killed] and rows[0].pos > 1044
    for record in caplog.records:
        assert pg_fixture_db.password not in record.getMessage()


def test_restart_between_polls_is_transparent(reader, pg_server):
    first = reader.poll()
    pg_server.stop()
    pg_server.restart()
    # the kept connection is dead; the reader replaces it at once and the poll succeeds
    poll = reader.poll()
    assert poll.runs == first.runs and poll.rows == []
