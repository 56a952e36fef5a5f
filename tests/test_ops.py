"""Production operations with the real process: sd_notify, reload, drain, socket activation,
workers, logging, the systemd units, nginx in front, and the container files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import tornado.websocket

from conftest import snapshot_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
SERVICE = os.path.join(REPO, "systemd", "themis-daemon.service")
SOCKET_UNIT = os.path.join(REPO, "systemd", "themis-daemon.socket")
NGINX_CONF = os.path.join(REPO, "deploy", "nginx.conf")

# Serves the daemon on an inherited fd 3, like systemd socket activation: LISTEN_PID must be
# the daemon's own pid, so set it here and exec (the pid stays the same).
ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3); os.close(fd)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='http')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

# Runs the daemon with the kernel's memory-deny-write-execute (what MemoryDenyWriteExecute=
# uses on Linux >= 6.3): any W+X mapping fails from here on.
MDWE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"
    "    sys.exit(77)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


# ------------------------------------------------------------------------------------ helpers

class Daemon:
    """A `themis-daemon serve` child on a loopback port; stderr is collected by a thread."""

    def __init__(self, *args, env=None, prefix=(), pass_fds=(), port="0", wait=True, new_session=False):
        environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                    "JOURNAL_STREAM", "THEMIS_CONFIG"):
            environ.pop(key, None)
        environ.update(env or {})
        cmd = [*prefix, PY, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", port, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     cwd=REPO, env=environ, pass_fds=pass_fds, start_new_session=new_session)
        self.lines = []
        self.port = None
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait and port != "0":
            # A fixed port (when no INFO line names it): wait until it answers.
            self.port = int(port)
            if not wait_until(self._answers, 30, 0.1):
                self.kill()
                raise AssertionError("daemon did not start: " + self.text())
        elif wait:
            self._started.wait(30)
            if not self.port:
                self.kill()
                raise AssertionError("daemon did not start: " + self.text())

    def _answers(self):
        if self.proc.poll() is not None:
            return True
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def _read(self):
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m and not self.port:
                self.port = int(m.group(1))
                self._started.set()
        self._started.set()

    def text(self):
        with self._lock:
            return "".join(self.lines)

    def wait_log(self, needle, timeout=10.0, start=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for line in self.lines[start:]:
                    if needle in line:
                        return line
            time.sleep(0.05)
        raise AssertionError(f"no log line with {needle!r}: " + self.text())

    def url(self, path, port=None):
        return f"http://127.0.0.1:{port or self.port}{path}"

    def get(self, path, port=None, timeout=10):
        try:
            with urllib.request.urlopen(self.url(path, port), timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET; records (pid, fields)."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if address.startswith("@"):
            self.sock.bind("\0" + address[1:])
        else:
            self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.address = address
        self.messages = []  # (monotonic time, sender pid, {key: value})

    def _recv(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(ln.split("=", 1) for ln in data.decode().splitlines() if "=" in ln)
        msg = (time.monotonic(), pid, fields)
        self.messages.append(msg)
        return msg

    def wait_for(self, key, value=None, timeout=15.0):
        """The next message (after those already seen) that has `key` (= `value`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._recv(deadline - time.monotonic())
            if msg and key in msg[2] and (value is None or msg[2][key] == value):
                return msg
        raise AssertionError(f"no {key}={value} notification; got {[m[2] for m in self.messages]}")

    def collect(self, seconds):
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self._recv(deadline - time.monotonic())
            if msg:
                out.append(msg)
        return out

    def close(self):
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request):
    folder = tempfile.mkdtemp(prefix="tdn-")  # short: AF_UNIX paths are limited to 107 bytes
    address = os.path.join(folder, "notify") if request.param == "path" else f"@themis-test-{uuid.uuid4().hex}"
    ns = NotifySocket(address)
    try:
        yield ns
    finally:
        ns.close()
        shutil.rmtree(folder, ignore_errors=True)


def run_async(coro, timeout=30):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def workers_of(pid):
    """Children of a `--workers N` main process except its event poller (named themis-poller)."""
    out = set()
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/comm") as fh:
                if fh.read().strip() == "themis-poller":
                    continue
        except OSError:
            continue
        out.add(child)
    return out


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return {int(p) for p in fh.read().split()}
    except OSError:
        out = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.add(int(name))
                except (OSError, IndexError, ValueError):
                    pass
        return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_all(daemon, workers):
    """Test clean-up: the daemon and any worker it may have left behind."""
    daemon.kill()
    for w in workers:
        if alive(w):
            os.kill(w, signal.SIGKILL)


def wait_until(pred, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


COMPARE_BODY = json.dumps({"run_ids": ["fake-live", "fake-failed"]}).encode()


# --------------------------------------------------------------------------------- sd_notify

def test_notify_ready_watchdog_reload_stopping(plain_store, tmp_path, notify_socket):
    cfg = tmp_path / "c.yaml"
    write_config(cfg, "monitor:\n  poll_interval: 0.2\nbenchmarks: [alpha]\n")
    d = Daemon("--storage", plain_store, "--config", str(cfg),
               env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "400000"})
    try:
        _, pid, ready = notify_socket.wait_for("READY", "1")
        assert pid == d.proc.pid  # the main process itself (NotifyAccess=main)
        assert "5 runs" in ready["STATUS"]
        # READY=1 comes after the sockets listen and the first scan: ready at once.
        assert d.get("/readyz")[0] == 200
        assert d.get("/api/benchmarks") == (200, {"benchmarks": ["alpha"]})

        # WATCHDOG=1 every half WATCHDOG_USEC (0.2 s), from the IOLoop, and it keeps coming.
        pings = [m for m in notify_socket.collect(1.3) if m[2].get("WATCHDOG") == "1"]
        assert len(pings) >= 4, pings
        assert max(b[0] - a[0] for a, b in zip(pings, pings[1:])) < 0.6

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1, and the new config is live.
        write_config(cfg, "monitor:\n  poll_interval: 0.2\nbenchmarks: [beta, gamma]\nlogging:\n  level: warning\n")
        d.signal(signal.SIGHUP)
        _, _, reloading = notify_socket.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert abs(int(reloading["MONOTONIC_USEC"]) / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
        notify_socket.wait_for("READY", "1")
        assert d.get("/api/benchmarks") == (200, {"benchmarks": ["beta", "gamma"]})

        # An invalid file keeps the previous configuration, with one clear error line.
        before = len(d.lines)
        write_config(cfg, "benchmarks: [delta]\nserver:\n  prot: 1\n")
        d.signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING", "1")
        _, _, ready = notify_socket.wait_for("READY", "1")
        assert "reload failed" in ready["STATUS"]
        assert d.get("/api/benchmarks") == (200, {"benchmarks": ["beta", "gamma"]})
        line = d.wait_log("reload failed", start=before)
        assert "server.prot" in line and "ERROR" in line
        time.sleep(0.3)
        new = d.lines[before:]
        assert len(new) == 1 and "Traceback" not in d.text(), new

        d.signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING", "1")
        assert d.wait_exit(30) == 0
    finally:
        d.kill()


def test_reload_keeps_command_line_flags(plain_store, tmp_path):
    # --log-level beats the file, before and after SIGHUP: the reload must not drop the flag.
    cfg = tmp_path / "c.yaml"
    write_config(cfg, "logging:\n  level: info\nbenchmarks: [one]\n")
    d = Daemon("--storage", plain_store, "--config", str(cfg), "--log-level", "error", port=str(free_port()))
    try:
        write_config(cfg, "logging:\n  level: info\nbenchmarks: [two]\n")
        d.signal(signal.SIGHUP)
        assert wait_until(lambda: d.get("/api/benchmarks")[1] == {"benchmarks": ["two"]}, 60)
        d.get("/api/runs")
        time.sleep(0.3)
        # At level error neither "configuration reloaded" nor access lines are logged.
        assert "configuration reloaded" not in d.text() and "GET /api/runs" not in d.text()
    finally:
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0


# ------------------------------------------------------------------------------- shutdown

def test_sigterm_closes_websockets_with_1001_and_exits_0(plain_store):
    d = Daemon("--storage", plain_store, "--poll-interval", "0.2")
    try:
        async def scenario():
            conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{d.port}/ws")
            await conn.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
            assert json.loads(await conn.read_message())["type"] == "subscribed"
            started = time.monotonic()
            d.signal(signal.SIGTERM)
            while await conn.read_message() is not None:
                pass
            return conn.close_code, conn.close_reason, started

        code, reason, started = run_async(scenario())
        assert code == 1001, (code, reason)
        assert d.wait_exit(30) == 0
        assert time.monotonic() - started < 5
    finally:
        d.kill()


def _partial_post(port, body):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /api/compare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
    return s


def _read_response(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        m = re.search(rb"content-length: *(\d+)", head, re.I)
        if sep and m and len(rest) >= int(m.group(1)):
            return data


def test_sigterm_drains_in_flight_requests(plain_store):
    d = Daemon("--storage", plain_store, "--poll-interval", "0.2")
    try:
        # An idle keep-alive connection, and a request whose body is still being sent.
        idle = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(idle).startswith(b"HTTP/1.1 200")
        busy = _partial_post(d.port, COMPARE_BODY)
        time.sleep(0.3)
        d.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert d.proc.poll() is None  # waiting for the in-flight request
        assert idle.recv(1) == b""    # idle keep-alive connections are closed at once
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", d.port), timeout=2).close()
        busy.sendall(COMPARE_BODY[5:])
        response = _read_response(busy)
        assert response.startswith(b"HTTP/1.1 200"), response[:300]
        assert json.loads(response.partition(b"\r\n\r\n")[2])["run_ids"] == ["fake-live", "fake-failed"]
        assert d.wait_exit(30) == 0
        idle.close()
        busy.close()
    finally:
        d.kill()


def test_drain_timeout_cuts_stuck_requests(plain_store, tmp_path):
    cfg = tmp_path / "c.yaml"
    write_config(cfg, "server:\n  drain_timeout: 0.5\n")
    d = Daemon("--storage", plain_store, "--config", str(cfg))
    try:
        stuck = _partial_post(d.port, COMPARE_BODY)
        time.sleep(0.3)
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
        assert time.monotonic() - started < 3.5
        assert "1 request(s) cut off" in d.text()
        stuck.close()
    finally:
        d.kill()


def test_sigint_stops_too(plain_store):
    d = Daemon("--storage", plain_store)
    try:
        assert d.get("/healthz")[0] == 200
        d.signal(signal.SIGINT)
        assert d.wait_exit(30) == 0
        assert "Traceback" not in d.text()
    finally:
        d.kill()


# ------------------------------------------------------------------------ socket activation

def test_socket_activation_serves_the_inherited_socket(plain_store, notify_socket):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    d = Daemon("--storage", plain_store, prefix=(PY, "-c", ACTIVATE, str(listener.fileno())),
               pass_fds=(listener.fileno(),), env={"NOTIFY_SOCKET": notify_socket.address})
    try:
        listener.close()  # only the daemon holds it now
        assert d.port == port  # served on the inherited socket, not on a port of its own (--port 0)
        _, pid, _ = notify_socket.wait_for("READY", "1")
        assert pid == d.proc.pid
        status, runs = d.get("/api/runs")
        assert status == 200 and len(runs) == 5
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
    finally:
        listener.close()
        d.kill()


def test_listen_fds_for_another_pid_are_ignored(plain_store):
    d = Daemon("--storage", plain_store, env={"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    try:
        assert d.get("/healthz")[0] == 200  # bound its own port
    finally:
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0


# ---------------------------------------------------------------------------------- workers

def test_workers_share_the_port_and_stop_on_sigterm(plain_store, tmp_path, notify_socket):
    cfg = tmp_path / "c.yaml"
    write_config(cfg, "monitor:\n  poll_interval: 0.2\nbenchmarks: [alpha]\n")
    d = Daemon("--storage", plain_store, "--config", str(cfg), "--workers", "2",
               env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "1000000"})
    workers = set()
    try:
        # READY=1 once, from the main process, after both workers reported ready.
        _, pid, ready = notify_socket.wait_for("READY", "1", timeout=30)
        assert pid == d.proc.pid and "2/2 workers ready" in ready["STATUS"]
        workers = workers_of(d.proc.pid)
        assert len(workers) == 2, workers
        assert len(children_of(d.proc.pid)) == 3  # and the one event poller
        for _ in range(6):
            status, runs = d.get("/api/runs")
            assert status == 200 and len(runs) == 5
        # The main process keeps the watchdog fed while its workers feed it.
        pings = [m for m in notify_socket.collect(1.2) if m[2].get("WATCHDOG") == "1"]
        assert pings and all(m[1] == d.proc.pid for m in pings)

        # SIGHUP reaches every worker; READY=1 again once all of them reloaded.
        write_config(cfg, "monitor:\n  poll_interval: 0.2\nbenchmarks: [beta]\n")
        d.signal(signal.SIGHUP)
        notify_socket.wait_for("RELOADING", "1")
        _, pid, _ = notify_socket.wait_for("READY", "1")
        assert pid == d.proc.pid
        assert all(d.get("/api/benchmarks") == (200, {"benchmarks": ["beta"]}) for _ in range(8))

        # A worker that dies is replaced.
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: len(workers_of(d.proc.pid) - {victim}) == 2, 60), d.text()
        workers = children_of(d.proc.pid)
        assert d.get("/healthz")[0] == 200

        async def scenario():
            conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{d.port}/ws")
            await conn.write_message(json.dumps({"type": "ping"}))
            assert json.loads(await conn.read_message()) == {"type": "pong"}
            d.signal(signal.SIGTERM)
            while await conn.read_message() is not None:
                pass
            return conn.close_code

        started = time.monotonic()
        assert run_async(scenario()) == 1001
        notify_socket.wait_for("STOPPING", "1")
        assert d.wait_exit(30) == 0
        assert time.monotonic() - started < 5
        assert not any(alive(w) for w in workers)
    finally:
        kill_all(d, workers)


def test_workers_port_in_use_is_one_clear_line(plain_store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([PY, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", str(port),
                              "--workers", "2", "--storage", plain_store],
                             capture_output=True, text=True, timeout=30, cwd=REPO)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "already in use" in lines[0], res.stderr


def test_privileged_port_is_one_clear_line(plain_store):
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as fh:
        if int(fh.read()) <= 1:
            pytest.skip("this machine lets anyone bind low ports")
    prefix = []
    if os.geteuid() == 0:
        # root binds any port: take CAP_NET_BIND_SERVICE away (util-linux setpriv)
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        prefix = [setpriv, "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service"]
    res = subprocess.run([*prefix, PY, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", "1",
                          "--storage", plain_store], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "permission denied" in lines[0], res.stderr


# ---------------------------------------------------------------------------------- logging

def test_json_logs_are_json_lines(plain_store):
    d = Daemon("--storage", plain_store, "--json-logs")
    try:
        assert d.get("/api/runs/no-such-run")[0] == 404  # successful polls are logged at DEBUG
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
    finally:
        d.kill()
    lines = [ln for ln in d.lines if ln.strip()]
    assert len(lines) >= 3
    records = [json.loads(ln) for ln in lines]
    assert all({"level", "logger", "message", "time"} <= set(r) for r in records)
    assert any("/api/runs" in r["message"] for r in records)


def test_no_timestamps_under_journald(plain_store):
    for extra in ((), ("--json-logs",)):
        d = Daemon("--storage", plain_store, *extra, env={"JOURNAL_STREAM": "8:12345"})
        try:
            d.signal(signal.SIGTERM)
            assert d.wait_exit(30) == 0
        finally:
            d.kill()
        first = d.lines[0]
        if extra:
            assert "time" not in json.loads(first)
        else:
            assert first.startswith("INFO themis_daemon: "), first


# ------------------------------------------------------------------------------ systemd units

def _unit_settings(path):
    out = {}
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")) and "=" in line:
                key, value = line.split("=", 1)
                out.setdefault(key, []).append(value)
    return out


def test_service_unit_has_the_required_settings():
    unit = _unit_settings(SERVICE)
    expected = {
        "Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure", "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "read-only", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native", "CapabilityBoundingSet": "", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "RestrictNamespaces": "yes", "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes", "LoadCredential": "api_keys:/etc/themis-daemon/api_keys",
    }
    for key, value in expected.items():
        assert value in unit.get(key, []), (key, unit.get(key))
    assert "@system-service" in unit["SystemCallFilter"]
    assert "THEMIS_CONFIG=/etc/themis-daemon/config.yaml" in unit["Environment"]
    assert unit["WatchdogSec"] and unit["ReadOnlyPaths"] and unit["UMask"]
    assert unit["ExecStart"][0].split()[:2] == ["/opt/themis-daemon/current/bin/themis-daemon", "serve"]


def _systemd_analyze():
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return tool


def _installable_units(tmp_path):
    """Copies of the units whose ExecStart is this environment's themis-daemon script."""
    script = os.path.join(os.path.dirname(PY), "themis-daemon")
    if not os.path.exists(script):
        script = shutil.which("themis-daemon")
    assert script, "the themis-daemon console script is not installed"
    with open(SERVICE) as fh:
        text = fh.read().replace("ExecStart=/opt/themis-daemon/current/bin/themis-daemon", f"ExecStart={script}")
    service = tmp_path / "themis-daemon.service"
    service.write_text(text)
    sock = tmp_path / "themis-daemon.socket"
    shutil.copy(SOCKET_UNIT, sock)
    return str(service), str(sock)


def test_units_pass_systemd_analyze_verify(tmp_path):
    tool = _systemd_analyze()
    if not os.access("/bin/kill", os.X_OK):
        pytest.skip("/bin/kill (ExecReload=, Debian package procps) is missing")
    service, sock = _installable_units(tmp_path)
    res = subprocess.run([tool, "verify", service, sock], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # verify reports problems on stderr but may still exit 0 for some of them
    assert "themis-daemon" not in res.stderr, res.stderr


def test_service_unit_security_exposure_is_low(tmp_path):
    tool = _systemd_analyze()
    service, _ = _installable_units(tmp_path)
    res = subprocess.run([tool, "security", "--offline=true", "--no-pager", service],
                         capture_output=True, text=True, timeout=120)
    if "offline" in res.stderr and res.returncode != 0:
        pytest.skip("this systemd-analyze has no --offline mode: " + res.stderr.strip())
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", res.stdout)
    assert m, res.stdout[-2000:] + res.stderr
    assert float(m.group(1)) <= 2.0, m.group(0)


def test_numpy_and_scipy_work_without_writable_executable_memory(plain_store):
    d = Daemon("--storage", plain_store, prefix=(PY, "-c", MDWE), wait=False)
    try:
        d._started.wait(30)
        if d.proc.poll() == 77:
            pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
        assert d.port, d.text()
        for test in ("bootstrap", "permutation", "t_test"):
            body = json.dumps({"run_ids": ["fake-live", "fake-failed"], "statistical_test": test}).encode()
            req = urllib.request.Request(d.url("/api/compare"), data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200 and json.loads(resp.read())["run_ids"]
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
    finally:
        d.kill()


# ------------------------------------------------------------------------------------ nginx

def _nginx():
    tool = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not tool:
        pytest.skip("nginx is not installed (Debian package: nginx)")
    return tool


def test_nginx_proxies_rest_and_websocket(plain_store, tmp_path):
    nginx = _nginx()
    d = Daemon("--storage", plain_store, "--poll-interval", "0.2")
    proc = None
    try:
        listen = free_port()
        with open(NGINX_CONF) as fh:
            site = fh.read()
        assert "server 127.0.0.1:8080;" in site and "listen 80;" in site
        site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{d.port};")
        site = site.replace("listen 80;", f"listen 127.0.0.1:{listen};")
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / name).mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(
            "daemon off;\nmaster_process off;\n"
            f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            f"  access_log {prefix}/access.log;\n"
            + "".join(f"  {name}_temp_path {prefix}/{name};\n"
                      for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + site + "\n}\n")
        args = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        res = subprocess.run(args + ["-t"], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                return True
            except OSError:
                return False

        assert wait_until(listening, 60), proc.stderr.read() if proc.poll() is not None else "nginx not listening"

        status, runs = d.get("/api/runs", port=listen)
        assert status == 200 and len(runs) == 5
        assert d.get("/api/runs/fake-direct", port=listen)[0] == 200
        assert d.get("/api/runs/nope", port=listen)[0] == 404
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{listen}/api/compare", data=COMPARE_BODY,
                headers={"Content-Type": "application/json"}), timeout=30) as resp:
            assert resp.status == 200

        async def scenario():
            conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{listen}/ws")
            await conn.write_message(json.dumps({"type": "ping"}))
            assert json.loads(await conn.read_message()) == {"type": "pong"}
            await conn.write_message(json.dumps({"type": "subscribe", "run_id": "fake-direct"}))
            assert json.loads(await conn.read_message())["type"] == "subscribed"
            state = json.loads(await conn.read_message())
            assert state["type"] == "run_state" and state["data"]["run_id"] == "fake-direct"
            conn.close()

        run_async(scenario())

        def logged():  # nginx logs the /ws request once the tunnel is closed
            with open(prefix / "access.log") as fh:
                log = fh.read()
            return "GET /ws HTTP/1.1\" 101" in log and "GET /api/runs HTTP/1.1\" 200" in log

        assert wait_until(logged, 60)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        d.signal(signal.SIGTERM)
        d.wait_exit(30)


# ----------------------------------------------------------------------------- container files

def test_dockerfile_and_dockerignore():
    with open(os.path.join(REPO, "Dockerfile")) as fh:
        text = fh.read()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN .*pip install \.$", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^VOLUME \[\"/data\"\]", text, re.M) and re.search(r"^EXPOSE 8080$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*urllib.*/healthz", text, re.M)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:2] == ["themis-daemon", "serve"] and "0.0.0.0" in cmd and "/data" in cmd
    with open(os.path.join(REPO, ".dockerignore")) as fh:
        ignore = fh.read().split()
    # tests/data is packaged as the demo store: the build context must keep it
    assert "!tests/data" in ignore and ".git" in ignore and ".venv" in ignore


def test_serving_leaves_the_store_untouched(plain_store):
    before = snapshot_tree(plain_store)
    d = Daemon("--storage", plain_store, "--workers", "2")
    try:
        assert d.get("/api/runs")[0] == 200
        d.signal(signal.SIGHUP)
        d.signal(signal.SIGTERM)
        assert d.wait_exit(10) == 0
    finally:
        d.kill()
    assert snapshot_tree(plain_store) == before


def test_a_wedged_worker_is_replaced(plain_store):
    # Workers feed the main process's watchdog from their IOLoops; a worker that stops (here:
    # SIGSTOP) misses its pings and is killed and replaced, the others keep serving.
    d = Daemon("--storage", plain_store, "--workers", "2", env={"WATCHDOG_USEC": "600000"})
    workers = set()
    try:
        d.wait_log("all 2 workers ready")
        workers = children_of(d.proc.pid)
        victim = sorted(workers_of(d.proc.pid))[0]
        os.kill(victim, signal.SIGSTOP)
        d.wait_log(f"(pid {victim}) missed its watchdog pings", timeout=10)
        assert wait_until(lambda: not alive(victim) and len(workers_of(d.proc.pid)) == 2, 60), d.text()
        workers |= children_of(d.proc.pid)
        assert d.get("/healthz")[0] == 200
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
    finally:
        kill_all(d, workers)


def test_ctrl_c_with_workers_still_drains(plain_store):
    # Ctrl-C in a terminal sends SIGINT to the whole process group: every worker gets it from
    # the terminal and once more from the main process; that must not cut in-flight requests.
    d = Daemon("--storage", plain_store, "--workers", "2", new_session=True)
    workers = set()
    try:
        d.wait_log("all 2 workers ready")
        workers = children_of(d.proc.pid)
        busy = _partial_post(d.port, COMPARE_BODY)
        time.sleep(0.3)
        os.killpg(d.proc.pid, signal.SIGINT)
        time.sleep(0.5)
        assert d.proc.poll() is None, d.text()
        busy.sendall(COMPARE_BODY[5:])
        assert _read_response(busy).startswith(b"HTTP/1.1 200")
        busy.close()
        assert d.wait_exit(30) == 0
        assert not any(alive(w) for w in workers)
    finally:
        kill_all(d, workers)


def test_reload_guards_api_keys(plain_store, tmp_path):
    """An empty file is refused (the keys stay); a file without keys is taken, with a warning."""
    cfg = tmp_path / "c.yaml"
    write_config(cfg, "auth:\n  api_keys: [k-0123456789abcdef]\n")
    d = Daemon("--storage", plain_store, "--config", str(cfg), "--log-level", "info")
    try:
        assert d.get("/api/runs")[0] == 401
        before = len(d.lines)
        write_config(cfg, "")
        d.signal(signal.SIGHUP)
        line = d.wait_log("reload failed", timeout=60, start=before)
        assert "empty" in line and "k-0123456789abcdef" not in d.text()
        assert d.get("/api/runs")[0] == 401  # still protected
        before = len(d.lines)
        write_config(cfg, "benchmarks: [one]\n")
        d.signal(signal.SIGHUP)
        line = d.wait_log("removed every API key", timeout=60, start=before)
        assert "WARNING" in line
        assert wait_until(lambda: d.get("/api/runs")[0] == 200, 60)
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
    finally:
        d.kill()


def test_sigterm_does_not_wait_for_an_abandoned_comparison(tmp_path):
    """A comparison still running at a stop is cancelled (or, failing that, abandoned at the drain
    deadline): the process exits within drain_timeout + 1 s instead of waiting for the job (it took 22 s with a 10 s drain)."""
    from themis_daemon.demo.writer import write_completed_run

    root = str(tmp_path / "store")
    for i, acc in enumerate((0.80, 0.78, 0.76)):  # 3 rows of several seconds each
        write_completed_run(root, f"big-{i}", 10_000, metrics=("BLEU",), accuracy=acc, seed=i)
    cfg = tmp_path / "c.yaml"
    # 3 rows x 10,000 x 100,000 is over the default compare.max_work for the whole job.
    write_config(cfg, "server:\n  drain_timeout: 1.0\ncompare:\n  max_work: 10000000000\n")
    d = Daemon("--storage", root, "--config", str(cfg))
    try:
        assert wait_until(lambda: d.get("/readyz")[0] == 200, 120)
        body = json.dumps({"run_ids": ["big-0", "big-1", "big-2"], "statistical_test": "bootstrap",
                           "n_resamples": 100000}).encode()

        def post():
            req = urllib.request.Request(d.url("/api/compare"), data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=120).read()
            except Exception:
                pass

        client = threading.Thread(target=post, daemon=True)
        client.start()
        time.sleep(1.0)  # the comparison (several seconds of work) is running now
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0
        # drain_timeout + 1 s is the promise; the bound leaves room for a loaded machine and is
        # still far below the job's own length
        assert time.monotonic() - started < 1.0 + 4.0, d.text()
        # The job itself is cancelled when the drain ends (it checks between resampling batches,
        # tests/test_compare_cancel.py); one that does not stop in time is left behind, and
        # either way without a traceback.
        assert "Traceback" not in d.text(), d.text()
    finally:
        d.kill()
