"""Helpers several test modules share: a real daemon subprocess, ending a child process, and a
request that keeps error answers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading


class ServeProcess:
    """`python -m themis_daemon serve` on an ephemeral loopback port; the URL comes from its log
    line, and the whole log is kept in `lines` for failure messages."""

    URL_LINE = re.compile(r"serving .* on (http://127\.0\.0\.1:\d+)")
    STOP_WAIT = 10

    def __init__(self, *args: str, env: dict = None):
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        found = threading.Event()
        self.url = None

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line)
                match = self.URL_LINE.search(line)
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
                self.proc.wait(self.STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def end_process(proc: subprocess.Popen, wait: float, sig: int = signal.SIGTERM, kill_wait: float = 5):
    """Send `sig` and return the exit status within `wait` s; a child still running after that is
    killed, so none outlives the test, and the timeout propagates to fail it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(wait)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(kill_wait)


async def fetch(http_client, url, **kw):
    """The response and its body, decoded when it is JSON; error statuses are answers, not raised."""
    kw.setdefault("raise_error", False)
    resp = await http_client.fetch(url, **kw)
    ctype = resp.headers.get("Content-Type", "")
    body = json.loads(resp.body) if resp.body and "json" in ctype else resp.body
    return resp, body


def kill_pool_processes(pool) -> None:
    """SIGKILL every process of a ProcessPoolExecutor and wait until they are gone."""
    for proc in list(pool._processes.values()):
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)


def detail_bodies(sources, run_id, **page):
    """A detail page built in this process and by the detail workers, each encoded as served,
    and the workers' samples (a `jsonutil.Encoded` when they built it)."""
    from themis_daemon import jsonutil

    here, _ = sources.detail_versioned(run_id, **page)
    there, _ = sources.detail_versioned(run_id, encoded=True, **page)
    return jsonutil.dumpb_sliced(here, "samples"), jsonutil.dumpb_sliced(there, "samples"), there["samples"]


def refreshed_with_detail_workers(sources):
    """Refresh `sources` and return its first source; skip where detail workers cannot run (one
    CPU: details are always built in the serving process)."""
    import pytest

    sources.refresh()
    source = sources.sources[0]
    if not source.details.enabled:
        pytest.skip("one CPU: details are always built in this process")
    return source
