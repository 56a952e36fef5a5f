"""Shared fixtures: copies of the real Themis stores and a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict

import pytest

from themis_daemon import create_app
from pg_fixtures import *  # noqa: F401,F403  (a real PostgreSQL server for the Themis 4 tests)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PLAIN = os.path.join(DATA, "themis-v1")
GZIP = os.path.join(DATA, "themis-v1-gzip")
PLAIN_EXPECTED = os.path.join(DATA, "themis-v1-expected")
GZIP_EXPECTED = os.path.join(DATA, "themis-v1-gzip-expected")



@pytest.fixture(autouse=True, scope="session")
def _private_storage_cache(tmp_path_factory):
    """Daemons the tests start keep their persistent storage cache here, not in the user's."""
    old = os.environ.get("CACHE_DIRECTORY")
    os.environ["CACHE_DIRECTORY"] = str(tmp_path_factory.mktemp("storage-cache"))
    yield
    if old is None:
        os.environ.pop("CACHE_DIRECTORY", None)
    else:
        os.environ["CACHE_DIRECTORY"] = old


def copy_store(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    for dirpath, _dirs, files in os.walk(dst):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return dst


def snapshot_tree(root: str) -> Dict[str, Any]:
    """Bytes and mtimes of every file and folder: the daemon must leave them untouched."""
    out: Dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        st = os.stat(dirpath)
        out[os.path.relpath(dirpath, root) + "/"] = (st.st_mtime_ns, sorted(dirs), sorted(files))
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size, fh.read())
    return out


def load_expected(folder: str, name: str) -> Dict[str, Any]:
    with open(os.path.join(folder, name), encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture
def plain_store(tmp_path):
    return copy_store(PLAIN, str(tmp_path / "plain"))


@pytest.fixture
def gzip_store(tmp_path):
    return copy_store(GZIP, str(tmp_path / "gzip"))


@pytest.fixture
def store_root(plain_store):
    """The store the `app` fixture serves; override per module to serve another."""
    return plain_store


@pytest.fixture
def app_settings():
    return {"poll_interval": 0.05}


@pytest.fixture
def app(store_root, app_settings):
    application = create_app(store_root, **app_settings)
    yield application
    application.settings["daemon"].close()


@pytest.fixture
def base_url(http_server, http_port):
    """The URL of a real server on 127.0.0.1 serving the `app` fixture."""
    return f"http://127.0.0.1:{http_port}"


@pytest.fixture
def daemon(app):
    return app.settings["daemon"]
