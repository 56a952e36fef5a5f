"""Cached list and detail bodies are gzip-compressed once and served as such to clients that
accept gzip; other clients, ETags and 304s are unaffected."""

from __future__ import annotations

import gzip
import json
from collections import OrderedDict

import pytest

from themis_daemon.web import runs as runs_mod


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/api/runs", "/api/runs/fake-direct"])
async def test_gzip_clients_get_the_same_document_compressed_once(http_client, base_url, path, monkeypatch):
    monkeypatch.setattr(runs_mod._Compressed, "items", OrderedDict())  # bodies other tests compressed
    plain = await http_client.fetch(base_url + path, decompress_response=False)
    assert "Content-Encoding" not in plain.headers
    calls = []
    real = gzip.compress
    monkeypatch.setattr(runs_mod.gzip, "compress", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        resp = await http_client.fetch(base_url + path, headers={"Accept-Encoding": "gzip"},
                                       decompress_response=False)
        assert resp.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in resp.headers["Vary"]
        assert resp.headers["ETag"] == plain.headers["ETag"]
        assert json.loads(gzip.decompress(resp.body)) == json.loads(plain.body)
        assert int(resp.headers["Content-Length"]) == len(resp.body) < len(plain.body)
    assert len(calls) == 1
    resp = await http_client.fetch(base_url + path, raise_error=False, decompress_response=False,
                                   headers={"Accept-Encoding": "gzip", "If-None-Match": plain.headers["ETag"]})
    assert resp.code == 304 and not resp.body
