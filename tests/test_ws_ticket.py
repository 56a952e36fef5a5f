"""Browsers open /ws with single-use tickets instead of the API key in the URL; keys never leak."""

from __future__ import annotations

import json
import logging

import pytest
import tornado.httpclient
import tornado.websocket

from themis_daemon.config import ConfigError, load_settings

KEYS = ["first-key-0001", "second-key-0002"]


@pytest.fixture
def app_settings():
    return {"poll_interval": 0.05, "api_keys": KEYS}


async def ticket(http_client, base_url, key=KEYS[0]):
    resp = await http_client.fetch(base_url + "/api/ws-ticket", method="POST", body=b"",
                                   headers={"X-API-Key": key})
    assert resp.code == 201 and resp.headers["Cache-Control"] == "no-store"
    body = json.loads(resp.body)
    assert body["expires_in"] == 30
    return body["ticket"]


async def open_ws(base_url, query):
    url = base_url.replace("http", "ws", 1) + "/ws" + query
    try:
        return await tornado.websocket.websocket_connect(url), None
    except tornado.httpclient.HTTPClientError as exc:
        return None, exc.code


@pytest.mark.gen_test(timeout=60)
async def test_ticket_opens_ws_once(http_client, base_url, caplog):
    caplog.set_level(logging.INFO, logger="tornado.access")
    resp = await http_client.fetch(base_url + "/api/ws-ticket", method="POST", body=b"", raise_error=False)
    assert resp.code == 401
    t = await ticket(http_client, base_url)
    conn, code = await open_ws(base_url, "?ticket=" + t)
    assert code is None
    await conn.write_message(json.dumps({"type": "ping"}))
    assert json.loads(await conn.read_message()) == {"type": "pong"}
    conn.close()
    # Single use.
    conn, code = await open_ws(base_url, "?ticket=" + t)
    assert code == 403
    for bad in ("", "x", "A" * 54, t[:-2] + ("AA" if t[-2:] != "AA" else "BB")):
        conn, code = await open_ws(base_url, "?ticket=" + bad)
        assert code == 403, bad
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "tornado.access")
    assert "ticket=***" in logged and t not in logged
    assert all(key not in logged for key in KEYS)


@pytest.mark.gen_test(timeout=60)
async def test_ticket_expires_and_follows_the_keys(http_client, base_url, daemon):
    t = await ticket(http_client, base_url)
    real = daemon.tickets.clock
    daemon.tickets.clock = lambda: real() + 31
    try:
        conn, code = await open_ws(base_url, "?ticket=" + t)
        assert code == 403
    finally:
        daemon.tickets.clock = real
    t = await ticket(http_client, base_url, KEYS[1])
    daemon.api_keys = ["a-brand-new-key-0003"]  # as a reload that replaces every key does
    conn, code = await open_ws(base_url, "?ticket=" + t)
    assert code == 403
    # Headers still work for clients that can set them.
    conn = await tornado.websocket.websocket_connect(tornado.httpclient.HTTPRequest(
        base_url.replace("http", "ws", 1) + "/ws", headers={"Authorization": "Bearer a-brand-new-key-0003"}))
    conn.close()


def test_tickets_are_bounded_and_single_use():
    from themis_daemon.web.base import Tickets

    now = [1000.0]
    tickets = Tickets(clock=lambda: now[0])
    tickets.MAX_REMEMBERED = 3
    issued = [tickets.issue(KEYS) for _ in range(4)]
    assert [tickets.redeem(t, KEYS) for t in issued] == [True, True, True, False]
    assert not tickets.redeem(issued[0], KEYS)
    now[0] += 31  # the remembered ones expired: room again, and old tickets stay refused
    assert not tickets.redeem(issued[3], KEYS)
    assert tickets.redeem(tickets.issue(KEYS), KEYS)
    assert not tickets.redeem(tickets.issue(KEYS), ["other-key-0000"])


@pytest.mark.parametrize("text", ["auth:\n  api_keys: [k3y-shr]\n", "auth:\n  api_keys: [k3y]\n",
                                  "auth:\n  api_keys: k3y-as-a-string-0001\n",
                                  "auth:\n  api_keys: [{k3y-in-a-map-0001: 1}]\n",
                                  "storage:\n  url: 5\n  path: {postgresql://u:k3y-pw@db/x: 1}\n"])
def test_config_errors_never_echo_a_key(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(str(path), environ={})
    assert "k3y" not in str(err.value) and "not shown" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ={"THEMIS_AUTH_API_KEYS": "k3y,other-k3y-valid-0001"})
    assert "k3y" not in str(err.value) and "auth.api_keys" in str(err.value)
