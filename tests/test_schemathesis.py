"""schemathesis against a live daemon's /openapi.json: every check, examples, coverage, fuzzing and
stateful phases, with a fixed seed; no server errors, no answer that contradicts the document."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading

import pytest

from conftest import DATA, PLAIN, copy_store

pytest.importorskip("schemathesis")

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "schemathesis-key-0001"
EXAMPLES_PER_OPERATION = 25  # about 700 requests per run; well under a minute on a loaded 2-core VM


class LiveDaemon:
    """`python -m themis_daemon serve` on an ephemeral loopback port."""

    def __init__(self, storages: list, env: dict):
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", "0",
             *[a for path in storages for a in ("--storage", path)], "--poll-interval", "0.5", "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        found = threading.Event()
        self.url = None

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line)
                match = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line)
                if match and self.url is None:
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(60):
            self.stop()
            raise RuntimeError("daemon did not start:\n" + "".join(self.lines))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.mark.parametrize("keyed", [False, True], ids=["open-themis1", "api-key-themis1-and-4"])
def test_schemathesis_finds_nothing(tmp_path, keyed):
    stores = [copy_store(PLAIN, str(tmp_path / "store"))]
    if keyed:  # Themis 4 runs too: their summaries and details must match the same schemas
        stores.append(str(tmp_path / "themis.sqlite3"))
        shutil.copyfile(os.path.join(DATA, "themis-v4", "sqlite", "themis.sqlite3"), stores[-1])
    daemon = LiveDaemon(stores, {"THEMIS_AUTH_API_KEYS": KEY} if keyed else {})
    try:
        argv = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
                "--config-file", os.path.join(HERE, "schemathesis.toml"), "--no-color",
                "run", daemon.url + "/openapi.json", "--checks", "all",
                "--phases", "examples,coverage,fuzzing,stateful",
                "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "12", "--workers", "1",
                "--generation-database", "none", "--request-timeout", "60",
                # A WebSocket upgrade cannot be tested by plain HTTP requests (tests/test_ws.py does).
                "--exclude-path", "/ws"]
        if keyed:
            argv += ["--header", f"X-API-Key: {KEY}"]
        run = subprocess.run(argv, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    finally:
        daemon.stop()
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", out)
    assert summary and summary.group(1) == summary.group(2), out[-3000:]
    assert int(summary.group(1)) >= 300, out[-3000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ +{phase}", out), (phase, out[-3000:])
    log = "".join(daemon.lines)
    assert "Traceback" not in log and not re.search(r" 5\d\d (?!DELETE /api/runs/)", log), log[-3000:]
