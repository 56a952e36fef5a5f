"""Themis 1.x stores damaged while they are served, through a real daemon process.

Each case damages one run of a served copy of a real store, then checks, over HTTP: the
other runs are still served exactly as before, the damaged run says what is wrong (its
`error`, or its `warnings`), the daemon keeps answering, the run recovers without a restart
once the damage is repaired, and nothing was written into the store.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import GZIP, PLAIN, copy_store
from test_ops import Daemon

RUNS = os.path.join("experiments", "default", "runs")
VOLATILE = ("stalled", "updated_at", "last_update")  # clock-dependent fields of a summary


def http(daemon, path, headers=None, timeout=30):
    req = urllib.request.Request(daemon.url(path), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def summaries(daemon):
    status, _, body = http(daemon, "/api/runs")
    assert status == 200, body
    return {r["run_id"]: r for r in body}


def stable(summary):
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def reports_problem(summary):
    return bool(summary.get("error")) or bool(summary.get("warnings"))


def metrics_text(daemon):
    with urllib.request.urlopen(daemon.url("/metrics"), timeout=30) as resp:
        return resp.read().decode()


def polls_done(daemon):
    for line in metrics_text(daemon).splitlines():
        if line.startswith("themis_poll_duration_seconds_count"):
            return float(line.split()[-1])
    return 0.0


def after_polls(daemon, n=3):
    """Let the daemon poll a few more times (an event to wait for, not a fixed delay)."""
    start = polls_done(daemon)
    until(lambda: polls_done(daemon) >= start + n, what=f"{n} more polls")


def until(pred, timeout=60.0, what="condition"):
    """Wait for the daemon's next polls to reach a state (bounded, generous for loaded CI)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s (last: {last!r})")


def tree_bytes(root):
    """Every file's bytes (mtimes move when a test repairs a file, bytes must not)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                out[os.path.relpath(path, root)] = "special"
                continue
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


class Served:
    """A copy of a store, served by a daemon child process polling fast."""

    def __init__(self, tmp_path, source, env=None, prefix=()):
        self.root = copy_store(source, str(tmp_path / "store"))
        self.pristine = tree_bytes(self.root)
        self.daemon = Daemon("--storage", self.root, "--poll-interval", "0.1",
                             env={"THEMIS_STORAGE_CACHE_DIR": str(tmp_path / "cache"), **(env or {})},
                             prefix=prefix)
        self.baseline = until(lambda: self._complete(), what="first complete list")

    def _complete(self):
        try:
            runs = summaries(self.daemon)
        except (OSError, AssertionError):
            return None
        return runs if runs and all(not reports_problem(r) for r in runs.values()) else None

    def run_dir(self, name):
        return os.path.join(self.root, RUNS, name)

    def others_unchanged(self, damaged):
        now = summaries(self.daemon)
        for run_id, before in self.baseline.items():
            if run_id == damaged:
                continue
            assert run_id in now, f"{run_id} vanished"
            assert stable(now[run_id]) == stable(before), run_id
        assert http(self.daemon, "/healthz", timeout=5)[0] == 200
        return now

    def recovered(self, run_id):
        def ok():
            now = summaries(self.daemon)
            run = now.get(run_id)
            return run is not None and not reports_problem(run) and stable(run) == stable(self.baseline[run_id])
        until(ok, what=f"recovery of {run_id}")
        status, _, detail = http(self.daemon, f"/api/runs/{run_id}")
        assert status == 200 and detail["run_id"] == run_id

    def untouched(self):
        assert tree_bytes(self.root) == self.pristine, "the store's files changed"

    def close(self):
        self.daemon.kill()


@pytest.fixture
def served(tmp_path):
    made = []

    def make(source=PLAIN, **kw):
        s = Served(tmp_path, source, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def damaged_run(served_store, name, problem_check=reports_problem):
    def flagged():
        run = summaries(served_store.daemon).get(name)
        return run if run is not None and problem_check(run) else None
    return until(flagged, what=f"{name} reporting a problem")


# ------------------------------------------------------------------------------ the cases

def test_invalid_json_line_is_counted_and_visible(served):
    s = served()
    path = os.path.join(s.run_dir("fake-direct"), "evaluations", "default", "evaluation.jsonl")
    with open(path, "rb") as fh:
        original = fh.read()
    lines = original.splitlines(keepends=True)
    lines[3] = b'{"this is": not json}\n'
    with open(path, "wb") as fh:
        fh.writelines(lines)
    run = damaged_run(s, "fake-direct")
    text = json.dumps(run.get("warnings")) + str(run.get("error"))
    assert "line" in text  # says which kind of problem: a skipped line
    s.others_unchanged("fake-direct")
    assert "themis_storage_invalid_lines" in metrics_text(s.daemon)
    with open(path, "wb") as fh:
        fh.write(original)
    s.recovered("fake-direct")
    s.untouched()


def test_invalid_metadata_is_an_error_not_a_stale_status(served):
    s = served()
    path = os.path.join(s.run_dir("fake-live"), "metadata.json")
    with open(path, "rb") as fh:
        original = fh.read()
    with open(path, "wb") as fh:
        fh.write(original[: len(original) // 2] + b"#garbage#")
    run = damaged_run(s, "fake-live")  # an error, or a warning next to the last good status
    assert "metadata" in json.dumps(run.get("warnings")) + str(run.get("error"))
    s.others_unchanged("fake-live")
    with open(path, "wb") as fh:
        fh.write(original)
    s.recovered("fake-live")
    s.untouched()


def test_invalid_metadata_at_start_up_lists_the_run_with_its_error(served, tmp_path):
    src = copy_store(PLAIN, str(tmp_path / "src"))
    path = os.path.join(src, RUNS, "fake-terse", "metadata.json")
    with open(path, "rb") as fh:
        original = fh.read()
    with open(path, "wb") as fh:
        fh.write(b"{not json")
    daemon = Daemon("--storage", src, "--poll-interval", "0.1",
                    env={"THEMIS_STORAGE_CACHE_DIR": str(tmp_path / "cache")})
    try:
        run = until(lambda: summaries(daemon).get("fake-terse"), what="fake-terse listed")
        assert run["error"] and "metadata" in run["error"]
        status, _, body = http(daemon, "/api/runs/fake-terse")
        assert status == 200 and body["error"]
        with open(path, "wb") as fh:
            fh.write(original)
        until(lambda: not (summaries(daemon).get("fake-terse") or {"error": 1})["error"], what="recovery")
    finally:
        daemon.kill()


def test_fifo_in_place_of_records_never_freezes_the_daemon(served):
    s = served()
    path = os.path.join(s.run_dir("fake-swapped"), "generation", "records.jsonl")
    saved = path + ".saved"
    os.rename(path, saved)
    os.mkfifo(path)
    try:
        run = damaged_run(s, "fake-swapped", lambda r: bool(r.get("error")))
        assert "regular file" in run["error"] or "not a file" in run["error"]
        s.others_unchanged("fake-swapped")
        status, _, body = http(s.daemon, "/api/runs/fake-swapped", timeout=30)
        assert status in (200, 503), body
        assert http(s.daemon, "/readyz", timeout=5)[0] in (200, 503)
    finally:
        os.unlink(path)
        os.rename(saved, path)
    s.recovered("fake-swapped")
    s.untouched()


def test_symlink_leading_outside_the_root_is_not_followed(served, tmp_path):
    s = served()
    secret = tmp_path / "outside.jsonl"
    secret.write_text('{"secret": "do-not-serve-me"}\n')
    path = os.path.join(s.run_dir("fake-terse"), "generation", "records.jsonl")
    saved = path + ".saved"
    os.rename(path, saved)
    os.symlink(str(secret), path)
    try:
        run = damaged_run(s, "fake-terse", lambda r: bool(r.get("error")))
        assert "outside" in run["error"]
        status, _, body = http(s.daemon, "/api/runs/fake-terse")
        assert "do-not-serve-me" not in json.dumps(body)
        s.others_unchanged("fake-terse")
    finally:
        os.unlink(path)
        os.rename(saved, path)
    s.recovered("fake-terse")
    s.untouched()


def test_symlink_inside_the_root_is_followed(served):
    s = served()
    run_dir = s.run_dir("fake-terse")
    path = os.path.join(run_dir, "generation", "records.jsonl")
    moved = os.path.join(s.root, "records-elsewhere.jsonl")
    os.rename(path, moved)
    os.symlink(moved, path)
    # still the same run, read through a link that stays inside the root
    after_polls(s.daemon)
    assert stable(summaries(s.daemon)["fake-terse"]) == stable(s.baseline["fake-terse"])


def _unprivileged_prefix():
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permission bits would not apply")
    # root without the capabilities that bypass file permission bits
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


def test_unreadable_file_is_an_error_in_the_list_and_the_detail(served):
    s = served(prefix=_unprivileged_prefix())
    path = os.path.join(s.run_dir("fake-direct"), "generation", "records.jsonl")
    os.chmod(path, 0)
    try:
        run = damaged_run(s, "fake-direct", lambda r: bool(r.get("error")))
        assert "ermission" in run["error"]
        status, _, body = http(s.daemon, "/api/runs/fake-direct")
        assert status == 200 and body["error"], body  # the same answer as the list, not a 500
        s.others_unchanged("fake-direct")
    finally:
        os.chmod(path, 0o644)
    s.recovered("fake-direct")
    s.untouched()


def test_truncated_gzip_member_waits_then_completes(served):
    s = served(source=GZIP)
    run_id = next(r for r in s.baseline if r.endswith("live"))
    gen = os.path.join(s.run_dir(run_id), "generation")
    name = next(n for n in os.listdir(gen) if n.startswith("records"))
    path = os.path.join(gen, name)
    extra = gzip.compress(b'{"torn": "member"}\n')
    with open(path, "ab") as fh:
        fh.write(extra[: len(extra) // 2])
    after_polls(s.daemon)  # several polls see the torn member
    now = s.others_unchanged(run_id)
    assert not reports_problem(now[run_id])  # a member being written is not damage
    with open(path, "rb+") as fh:
        fh.seek(-(len(extra) // 2), os.SEEK_END)
        fh.truncate()
    s.recovered(run_id)
    s.untouched()


def test_vanished_and_returning_run_gets_a_newer_version(served, tmp_path):
    """A run whose metadata disappears and comes back changed is never served from the
    cache of its earlier life (its version keeps moving forward)."""
    s = served()
    status, headers, first = http(s.daemon, "/api/runs/fake-direct")
    assert status == 200 and len(first["samples"]) > 2
    etag = headers.get("Etag") or headers.get("ETag")
    run_dir = s.run_dir("fake-direct")
    away = str(tmp_path / "away")
    meta = os.path.join(run_dir, "metadata.json")
    os.rename(meta, away)
    until(lambda: "fake-direct" not in summaries(s.daemon), what="run gone")
    assert http(s.daemon, "/api/runs/fake-direct")[0] == 404
    s.others_unchanged("fake-direct")
    evaluation = os.path.join(run_dir, "evaluations", "default", "evaluation.jsonl")
    with open(evaluation, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    with open(evaluation, "wb") as fh:  # it comes back with fewer evaluated samples
        fh.writelines(lines[: len(lines) // 2])
    os.rename(away, meta)
    back = until(lambda: summaries(s.daemon).get("fake-direct"), what="run back")
    until(lambda: summaries(s.daemon)["fake-direct"]["num_samples"] < len(first["samples"]), what="new content")
    back = summaries(s.daemon)["fake-direct"]
    status, headers2, again = http(s.daemon, "/api/runs/fake-direct")
    assert status == 200
    assert len(again["samples"]) == back["num_samples"] < len(first["samples"])
    assert (headers2.get("Etag") or headers2.get("ETag")) != etag


def test_huge_line_is_capped_and_reported(served):
    s = served(env={"THEMIS_STORAGE_MAX_LINE_BYTES": "1000000"})
    path = os.path.join(s.run_dir("fake-live"), "generation", "records.jsonl")
    with open(path, "rb") as fh:
        original = fh.read()
    with open(path, "ab") as fh:
        fh.write(b'{"output": "' + b"x" * 5_000_000 + b'"}\n')
    run = damaged_run(s, "fake-live")
    assert "max_line_bytes" in json.dumps(run.get("warnings")) + str(run.get("error"))
    s.others_unchanged("fake-live")
    with open(path, "wb") as fh:
        fh.write(original)
    s.recovered("fake-live")
    s.untouched()


def test_lines_with_fields_of_the_wrong_type_stay_in_that_run(served):
    """`"scores": 5` or an object as `sample_id` once stopped the refresh of the whole store."""
    s = served()
    path = os.path.join(s.run_dir("fake-direct"), "evaluations", "default", "evaluation.jsonl")
    with open(path, "rb") as fh:
        original = fh.read()
    lines = original.splitlines(keepends=True)
    first, second = json.loads(lines[2]), json.loads(lines[3])
    first["evaluation"]["scores"] = 5
    second["evaluation"]["sample_id"] = {"not": "an id"}
    lines[2] = (json.dumps(first) + "\n").encode()
    lines[3] = (json.dumps(second) + "\n").encode()
    with open(path, "wb") as fh:
        fh.writelines(lines)
    run = damaged_run(s, "fake-direct")
    assert "2 invalid lines" in json.dumps(run.get("warnings")) + str(run.get("error"))
    s.others_unchanged("fake-direct")
    with open(path, "wb") as fh:
        fh.write(original)
    s.recovered("fake-direct")
    s.untouched()
