"""`themis-daemon status` and `check-config`: the real CLI against a real daemon on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pexpect
import pytest

from conftest import DATA
from helpers import end_process
from test_cli import REPO, Daemon, run_cli

PY = sys.executable
KEY = "s3cret-status-key"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


def v4_copy(tmp_path) -> str:
    target = tmp_path / "themis.sqlite3"
    shutil.copyfile(os.path.join(DATA, "themis-v4", "sqlite", "themis.sqlite3"), target)
    return str(target)


def wide(**env):
    return {"COLUMNS": "240", "LINES": "80", **env}


@pytest.fixture
def served(plain_store, tmp_path):
    d = Daemon("--storage", plain_store, "--storage", v4_copy(tmp_path), "--poll-interval", "0.2")
    yield d
    d.stop()


def test_status_table_shows_runs_progress_and_means(served):
    res = run_cli("status", "--url", f"http://127.0.0.1:{served.port}", env=wide())
    assert res.returncode == 0, res.stderr
    out = res.stdout
    status, runs = served.get("/api/runs")
    assert status == 200 and len(runs) == 17
    for run in runs:
        shown = run["run_id"][:12] if len(run["run_id"]) == 64 else run["run_id"]
        assert shown in out
    line = next(ln for ln in out.splitlines() if "fake-live" in ln)
    # The "Samples" figure is the one the progress counts: 14 of 20 generated, 70 %.
    assert "14/20" in line and "70.0%" in line
    assert "ExactMatch 1" in line and "ResponseLength 1.7" in line
    done = next(ln for ln in out.splitlines() if "fake-direct" in ln)
    assert "completed" in done and "20/20" in done and "ExactMatch 0.9" in done
    assert "17 runs" in out


def test_status_fits_a_narrow_terminal(served):
    res = run_cli("status", "--url", f"http://127.0.0.1:{served.port}", env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.rstrip("\n").splitlines()
    assert max(len(ln.rstrip()) for ln in lines) <= 80, res.stdout
    line = next(ln for ln in lines if "fake-live" in ln)
    assert "14/20" in line and "70.0%" in line  # the figures survive, less useful columns go


def test_status_json_is_the_api_list(served):
    res = run_cli("status", "--json", "--url", f"127.0.0.1:{served.port}")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == served.get("/api/runs")[1]


def test_status_errors_are_one_line_with_exit_codes(plain_store):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = run_cli("status", "--url", f"http://127.0.0.1:{port}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and "connection refused" in lines[0], res.stderr
    res = run_cli("status", "--url", "ftp://127.0.0.1:1")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1

    d = Daemon("--storage", plain_store, env={"THEMIS_AUTH_API_KEYS": KEY})
    try:
        url = f"http://127.0.0.1:{d.port}"
        env = {"THEMIS_AUTH_API_KEYS": ""}
        res = run_cli("status", "--url", url, env=env)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 3 and len(lines) == 1 and "--api-key" in lines[0] and "Traceback" not in res.stderr
        res = run_cli("status", "--url", url, "--api-key", "wrong-key-123", env=env)
        assert res.returncode == 3 and "refused" in res.stderr
        res = run_cli("status", "--url", url, "--json", env={"THEMIS_API_KEY": KEY})
        assert res.returncode == 0 and len(json.loads(res.stdout)) == 5
        res = run_cli("status", "--url", url, "--json", "--api-key", KEY)
        assert res.returncode == 0 and len(json.loads(res.stdout)) == 5
        # the WebSocket refuses a missing key too: --watch says so and stops
        res = run_cli("status", "--watch", "--url", url, "--api-key", KEY + "x")
        assert res.returncode == 3 and "Traceback" not in res.stderr
    finally:
        d.stop()


def _read_until(child, predicate, timeout, buf):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            buf.append(child.read_nonblocking(1 << 16, timeout=1))
        except pexpect.TIMEOUT:
            pass
        text = ANSI.sub("", "".join(buf))
        if predicate(text):
            return text
    raise AssertionError("condition not met; output tail:\n" + ANSI.sub("", "".join(buf))[-4000:])


def test_status_watch_follows_a_live_demo_run_under_a_terminal():
    d = Daemon("--demo", "--poll-interval", "0.2")
    child = None
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm-256color"}
        env.pop("COLUMNS", None)
        child = pexpect.spawn(PY, ["-m", "themis_daemon", "status", "--watch", "--url", f"http://127.0.0.1:{d.port}"],
                              cwd=REPO, env=env, dimensions=(100, 230), encoding="utf-8", timeout=60)
        buf = []
        row = re.compile(r"(demo-\d{8}-\d{6}-\d+)\s*│[^\n]*?in_progress[^\n]*?(\d+)/(\d+)")
        _read_until(child, lambda t: "watching, Ctrl-C to quit" in t and row.search(t), 60, buf)

        def progressed(text):
            seen = {}
            for m in row.finditer(text):
                seen.setdefault(m.group(1), set()).add(int(m.group(2)))
            return any(len(v) >= 3 for v in seen.values())

        # the table is redrawn from /ws events while the demo writer adds samples
        text = _read_until(child, progressed, 90, buf)
        assert "━" in text  # the progress bar of a live run
        assert "Traceback" not in text
        child.sendintr()
        child.expect(pexpect.EOF, timeout=30)
        child.close()
        assert child.exitstatus == 130, (child.exitstatus, child.signalstatus)
        assert "Traceback" not in ANSI.sub("", child.before or "")
    finally:
        if child is not None and child.isalive():
            child.terminate(force=True)
        assert d.stop() == 0


def test_status_watch_json_prints_events(plain_store):
    d = Daemon("--storage", plain_store, "--poll-interval", "0.2")
    proc = subprocess.Popen([PY, "-m", "themis_daemon", "status", "--watch", "--json", "--url",
                             f"http://127.0.0.1:{d.port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "runs" and len(first["data"]) == 5
        # a new run written into the store arrives as a run_started event
        src = os.path.join(plain_store, "experiments", "default", "runs", "fake-direct")
        shutil.copytree(src, os.path.join(plain_store, "experiments", "default", "runs", "fake-copy"))
        deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < deadline and seen is None:
            event = json.loads(proc.stdout.readline())
            if event.get("run_id") == "fake-copy":
                seen = event
        assert seen and seen["type"] in ("run_started", "run_completed") and seen["data"]["run_id"] == "fake-copy"
    finally:
        end_process(proc, 30, signal.SIGINT)
        d.stop()
    assert proc.returncode == 130 and "Traceback" not in proc.stderr.read()


def test_status_watch_reconnects_after_a_daemon_restart(plain_store):
    d = Daemon("--storage", plain_store, "--poll-interval", "0.2")
    port = d.port
    proc = subprocess.Popen([PY, "-m", "themis_daemon", "status", "--watch", "--json", "--url",
                             f"http://127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    d2 = None
    try:
        assert json.loads(proc.stdout.readline())["type"] == "runs"
        assert d.stop() == 0
        src = os.path.join(plain_store, "experiments", "default", "runs", "fake-direct")
        shutil.copytree(src, os.path.join(plain_store, "experiments", "default", "runs", "while-down"))
        d2 = Daemon("--storage", plain_store, "--poll-interval", "0.2", "--port", str(port))
        # back: the whole list again (with the run written meanwhile), then live events
        deadline = time.monotonic() + 60
        resync = None
        while time.monotonic() < deadline and resync is None:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            event = json.loads(line)
            if event["type"] == "runs":
                resync = event
        assert resync and "while-down" in {r["run_id"] for r in resync["data"]}
        shutil.copytree(src, os.path.join(plain_store, "experiments", "default", "runs", "after-restart"))
        while time.monotonic() < deadline:
            event = json.loads(proc.stdout.readline())
            if event.get("run_id") == "after-restart":
                break
        else:
            raise AssertionError("no event after the reconnect")
    finally:
        end_process(proc, 30, signal.SIGINT)
        if d2 is not None:
            d2.stop()
        d.stop()
    assert proc.returncode == 130, proc.stderr.read()


# ------------------------------------------------------------------------------ check-config

def test_check_config_shows_origins_and_masks_secrets(tmp_path, plain_store):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# rotated monthly\nfile-key-0123456\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server:\n  port: 9001\n  host: 127.0.0.1\nauth:\n  api_keys: [file-key-abcdefgh]\n"
                   f"  api_key_files: [{keyfile}]\nmonitor:\n  poll_interval: 0.5\n")
    env = {"THEMIS_MONITOR_POLL_INTERVAL": "2", "THEMIS_SERVER_PROT": "8081",
           "THEMIS_STORAGE_PASSWORD_FILE": str(keyfile),
           "THEMIS_STORAGE_URL": "postgresql://reader:hunter2pw@db.example:5432/themis"}
    res = run_cli("check-config", "--config", str(cfg), "--storage", plain_store, "--log-level", "debug", env=env)
    assert res.returncode == 0, res.stderr
    rows = {}
    for line in res.stdout.splitlines()[2:]:
        setting, origin, value = re.match(r"(\S+)\s+(default|file \S+|env \S+|flag)\s+(.*)$", line).groups()
        rows[setting] = (origin, json.loads(value))
    assert rows["server.port"] == (f"file {cfg}", 9001)
    assert rows["monitor.poll_interval"] == ("env THEMIS_MONITOR_POLL_INTERVAL", 2.0)
    assert rows["logging.level"] == ("flag", "debug")
    assert rows["storage.path"] == ("flag", plain_store)
    assert rows["server.drain_timeout"] == ("default", 10.0)
    assert rows["auth.api_keys"] == (f"file {cfg}", ["***"])
    assert rows["storage.url"][1] == "postgresql://reader:***@db.example:5432/themis"
    assert "2 API keys in effect" in res.stdout
    for secret in ("file-key-abcdefgh", "file-key-0123456", "hunter2pw"):
        assert secret not in res.stdout + res.stderr
    # the misspelt variable is named, with the setting it was probably meant to be
    assert "THEMIS_SERVER_PROT" in res.stderr and "THEMIS_SERVER_PORT" in res.stderr
    res = run_cli("check-config", "--config", str(cfg), "--storage", plain_store, "--json", env=env)
    doc = json.loads(res.stdout)
    assert doc["valid"] and doc["api_keys"] == 2
    assert {r["setting"]: r["origin"] for r in doc["settings"]}["monitor.poll_interval"] == "env"


@pytest.mark.parametrize("text,env,needle", [
    ("server:\n  prot: 8080\n", {}, "server.prot"),
    ("monitor:\n  poll_interval: fast\n", {}, "monitor.poll_interval"),
    ("server: [\n", {}, "invalid YAML"),
    ("auth:\n  api_key_files: [/nonexistent/keys]\n", {}, "cannot read /nonexistent/keys"),
    ("server:\n  port: 8080\n", {"THEMIS_AUTH_API_KEYS": "key1,key2"}, "at least 8 characters"),
])
def test_check_config_errors_are_one_line_exit_2(tmp_path, plain_store, text, env, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    res = run_cli("check-config", "--config", str(cfg), "--storage", plain_store, env=env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert res.stdout == ""
    assert "key1" not in res.stderr


def test_check_config_refuses_an_unusable_store(tmp_path):
    res = run_cli("check-config", "--storage", str(tmp_path / "missing"))
    assert res.returncode == 2 and "not found" in res.stderr and len(res.stderr.strip().splitlines()) == 1
