"""The access log: polled read endpoints stay quiet at INFO unless `logging.access_log: all`."""

from __future__ import annotations

import logging

import pytest


def access_lines(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "tornado.access" and r.levelno == level]


async def get(http_client, url):
    return await http_client.fetch(url, raise_error=False)


@pytest.mark.gen_test
async def test_successful_polls_are_debug_and_the_rest_info_or_worse(http_client, base_url, caplog):
    caplog.set_level(logging.DEBUG, logger="tornado.access")
    for path in ("/api/runs", "/api/runs/fake-direct", "/", "/healthz"):
        assert (await get(http_client, base_url + path)).code == 200
    resp = await http_client.fetch(base_url + "/api/runs", raise_error=False)
    etag = resp.headers["ETag"]
    resp = await http_client.fetch(base_url + "/api/runs", headers={"If-None-Match": etag}, raise_error=False)
    assert resp.code == 304
    assert (await get(http_client, base_url + "/api/runs/no-such-run")).code == 404
    assert (await get(http_client, base_url + "/openapi.json")).code == 200
    debug, info, warning = (access_lines(caplog, lvl) for lvl in (logging.DEBUG, logging.INFO, logging.WARNING))
    assert sum(" GET /api/runs " in m for m in debug) == 3  # two 200s and the 304
    assert any(m.startswith("304 GET /api/runs ") for m in debug)
    assert any(" GET /api/runs/fake-direct " in m for m in debug)
    assert not any("/api/runs" in m for m in info)
    assert any(m.startswith("404 GET /api/runs/no-such-run") for m in warning)
    assert any(m.startswith("200 GET /openapi.json") for m in info)


@pytest.mark.gen_test
async def test_quiet_polls_cost_no_log_record_at_info(http_client, base_url, caplog):
    caplog.set_level(logging.INFO, logger="tornado.access")
    assert (await get(http_client, base_url + "/api/runs")).code == 200
    assert not [r for r in caplog.records if r.name == "tornado.access"]


class TestAll:
    @pytest.fixture
    def app_settings(self):
        return {"poll_interval": 0.05, "logging": {"access_log": "all"}}

    @pytest.mark.gen_test
    async def test_all_logs_every_request_at_info(self, http_client, base_url, caplog):
        caplog.set_level(logging.INFO, logger="tornado.access")
        assert (await get(http_client, base_url + "/api/runs")).code == 200
        assert any(m.startswith("200 GET /api/runs ") for m in access_lines(caplog, logging.INFO))
