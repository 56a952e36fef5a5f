"""pytest fixtures for a real PostgreSQL server holding the Themis 4 fixture store.

Imported by conftest.py (`from pg_fixtures import *`). Tests that use them are skipped, with
the reason, when Debian's `postgresql` package is not installed.

* `pg_server` (session): a running :class:`pgserver.PgServer`.
* `pg_fixture_db` (function): a fresh database restored from
  `data/themis-v4/postgres/themis_fixtures.sql` (copied from a template restored once per
  session), readable by the role `themis_reader` (password, SELECT only). The value is the
  reader's URL (a `str`) with `.dbname`, `.user`, `.password` and `.server` attributes.
"""

from __future__ import annotations

import itertools
import os

import pytest

from pgserver import PgServer

__all__ = ["pg_server", "pg_fixture_template", "pg_fixture_db", "PG_FIXTURE_SQL", "PG_READER", "PG_READER_PASSWORD"]

PG_FIXTURE_SQL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "themis-v4", "postgres",
                              "themis_fixtures.sql")
PG_READER = "themis_reader"
PG_READER_PASSWORD = "r3ader:p@ss/w0rd"  # characters that must be quoted in a URL
_TEMPLATE = "themis_fixtures_template"  # restored once per session
_counter = itertools.count(1)


class PgDatabaseUrl(str):
    """The read-only role's URL, plus what a test needs to check or modify the database."""

    dbname: str
    user: str
    password: str
    server: PgServer


@pytest.fixture(scope="session")
def pg_server():
    ok, reason = PgServer.available()
    if not ok:
        pytest.skip(f"PostgreSQL server not available: {reason}")
    server = PgServer()
    try:
        server.start()
        server.create_role(PG_READER, PG_READER_PASSWORD)
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pg_fixture_template(pg_server):
    pg_server.create_database(_TEMPLATE, PG_FIXTURE_SQL)
    pg_server.grant_select(_TEMPLATE, PG_READER)
    return _TEMPLATE


@pytest.fixture
def pg_fixture_db(pg_server, pg_fixture_template):
    if not pg_server.running:  # a previous test killed it and failed before restarting it
        pg_server.restart()
    name = f"themis_fixtures_{os.getpid()}_{next(_counter)}"
    pg_server.create_database(name, template=pg_fixture_template)
    pg_server.grant_select(name, PG_READER)
    url = PgDatabaseUrl(pg_server.url(name, user=PG_READER, password=PG_READER_PASSWORD))
    url.dbname, url.user, url.password, url.server = name, PG_READER, PG_READER_PASSWORD, pg_server
    yield url
    if not pg_server.running:
        pg_server.restart()
    pg_server.drop_database(name)
