"""schemathesis against a live daemon's /openapi.json: every check, examples, coverage, fuzzing and
stateful phases, with a fixed seed; no server errors, no answer that contradicts the document."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import DATA, PLAIN, copy_store
from helpers import ServeProcess

pytest.importorskip("schemathesis")

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "schemathesis-key-0001"
EXAMPLES_PER_OPERATION = 25  # about 700 requests per run; well under a minute on a loaded 2-core VM


class LiveDaemon(ServeProcess):
    """A daemon serving every store given, polling every 0.5 s."""

    STOP_WAIT = 20

    def __init__(self, storages: list, env: dict):
        super().__init__(*[a for path in storages for a in ("--storage", path)], "--poll-interval", "0.5",
                         "--log-level", "info", env=env)


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
