"""The real process: command line, configuration errors, start-up, shutdown, packaging."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import DATA, copy_store, snapshot_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def run_cli(*args, env=None, timeout=30):
    return subprocess.run([PY, "-m", "themis_daemon", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


class Daemon:
    """A `themis-daemon serve` child process on a free loopback port."""

    def __init__(self, *args, env=None, cwd=REPO):
        self.proc = subprocess.Popen(
            [PY, "-m", "themis_daemon", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.port = None
        self.lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        assert self.port, "daemon did not start: " + "".join(self.lines)

    def get(self, path, headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


def test_help_is_useful():
    res = run_cli("--help")
    assert res.returncode == 0 and "serve" in res.stdout
    res = run_cli("serve", "--help")
    assert res.returncode == 0
    for flag in ("--port", "--host", "--storage", "--reload", "--config", "--log-level", "--poll-interval", "--demo"):
        assert flag in res.stdout


@pytest.mark.parametrize("text,needle", [
    ("server:\n  port: 99999\n", "server.port"),
    ("server:\n  prot: 8080\n", "server.prot"),
    ("monitor:\n  poll_interval: fast\n", "monitor.poll_interval"),
    ("loging: {}\n", "loging"),
    ("server: [\n", "invalid YAML"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res = run_cli("serve", "--config", str(cfg))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr


def test_missing_config_file_and_bad_env(tmp_path):
    res = run_cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "not found" in res.stderr
    res = run_cli("serve", env={"THEMIS_SERVER_PORT": "eighty"})
    assert res.returncode == 2 and "THEMIS_SERVER_PORT" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_serve_answers_and_stops_cleanly(plain_store, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("monitor:\n  poll_interval: 0.2\nbenchmarks: [alpha, beta]\n")
    before = snapshot_tree(plain_store)
    d = Daemon("--storage", plain_store, "--config", str(cfg))
    try:
        assert d.get("/")[0] == 200
        status, runs = d.get("/api/runs")
        assert status == 200 and len(runs) == 5
        assert d.get("/api/benchmarks") == (200, {"benchmarks": ["alpha", "beta"]})
        status, ready = d.get("/readyz")
        assert status == 200 and ready["status"] == "ready"
    finally:
        code = d.stop()
    assert code == 0
    assert snapshot_tree(plain_store) == before


def test_env_and_flags_layering(plain_store, gzip_store, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage:\n  path: {gzip_store}\n")
    # the file says gzip_store, the environment says plain_store: the environment wins
    d = Daemon("--config", str(cfg), env={"THEMIS_STORAGE_PATH": plain_store})
    try:
        assert {r["run_id"] for r in d.get("/api/runs")[1]} >= {"fake-direct"}
    finally:
        d.stop()
    # ...and the flag wins over both
    d = Daemon("--config", str(cfg), "--storage", gzip_store, env={"THEMIS_STORAGE_PATH": plain_store})
    try:
        assert {r["run_id"] for r in d.get("/api/runs")[1]} == {"gz-direct", "gz-swapped", "gz-live"}
    finally:
        d.stop()


def test_port_in_use_is_one_clear_line(plain_store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), "--storage", plain_store)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "already in use" in lines[0] and "Traceback" not in res.stderr


def _one_line_exit_2(res, *needles):
    lines = [ln for ln in res.stderr.strip().splitlines() if ln]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_missing_storage_root_is_clear(tmp_path):
    missing = str(tmp_path / "nowhere")
    res = run_cli("serve", "--port", "0", "--storage", missing)
    _one_line_exit_2(res, missing, "not found", "expected a Themis 1.x storage root")


def test_storage_that_is_no_store_is_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", str(text)), str(text), "not an SQLite database")
    foreign = tmp_path / "other.sqlite3"
    import sqlite3

    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    before = foreign.read_bytes()
    _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", str(foreign)), str(foreign),
                     "without the Themis 4 tables", "run_events")
    assert foreign.read_bytes() == before  # opened read-only, nothing created
    folder = tmp_path / "folder"
    (folder / "stuff").mkdir(parents=True)
    _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", str(folder)), str(folder),
                     "neither experiments/ nor runs/")
    # with several sources, the bad one is named
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", str(empty), "--storage", str(text)),
                     str(text))


def test_demo_mode_serves_bundled_store():
    d = Daemon("--demo", "--poll-interval", "0.2")
    try:
        status, runs = d.get("/api/runs")
        ids = {r["run_id"] for r in runs}
        assert status == 200 and {"gz-direct", "fake-direct"} <= ids
        # the demo writer adds a live run that moves
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            live = [r for r in d.get("/api/runs")[1] if r["run_id"].startswith("demo-")]
            if live:
                seen.append(live[0]["generated"])
                if len(set(seen)) >= 2:
                    break
            time.sleep(0.3)
        assert len(set(seen)) >= 2, seen
        # ... next to the Themis 4 store, whose demo writer adds live Themis 4 runs
        status, runs = d.get("/api/runs")
        formats = {r["format"] for r in runs}
        assert formats == {"themis-v1", "themis-v4"}
        fixture_v4 = {r["run_id"] for r in runs if r["source"] == "demo-themis4"}
        assert len(fixture_v4) >= 12
        moving = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = d.get("/api/runs")[1]
            new = [r for r in runs if r["format"] == "themis-v4" and r["run_id"] not in fixture_v4]
            if new:
                moving.append((new[0]["run_id"], new[0]["status"], new[0]["generated"]))
                if len({m[1:] for m in moving if m[0] == new[0]["run_id"]}) >= 3:
                    break
            time.sleep(0.2)
        assert len({m[1:] for m in moving if moving and m[0] == moving[-1][0]}) >= 3, moving
    finally:
        assert d.stop() == 0


def test_non_editable_install_finds_schemas_and_demo_store(tmp_path):
    wheel_dir = tmp_path / "wheel"
    res = subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), REPO],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    wheel = next(wheel_dir.glob("themis_daemon-*.whl"))
    target = tmp_path / "site"
    res = subprocess.run([PY, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    probe = (
        "import themis_daemon, json; from themis_daemon.validation import schema_dir, load_schema; "
        "from themis_daemon.demo import bundled_stores, bundled_v4_sqlite; "
        "from themis_daemon.storage import open_sources; "
        "src = open_sources([bundled_v4_sqlite()]); src.refresh(); assert len(src.run_ids()) == 12; "
        "import themis_daemon.storage.themis4.jsonl, themis_daemon.storage.themis4.postgres; "
        "print(json.dumps([themis_daemon.__file__, schema_dir(), sorted(load_schema('config')['properties']), bundled_stores()]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    res = subprocess.run([PY, "-c", probe], capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    mod_file, schemas, sections, stores = json.loads(res.stdout)
    assert mod_file.startswith(str(target)) and schemas.startswith(str(target))
    assert "server" in sections and all(s.startswith(str(target)) for s in stores)
    for name in ("config", "ws_client_message", "compare_request"):
        assert (target / "themis_daemon" / "schemas" / f"{name}.schema.json").is_file()
    assert (target / "themis_daemon" / "demo" / "stores" / "themis-v1-gzip" / "experiments" / "default" / "runs"
            / "gz-direct" / "generation" / "records.jsonl.gz").is_file()


def test_cors_credentials_with_any_origin_is_refused(tmp_path, plain_store):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cors:\n  allow_credentials: true\n  allow_origins: ['*']\n")
    _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", plain_store, "--config", str(cfg)),
                     "cors.allow_credentials", "allow_origins")
    from themis_daemon.config import ConfigError, load_settings

    cfg.write_text("cors:\n  allow_credentials: true\n  allow_origins: ['https://lab.example']\n")
    assert load_settings(str(cfg), environ={}).cors.allow_credentials is True
    with pytest.raises(ConfigError):
        load_settings(None, environ={"THEMIS_CORS_ALLOW_CREDENTIALS": "true"})


def test_empty_config_file_is_refused(tmp_path, plain_store):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("# nothing here\n")
    _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", plain_store, "--config", str(cfg)),
                     str(cfg), "empty")


# ------------------------------------------------------------------------------ small frictions

def test_serve_help_names_each_default_once():
    res = run_cli("serve", "--help")
    assert res.returncode == 0
    assert "(default: None)" not in res.stdout and "(default: False)" not in res.stdout
    text = " ".join(res.stdout.split())
    assert text.count("(default 127.0.0.1)") == 1 and text.count("(default 8080)") == 1


@pytest.mark.parametrize("entry", ["-m themis_daemon", "-c import sys; from themis_daemon.cli import main; sys.argv[0] = 'themis'; sys.exit(main())"])
def test_bare_command_shows_help_and_exits_2(entry):
    flag, _, rest = entry.partition(" ")
    res = subprocess.run([PY, flag, rest], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert res.returncode == 2
    assert "usage:" in res.stderr and "serve" in res.stderr and "status" in res.stderr and res.stdout == ""


def test_storage_naming_a_file_as_a_folder_says_what_it_is(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    line = _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", str(afile) + "/"), str(afile))
    assert "is a file" in line and "not found" not in line


@pytest.mark.parametrize("inner,what", [
    ("experiments", "the experiments/ folder"),
    ("experiments/default", "one experiment"),
    ("experiments/default/runs", "the runs/ folder of one experiment"),
])
def test_storage_one_level_too_deep_names_the_root(plain_store, inner, what):
    spec = os.path.join(plain_store, inner)
    line = _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", spec), spec, what)
    assert line.endswith(f"--storage {plain_store}")
    # the named root is the one that works
    d = Daemon("--storage", plain_store)
    try:
        assert len(d.get("/api/runs")[1]) == 5
    finally:
        d.stop()


def test_storage_at_the_runs_folder_of_a_jsonl_store_names_the_root(tmp_path):
    root = copy_store(os.path.join(DATA, "themis-v4", "jsonl", "store"), str(tmp_path / "jsonl"))
    spec = os.path.join(root, "runs")
    line = _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", spec), spec, "Themis 4 JSONL")
    assert line.endswith(f"--storage {root}")


def test_short_api_key_error_says_the_minimum_without_the_key():
    res = run_cli("serve", "--port", "0", env={"THEMIS_AUTH_API_KEYS": "key1,key2"})
    line = _one_line_exit_2(res, "THEMIS_AUTH_API_KEYS", "at least 8 characters")
    assert "key1" not in line


def test_api_key_files_are_checked_at_start(tmp_path, plain_store):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"auth:\n  api_key_files: [{tmp_path / 'missing'}]\n")
    _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", plain_store, "--config", str(cfg)),
                     "cannot read", str(tmp_path / "missing"))
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nlong-enough-key-1\nshort\n")
    cfg.write_text(f"auth:\n  api_key_files: [{keys}]\n")
    line = _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", plain_store, "--config", str(cfg)),
                            f"{keys} line 3", "at least 8 characters")
    assert "short" not in line.replace("(this one has 5)", "")
    # systemd's credential file is held to the same rule
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api_keys").write_text("tiny\n")
    _one_line_exit_2(run_cli("serve", "--port", "0", "--storage", plain_store, env={"CREDENTIALS_DIRECTORY": str(creds)}),
                     "api_keys line 1", "at least 8 characters")


def test_readme_examples_of_api_keys_are_accepted():
    from themis_daemon.config import MIN_API_KEY_LENGTH, load_settings

    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    examples = re.findall(r"THEMIS_AUTH_API_KEYS=([^\s`]+)", readme)
    assert examples
    for value in examples:
        settings = load_settings(None, environ={"THEMIS_AUTH_API_KEYS": value})
        assert settings.auth.api_keys and all(len(k) >= MIN_API_KEY_LENGTH for k in settings.auth.api_keys)
    assert f"at least {MIN_API_KEY_LENGTH} characters" in readme


def test_misspelt_environment_variable_is_named_with_the_nearest_setting(plain_store):
    d = Daemon("--storage", plain_store, env={"THEMIS_SERVER_PROT": "9999", "THEMIS_API_KEY": "client-side-key"})
    try:
        text = "".join(d.lines)
        assert "THEMIS_SERVER_PROT" in text and "did you mean THEMIS_SERVER_PORT" in text
        assert "THEMIS_API_KEY " not in text  # the status client's variable is no typo
    finally:
        d.stop()


def test_demo_first_log_line_points_at_the_dashboard(tmp_path):
    d = Daemon("--demo", env={"TMPDIR": str(tmp_path)})
    try:
        first = d.lines[0]
        assert f"http://127.0.0.1:{d.port}/dashboard/" in first, d.lines
        assert urllib.request.urlopen(f"http://127.0.0.1:{d.port}/dashboard/", timeout=10).status == 200
    finally:
        assert d.stop() == 0
    assert not list(tmp_path.glob("themis-demo-*"))


def test_demo_that_cannot_listen_removes_its_temporary_copy(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_cli("serve", "--demo", "--host", "127.0.0.1", "--port", str(port), env={"TMPDIR": str(tmp_path)})
    assert res.returncode == 1 and "already in use" in res.stderr
    assert not list(tmp_path.glob("themis-demo-*")), list(tmp_path.iterdir())


def _bash_blocks(readme):
    return re.findall(r"```bash\n(.*?)```", readme, flags=re.S)


def test_readme_test_command_does_not_replace_the_demos_install():
    """Installing the test extras into the demo's environment replaced its installed package
    (static files included) under the running demo, whose dashboard then answered 404."""
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    blocks = _bash_blocks(readme)
    demo = next(b for b in blocks if "serve --demo" in b)
    tests = next(b for b in blocks if "pytest" in b)

    def installs(block):
        venvs = re.findall(r"python3 -m venv (\S+)", block)
        return venvs, re.findall(r"pip install (.+?)(?:\s*&&|\n|$)", block)

    demo_venvs, demo_pip = installs(demo)
    test_venvs, test_pip = installs(tests)
    assert demo_venvs and test_venvs
    shared = set(demo_venvs) & set(test_venvs)
    if shared:
        # the same environment: the test block must not install again, or install exactly the same
        assert not test_pip or test_pip == demo_pip, (demo_pip, test_pip)
