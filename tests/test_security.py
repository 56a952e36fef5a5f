"""API keys, CORS, body limits, request ids and /metrics against a real server."""

from __future__ import annotations

import json
import re

import pytest
import tornado.websocket
from tornado.httpclient import HTTPClientError, HTTPRequest

from helpers import fetch

KEYS = ["first-key-0001", "second-key-0002"]


@pytest.fixture
def app_settings():
    return {"poll_interval": 0.05, "api_keys": KEYS,
            "cors": {"allow_origins": ["https://ok.example", "https://*.lab.example"]},
            "max_body_size": 4096}


@pytest.mark.gen_test
async def test_api_requires_a_key(http_client, base_url):
    for path in ("/api/runs", "/api/runs/fake-direct", "/api/benchmarks", "/metrics"):
        resp, body = await fetch(http_client, base_url + path)
        assert resp.code == 401 and body["status"] == 401, path
        assert "WWW-Authenticate" in resp.headers
        resp, body = await fetch(http_client, base_url + path, headers={"X-API-Key": "wrong-key-9999"})
        assert resp.code == 403 and body["detail"] == "Invalid API key", path
    resp, _ = await fetch(http_client, base_url + "/api/compare", method="POST", body="{}")
    assert resp.code == 401


@pytest.mark.gen_test
async def test_every_configured_key_works_both_ways(http_client, base_url):
    for key in KEYS:
        resp, body = await fetch(http_client, base_url + "/api/runs", headers={"X-API-Key": key})
        assert resp.code == 200 and len(body) == 5
        resp, _ = await fetch(http_client, base_url + "/api/runs", headers={"Authorization": f"Bearer {key}"})
        assert resp.code == 200


@pytest.mark.gen_test
async def test_health_routes_stay_public(http_client, base_url):
    for path in ("/", "/healthz", "/readyz"):
        resp, _ = await fetch(http_client, base_url + path)
        assert resp.code in (200, 503), path


@pytest.mark.gen_test
async def test_websocket_refused_at_handshake(base_url):
    ws_url = base_url.replace("http", "ws", 1) + "/ws"
    with pytest.raises(HTTPClientError) as err:
        await tornado.websocket.websocket_connect(ws_url)
    assert err.value.code == 401
    with pytest.raises(HTTPClientError) as err:
        await tornado.websocket.websocket_connect(HTTPRequest(ws_url, headers={"X-API-Key": "nope-nope-nope"}))
    assert err.value.code == 403
    conn = await tornado.websocket.websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"Bearer {KEYS[0]}"}))
    await conn.write_message(json.dumps({"type": "ping"}))
    assert json.loads(await conn.read_message()) == {"type": "pong"}
    conn.close()
    conn = await tornado.websocket.websocket_connect(ws_url + "?token=" + KEYS[1])
    await conn.write_message(json.dumps({"type": "ping"}))
    assert json.loads(await conn.read_message()) == {"type": "pong"}
    conn.close()


@pytest.mark.gen_test
async def test_websocket_origin_follows_cors(base_url):
    ws_url = base_url.replace("http", "ws", 1) + "/ws?token=" + KEYS[0]
    conn = await tornado.websocket.websocket_connect(HTTPRequest(ws_url, headers={"Origin": "https://a.lab.example"}))
    conn.close()
    with pytest.raises(HTTPClientError) as err:
        await tornado.websocket.websocket_connect(HTTPRequest(ws_url, headers={"Origin": "https://evil.example"}))
    assert err.value.code == 403


@pytest.mark.gen_test
async def test_cors_preflight_and_headers(http_client, base_url):
    resp, _ = await fetch(http_client, base_url + "/api/compare", method="OPTIONS", headers={
        "Origin": "https://ok.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key"})
    assert resp.code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "X-API-Key" in resp.headers["Access-Control-Allow-Headers"]
    resp, _ = await fetch(http_client, base_url + "/api/runs", headers={"Origin": "https://ok.example", "X-API-Key": KEYS[0]})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    resp, _ = await fetch(http_client, base_url + "/api/runs", headers={"Origin": "https://evil.example", "X-API-Key": KEYS[0]})
    assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.gen_test
async def test_oversized_body_is_413_json(http_client, base_url):
    big = json.dumps({"run_ids": ["x" * 10000, "y"]})
    resp, body = await fetch(http_client, base_url + "/api/compare", method="POST", body=big,
                             headers={"X-API-Key": KEYS[0], "Content-Type": "application/json"})
    assert resp.code == 413 and body["status"] == 413 and "4096" in body["detail"]


@pytest.mark.gen_test
async def test_request_id_and_metrics(http_client, base_url):
    resp, _ = await fetch(http_client, base_url + "/api/runs", headers={"X-API-Key": KEYS[0], "X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp, _ = await fetch(http_client, base_url + "/api/runs/nope", headers={"X-API-Key": KEYS[0]})
    assert len(resp.headers["X-Request-Id"]) == 16
    resp, text = await fetch(http_client, base_url + "/metrics", headers={"X-API-Key": KEYS[0]})
    assert resp.code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    text = text.decode()
    assert 'themis_http_requests_total{handler="RunsHandler",method="GET",status="200"}' in text
    assert 'themis_http_requests_total{handler="RunHandler",method="GET",status="404"}' in text
    assert "themis_http_request_duration_seconds_bucket" in text
    assert 'themis_runs{status="completed"} 3.0' in text
    assert "themis_ws_connections 0.0" in text
    assert "themis_poll_duration_seconds_count" in text


class TestPublicMetrics:
    @pytest.fixture
    def app_settings(self):
        return {"api_keys": KEYS, "public_metrics": True}

    @pytest.mark.gen_test
    async def test_metrics_public_when_configured(self, http_client, base_url):
        resp, _ = await fetch(http_client, base_url + "/metrics")
        assert resp.code == 200
        resp, _ = await fetch(http_client, base_url + "/api/runs")
        assert resp.code == 401


class TestDefaultCors:
    @pytest.fixture
    def app_settings(self):
        return {}

    @pytest.mark.gen_test
    async def test_any_origin_by_default(self, http_client, base_url):
        resp, _ = await fetch(http_client, base_url + "/api/runs", headers={"Origin": "https://anywhere.example"})
        assert resp.code == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.gen_test
async def test_api_keys_in_query_strings_never_reach_the_access_log(base_url, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="tornado.access")
    ws_url = base_url.replace("http", "ws", 1) + "/ws?token=" + KEYS[1]
    conn = await tornado.websocket.websocket_connect(ws_url)
    await conn.write_message(json.dumps({"type": "ping"}))
    assert json.loads(await conn.read_message()) == {"type": "pong"}
    conn.close()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "tornado.access")
    assert "/ws?token=***" in logged
    assert all(key not in logged for key in KEYS)


@pytest.mark.gen_test
async def test_unknown_methods_meet_the_key_check_first_and_stay_one_label(http_client, base_url):
    resp, body = await fetch(http_client, base_url + "/api/runs", method="BREW", allow_nonstandard_methods=True)
    assert resp.code == 401  # no key: nothing else is said
    for i in range(50):
        resp, body = await fetch(http_client, base_url + "/api/runs", method=f"X{i}", allow_nonstandard_methods=True,
                                 headers={"X-API-Key": KEYS[0]})
        assert resp.code == 405 and resp.headers["Allow"] == "GET, OPTIONS", body
        assert body["status"] == 405
    resp, body = await fetch(http_client, base_url + "/api/compare", method="PUT", body="{}", headers={"X-API-Key": KEYS[0]})
    assert resp.code == 405 and resp.headers["Allow"] == "GET, POST, OPTIONS"
    resp = await http_client.fetch(base_url + "/metrics", headers={"X-API-Key": KEYS[0]})
    text = resp.body.decode()
    labels = set(re.findall(r'themis_http_requests_total\{[^}]*method="([^"]+)"', text))
    assert labels <= {"GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS", "other"}, labels


@pytest.mark.gen_test
async def test_odd_paths_get_json_problems_not_500s(http_client, base_url):
    for path, code in (("/static/%00x", 404), ("/dashboard/%00", 404), ("/ws", 400)):
        resp, body = await fetch(http_client, base_url + path, headers={"X-API-Key": KEYS[0]})
        assert resp.code == code, (path, resp.code)
        assert resp.headers["Content-Type"].startswith("application/problem+json"), path
        assert body["status"] == code
