"""A throw-away PostgreSQL server for tests (Debian's `postgresql` package), no dependencies.

    server = PgServer()
    server.start()                       # initdb + pg_ctl start on a free 127.0.0.1 port
    server.create_database("db", "dump.sql")
    server.create_role("reader", "pw"); server.grant_select("db", "reader")
    url = server.url("db", user="reader", password="pw")
    server.kill(); server.restart()      # crash and come back on the same port and data dir
    server.close()                       # stop (fast) and remove the temporary directory

Nothing listens on anything but 127.0.0.1 (the unix socket lives inside the private temporary
directory). TCP connections need a password (scram-sha-256); the helper's own psql calls use
the socket with trust auth. As root, initdb/pg_ctl run as the `postgres` user via `runuser`
(initdb refuses to run as root) and the directory is chowned to it. Every subprocess is bounded
by a timeout, and `close()` (also on `with PgServer() as s:` exit) stops what was started.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote

TIMEOUT = 60  # seconds, for initdb, pg_ctl and every psql call


def _bindir() -> Optional[str]:
    def version(path: str) -> Tuple[int, ...]:
        name = os.path.basename(os.path.dirname(path))
        return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)

    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.isfile(os.path.join(d, "pg_ctl"))]
    return max(dirs, key=version) if dirs else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PgServerError(RuntimeError):
    pass


class PgServer:
    SUPERUSER = "postgres"

    def __init__(self, port: Optional[int] = None, base_dir: Optional[str] = None):
        self.bindir = _bindir()
        self.as_root = os.geteuid() == 0
        self.port = port
        self.password = secrets.token_hex(12)  # the superuser's (TCP) password
        self._base_dir = base_dir
        self.dir: Optional[str] = None
        self._started = False

    # -- discovery -------------------------------------------------------------------------
    @classmethod
    def available(cls) -> Tuple[bool, str]:
        bindir = _bindir()
        if bindir is None:
            return False, "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; apt-get install postgresql)"
        for tool in ("initdb", "pg_ctl", "postgres", "psql"):
            if not os.access(os.path.join(bindir, tool), os.X_OK):
                return False, f"{bindir}/{tool} is missing"
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                return False, "running as root needs runuser (util-linux) to start PostgreSQL as the postgres user"
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return False, "running as root needs the `postgres` OS user (created by Debian's postgresql package)"
        return True, ""

    # -- paths and commands ----------------------------------------------------------------
    @property
    def data_dir(self) -> str:
        return os.path.join(self._dir(), "data")

    @property
    def socket_dir(self) -> str:
        return os.path.join(self._dir(), "sock")

    @property
    def log_file(self) -> str:
        return os.path.join(self._dir(), "server.log")

    def _dir(self) -> str:
        if self.dir is None:
            raise PgServerError("PgServer was not started")
        return self.dir

    def _env(self) -> Dict[str, str]:
        # The caller's PG* variables (PGHOST, PGPASSWORD, PGOPTIONS, ...) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["PGCONNECT_TIMEOUT"] = "10"
        return env

    def _as_pg(self, argv: List[str]) -> List[str]:
        return ["runuser", "-u", "postgres", "--"] + argv if self.as_root else argv

    def _run(self, argv: List[str], *, timeout: float = TIMEOUT, check: bool = True, as_pg: bool = False,
             input: Optional[str] = None) -> subprocess.CompletedProcess:
        if as_pg:
            argv = self._as_pg(argv)
        try:
            proc = subprocess.run(argv, env=self._env(), cwd=self._dir(), input=input, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise PgServerError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
        if check and proc.returncode != 0:
            raise PgServerError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                                f"{self._log_tail()}")
        return proc

    def _log_tail(self) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()[-15:]
        except OSError:
            return ""
        return "\nserver.log:\n" + "\n".join(lines) if lines else ""

    # -- lifecycle ---------------------------------------------------------------------------
    def _init(self) -> None:
        ok, reason = self.available()
        if not ok:
            raise PgServerError(reason)
        self.dir = tempfile.mkdtemp(prefix="themis-pg-", dir=self._base_dir)
        os.chmod(self.dir, 0o700)
        pwfile = os.path.join(self.dir, "pwfile")
        with open(pwfile, "w", encoding="utf-8") as fh:
            fh.write(self.password + "\n")
        os.mkdir(self.socket_dir, 0o700)
        if self.as_root:
            # The postgres user must reach the directory: every parent must be traversable.
            parent = os.path.dirname(self.dir)
            while parent and parent != "/":
                if not os.stat(parent).st_mode & 0o001:
                    raise PgServerError(f"{parent} is not traversable by the postgres user; pass another base_dir")
                parent = os.path.dirname(parent)
            pg = pwd.getpwnam("postgres")
            for path in (self.dir, pwfile, self.socket_dir):
                os.chown(path, pg.pw_uid, pg.pw_gid)
        self._run([os.path.join(self.bindir, "initdb"), "-D", self.data_dir, "-U", self.SUPERUSER,
                   f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                   "-E", "UTF8", "--locale=C", "--no-sync"], as_pg=True, timeout=120)
        os.unlink(pwfile)

    def start(self) -> "PgServer":
        """initdb (first time) and start; returns self. Picks a free port unless one was given."""
        if self._started:
            return self
        if self.dir is None:
            self._init()
        fixed = self.port is not None
        for attempt in range(3):
            if self.port is None:
                self.port = _free_port()
            try:
                self._pg_ctl_start()
                return self
            except PgServerError:
                if fixed or attempt == 2:
                    raise
                self.port = None  # somebody took the port in between: try another one
        return self

    def _pg_ctl_start(self) -> None:
        # pg_ctl runs the postmaster through /bin/sh: the temp paths contain no spaces. fsync=off
        # survives kill() (the OS keeps the writes); synchronous_commit=off would not: commits
        # still in the WAL buffers would be lost.
        opts = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
                " -c full_page_writes=off -c max_connections=40"
                " -c shared_buffers=16MB -c unix_socket_permissions=0700")
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data_dir, "-l", self.log_file, "-w",
                   "-t", str(TIMEOUT), "-o", opts, "start"], as_pg=True, timeout=TIMEOUT + 10)
        self._started = True

    def stop(self) -> None:
        """Stop (fast shutdown); the data directory stays for `restart()`."""
        if self.dir is None or not os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            self._started = False
            return
        pg_ctl = os.path.join(self.bindir, "pg_ctl")
        try:
            self._run([pg_ctl, "-D", self.data_dir, "-m", "fast", "-w", "-t", "30", "stop"], as_pg=True, timeout=40)
        except PgServerError:
            try:
                self._run([pg_ctl, "-D", self.data_dir, "-m", "immediate", "-w", "-t", "15", "stop"],
                          as_pg=True, timeout=25)
            except PgServerError:
                self.kill()
        self._started = False

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); its backends are killed too, so `restart()` works."""
        pid = self.postmaster_pid()
        if pid is None:
            self._started = False
            return
        children = [p for p, ppid in _proc_table() if ppid == pid]
        for target in [pid] + children:
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in [pid] + children):
            time.sleep(0.02)
        # A dead postmaster whose parent (often PID 1 of a container) never reaps it stays a
        # zombie, and a new postmaster would take its lock files for a running server.
        if not _alive(pid):
            for path in (os.path.join(self.data_dir, "postmaster.pid"),
                         os.path.join(self.socket_dir, f".s.PGSQL.{self.port}.lock"),
                         os.path.join(self.socket_dir, f".s.PGSQL.{self.port}")):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        self._started = False

    def restart(self) -> "PgServer":
        """Start again on the SAME port and data directory (after stop() or kill())."""
        if self._started:
            self.stop()
        self._pg_ctl_start()
        return self

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        try:
            self.stop()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._started

    def postmaster_pid(self) -> Optional[int]:
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid"), encoding="ascii") as fh:
                return int(fh.readline().strip())
        except (OSError, ValueError):
            return None

    # -- SQL -------------------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        """The superuser over TCP (with its password), database `postgres`."""
        return self.url("postgres", user=self.SUPERUSER, password=self.password)

    def url(self, dbname: str, user: str = SUPERUSER, password: Optional[str] = None) -> str:
        if self.port is None:
            raise PgServerError("PgServer was not started")
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def _psql(self, dbname: str, extra: List[str], timeout: float = TIMEOUT) -> str:
        # Over the private unix socket, as the superuser, trust auth: no password needed.
        argv = [os.path.join(self.bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.socket_dir,
                "-p", str(self.port), "-U", self.SUPERUSER, "-d", dbname] + extra
        return self._run(argv, timeout=timeout).stdout

    def psql(self, dbname: str, sql: str) -> str:
        """Run SQL as the superuser; unaligned, tuples only (`a|b` per row), stripped."""
        return self._psql(dbname, ["-A", "-t", "-c", sql]).strip()

    def create_database(self, name: str, sql_file: Optional[str] = None, template: Optional[str] = None) -> str:
        """CREATE DATABASE (optionally from a template) and restore a plain SQL dump; returns the name."""
        tpl = f" TEMPLATE {_ident(template)}" if template else ""
        self.psql("postgres", f"CREATE DATABASE {_ident(name)}{tpl}")
        if sql_file is not None:
            self._psql(name, ["-f", os.path.abspath(sql_file)], timeout=300)
        return name

    def drop_database(self, name: str) -> None:
        self.psql("postgres", f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    def create_role(self, name: str, password: str) -> None:
        """A plain LOGIN role with a (scram) password; idempotent (the password is reset)."""
        exists = self.psql("postgres", f"SELECT 1 FROM pg_roles WHERE rolname = {_literal(name)}")
        verb = "ALTER" if exists else "CREATE"
        self.psql("postgres", f"{verb} ROLE {_ident(name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
                              f" PASSWORD {_literal(password)}")

    def grant_select(self, dbname: str, role: str, schema: str = "public") -> None:
        """Only reading: CONNECT, USAGE on the schema and SELECT on its existing tables."""
        self.psql(dbname, f"GRANT CONNECT ON DATABASE {_ident(dbname)} TO {_ident(role)};"
                          f" GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(role)};"
                          f" GRANT SELECT ON ALL TABLES IN SCHEMA {_ident(schema)} TO {_ident(role)}")


def _proc_table() -> List[Tuple[int, int]]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                out.append((int(entry), int(fields[1])))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state not in ("Z", "X")
