"""README's "Install on a server", run for real in a scratch root: deploy/install-server.sh
creates the release venv and pip-installs this checkout into <root>/opt/themis-daemon, writes
the config and API key, checks the config with the new release, installs the unit and has
`systemd-analyze verify --root` check it with its real ExecStart; then the installed daemon
serves with the key from the credential file, and an upgrade and a rollback switch releases.
Only what needs a running systemd (systemctl, journalctl) is left out."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import PLAIN, copy_store
from helpers import end_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "deploy", "install-server.sh")
SKIP_COPY = {".git", ".venv", ".venv-test", ".venv-themis4", "build", "dist", "bench", "docs", ".pytest_cache",
             ".benchmarks", "screenshots", "__pycache__", "out"}


def _python_can_make_venvs():
    res = subprocess.run(["python3", "-c", "import venv, ensurepip"], capture_output=True)
    return res.returncode == 0


pytestmark = pytest.mark.skipif(not shutil.which("python3") or not _python_can_make_venvs(),
                                reason="python3 cannot create venvs (Debian package: python3-venv)")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CREDENTIALS_DIRECTORY") and not k.startswith("THEMIS_")}
    env.update(extra)
    return env


def _run(args, env, timeout=900):
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """A checkout copy (the install builds in it), a scratch root holding a store at /srv/themis,
    systemd's own units and /bin/kill (for `verify --root`), and the script's first run."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    shutil.copytree(REPO, src, ignore=lambda d, names: [n for n in names if n in SKIP_COPY or n.endswith(".egg-info")])
    root = base / "root"
    copy_store(PLAIN, str(root / "srv" / "themis"))
    units = "/usr/lib/systemd/system"
    if shutil.which("systemd-analyze") and os.path.exists(os.path.join(units, "sysinit.target")):
        shutil.copytree(units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
        if os.path.exists("/bin/kill"):
            (root / "bin").mkdir(parents=True)
            shutil.copy2("/bin/kill", root / "bin" / "kill")
    script = str(src / "deploy" / "install-server.sh")
    res = _run([script], _clean_env(ROOT=str(root)))
    return {"src": src, "root": root, "script": script, "first": res}


def test_install_into_a_scratch_root(staged):
    res, root = staged["first"], staged["root"]
    assert res.returncode == 0, res.stdout + res.stderr
    current = root / "opt" / "themis-daemon" / "current"
    release = os.readlink(current)
    assert re.fullmatch(r"releases/\d{8}T\d{6}Z-[\w.]+", release), release
    exe = root / "opt" / "themis-daemon" / "current" / "bin" / "themis-daemon"
    assert os.access(exe, os.X_OK)
    # The unit runs exactly that program, and systemd-analyze found it below the root.
    unit = (root / "etc" / "systemd" / "system" / "themis-daemon.service").read_text()
    assert re.search(r"^ExecStart=/opt/themis-daemon/current/bin/themis-daemon serve$", unit, re.M)
    assert "ReadOnlyPaths=-/srv/themis" in unit and "LoadCredential=api_keys:/etc/themis-daemon/api_keys" in unit
    assert not (root / "etc" / "systemd" / "system" / "themis-daemon.service.d").exists()
    if (root / "usr" / "lib" / "systemd" / "system").exists():
        assert "systemd-analyze verify --root=" in res.stdout and "is valid" in res.stdout, res.stdout
    config = (root / "etc" / "themis-daemon" / "config.yaml").read_text()
    assert "path: /srv/themis" in config and "port: 8080" in config
    keys = root / "etc" / "themis-daemon" / "api_keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    key = keys.read_text().strip()
    assert len(key) >= 32 and "\n" not in key
    assert "configuration checked" in res.stdout
    # the release is this checkout's code, not the development tree
    version = re.search(r'__version__ = "([^"]+)"', (staged["src"] / "themis_daemon" / "__init__.py").read_text()).group(1)
    out = _run([str(exe), "--version"], _clean_env())
    assert out.stdout.strip() == f"themis-daemon {version}"


def _get(url, key=None):
    req = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_installed_daemon_serves_with_the_credential_key(staged):
    root = staged["root"]
    assert staged["first"].returncode == 0
    exe = str(root / "opt" / "themis-daemon" / "current" / "bin" / "themis-daemon")
    etc = root / "etc" / "themis-daemon"
    # As the unit runs it: THEMIS_CONFIG, the key in $CREDENTIALS_DIRECTORY/api_keys; the store is
    # the staged /srv/themis and the port a free one.
    env = _clean_env(THEMIS_CONFIG=str(etc / "config.yaml"), CREDENTIALS_DIRECTORY=str(etc), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([exe, "serve", "--port", "0", "--storage", str(root / "srv" / "themis")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=str(root))
    try:
        port = None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline and port is None:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            port = m and int(m.group(1))
        assert port, "".join(lines)
        base = f"http://127.0.0.1:{port}"
        assert _get(base + "/api/runs")[0] == 401
        key = (etc / "api_keys").read_text().strip()
        status, runs = _get(base + "/api/runs", key)
        assert status == 200 and len(runs) == 5
        # `themis-daemon status` of the release, with the same key
        res = _run([exe, "status", "--json", "--url", base], _clean_env(THEMIS_API_KEY=key))
        assert res.returncode == 0 and len(json.loads(res.stdout)) == 5
    finally:
        end_process(proc, 20)
    assert proc.returncode == 0


def test_upgrade_checks_the_config_first_then_rollback_switches_back(staged):
    root, script = staged["root"], staged["script"]
    assert staged["first"].returncode == 0
    current = root / "opt" / "themis-daemon" / "current"
    etc = root / "etc" / "themis-daemon"
    first = os.readlink(current)
    good = (etc / "config.yaml").read_text()
    key = (etc / "api_keys").read_text()
    # A config the new release refuses: nothing is switched.
    (etc / "config.yaml").write_text(good + "server:\n  prot: 8080\n")
    time.sleep(1.1)  # release names carry the time to the second
    res = _run([script], _clean_env(ROOT=str(root)))
    assert res.returncode != 0 and "server.prot" in res.stderr and "nothing was switched" in res.stderr
    assert os.readlink(current) == first
    assert os.listdir(root / "opt" / "themis-daemon" / "releases") == [first.split("/")[1]]
    # The store moved elsewhere: the upgrade writes the ReadOnlyPaths= drop-in for it.
    copy_store(PLAIN, str(root / "data" / "evals"))
    (etc / "config.yaml").write_text(good.replace("path: /srv/themis", "path: /data/evals"))
    time.sleep(1.1)
    res = _run([script], _clean_env(ROOT=str(root)))
    assert res.returncode == 0, res.stdout + res.stderr
    second = os.readlink(current)
    assert second != first and second > first
    assert "path: /data/evals" in (etc / "config.yaml").read_text() and (etc / "api_keys").read_text() == key
    dropin = (root / "etc" / "systemd" / "system" / "themis-daemon.service.d" / "storage.conf").read_text()
    assert "ReadOnlyPaths=\nReadOnlyPaths=-/data/evals\n" in dropin
    assert (root / "opt" / "themis-daemon" / first).is_dir()  # the old release stays, for a rollback
    res = _run([script, "--rollback"], _clean_env(ROOT=str(root)))
    assert res.returncode == 0, res.stderr
    assert os.readlink(current) == first and "systemctl restart themis-daemon" in res.stdout
    res = _run([script, "--rollback"], _clean_env(ROOT=str(root)))
    assert res.returncode == 1 and "no release before" in res.stderr
    assert os.readlink(current) == first


def test_readme_install_section_uses_the_script_and_the_units_path():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = readme.split("### Install on a server", 1)[1].split("\n### ", 1)[0]
    for needle in ("deploy/install-server.sh", "apt-get install", "python3-venv", "/opt/themis-daemon",
                   "/etc/themis-daemon/config.yaml", "LoadCredential", "ReadOnlyPaths=", "journalctl -u themis-daemon",
                   "--rollback", "systemctl enable --now themis-daemon", "check-config"):
        assert needle in section, needle
