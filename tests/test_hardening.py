"""Hostile input and unlucky stores against a real server: JSON errors, never 500s or silence."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import pytest
import tornado.websocket

from helpers import fetch
from themis_daemon.openapi import build_openapi



@pytest.fixture
def app_settings():
    return {"poll_interval": 0.05, "max_body_size": 4096}


async def raw_request(base_url, request: bytes, timeout: float = 30.0) -> bytes:
    """Send bytes as they are (chunked bodies, odd framing) and read the answer to the end."""
    host, port = base_url.rsplit("/", 1)[-1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
    except ConnectionError:
        pass  # the server may refuse and close before reading everything
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    return data


def split_response(data: bytes):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return status, headers, body


def assert_problem(resp, body, status):
    assert resp.code == status, (resp.code, body)
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert body["status"] == status and body["detail"]


def errors_logged(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# ---------------------------------------------------------------------- REST bodies


@pytest.mark.gen_test
async def test_deeply_nested_compare_body_is_400_json(http_client, base_url, caplog):
    body = "[" * 100_000 + "]" * 100_000
    resp, problem = await fetch(http_client, base_url + "/api/compare", method="POST", body=body,
                                headers={"Content-Type": "application/json"})
    # Over the 4 KB limit: refused before parsing.
    assert_problem(resp, problem, 413)
    nested = '{"run_ids": ' + "[" * 1500 + "]" * 1500 + "}"
    resp, problem = await fetch(http_client, base_url + "/api/compare", method="POST", body=nested,
                                headers={"Content-Type": "application/json"})
    assert_problem(resp, problem, 400)
    assert "depth" in problem["detail"]
    assert not errors_logged(caplog)


@pytest.mark.gen_test
async def test_deep_nesting_under_a_large_limit_is_400_not_500(http_client, base_url, daemon, caplog):
    daemon.settings.server.max_body_size = 1_000_000
    body = "[" * 100_000 + "]" * 100_000
    resp, problem = await fetch(http_client, base_url + "/api/compare", method="POST", body=body,
                                headers={"Content-Type": "application/json"})
    assert_problem(resp, problem, 400)
    assert not errors_logged(caplog)


@pytest.mark.gen_test
@pytest.mark.parametrize("text", ['{"run_ids": ["\\ud800", "fake-direct"]}', '"\\udfff"',
                                  '{"run_ids": ["fake-direct", "fake-terse"], "metrics": ["\\ud83d"]}'])
async def test_lone_surrogate_is_a_clear_400(http_client, base_url, text, caplog):
    resp, problem = await fetch(http_client, base_url + "/api/compare", method="POST", body=text,
                                headers={"Content-Type": "application/json"})
    assert_problem(resp, problem, 400)
    assert "surrogate" in problem["detail"]
    assert not errors_logged(caplog)


@pytest.mark.gen_test
async def test_invalid_utf8_and_empty_bodies_are_400(http_client, base_url):
    for raw in (b'{"run_ids": ["\xff\xfe"]}', b"", b"  "):
        resp, problem = await fetch(http_client, base_url + "/api/compare", method="POST", body=raw,
                                    allow_nonstandard_methods=True)
        assert_problem(resp, problem, 400)


@pytest.mark.gen_test
async def test_chunked_body_over_the_limit_is_413_json(base_url):
    chunk = b"[" + b" " * 2046 + b"]"
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    data = await raw_request(base_url, b"POST /api/compare HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    status, headers, payload = split_response(data)
    assert status == 413, data[:300]
    assert headers["content-type"].startswith("application/problem+json")
    problem = json.loads(payload)
    assert problem["status"] == 413 and "4096" in problem["detail"]
    # One huge announced chunk is refused the same way, without reading it.
    data = await raw_request(base_url, b"POST /api/compare HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                       b"4000000\r\n" + b"x" * 8192)
    assert split_response(data)[0] == 413


@pytest.mark.gen_test
async def test_chunked_body_within_the_limit_is_read(base_url):
    body = json.dumps({"run_ids": ["fake-direct", "fake-terse"], "statistical_test": "t_test"}).encode()
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    data = await raw_request(base_url, b"POST /api/compare HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                       b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + framed)
    status, _, payload = split_response(data)
    assert status == 200, payload[:300]


@pytest.mark.gen_test
async def test_multipart_body_is_415(http_client, base_url):
    body = b'--b\r\nContent-Disposition: form-data; name="run_ids"\r\n\r\nfake-direct\r\n--b--\r\n'
    resp, problem = await fetch(http_client, base_url + "/api/compare", method="POST", body=body,
                                headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_problem(resp, problem, 415)


# ---------------------------------------------------------------------- document and behaviour agree


@pytest.mark.gen_test
async def test_list_query_values_agree_with_the_openapi_document(http_client, base_url):
    params = {p["name"]: p for p in build_openapi()["paths"]["/api/runs"]["get"]["parameters"] if "name" in p}
    sort_enum = params["sort"]["schema"]["enum"]
    status_enum = params["status"]["schema"]["items"]["enum"]
    for value in ("", "nope", "--created_at"):
        assert value not in sort_enum
        resp, problem = await fetch(http_client, base_url + "/api/runs?sort=" + value)
        assert_problem(resp, problem, 400)
    for value in sort_enum:
        resp, _ = await fetch(http_client, base_url + "/api/runs?sort=" + value)
        assert resp.code == 200, value
    for value in status_enum:
        resp, _ = await fetch(http_client, base_url + "/api/runs?status=" + value)
        assert resp.code == 200, value
    resp, problem = await fetch(http_client, base_url + "/api/runs?status=bogus")
    assert_problem(resp, problem, 400)


@pytest.mark.gen_test
async def test_too_few_run_ids_agree_with_the_schema(http_client, base_url):
    from themis_daemon.validation import describe

    for run_ids in ([], ["fake-direct"]):
        assert describe("compare_request", {"run_ids": run_ids}), "the schema must refuse it too"
        resp, problem = await fetch(http_client, base_url + "/api/compare", method="POST",
                                    body=json.dumps({"run_ids": run_ids}))
        assert_problem(resp, problem, 400)
        assert problem["detail"] == "Need at least 2 runs to compare"


# ---------------------------------------------------------------------- WebSocket input


async def ws_connect(base_url):
    return await tornado.websocket.websocket_connect(base_url.replace("http", "ws", 1) + "/ws")


async def ws_recv(conn, timeout=30.0):
    msg = await asyncio.wait_for(conn.read_message(), timeout)
    return None if msg is None else json.loads(msg)


@pytest.mark.gen_test(timeout=60)
async def test_ws_deep_nesting_gets_an_error_and_a_close_code(base_url, caplog):
    conn = await ws_connect(base_url)
    await conn.write_message("[" * 5000 + "]" * 5000)
    msg = await ws_recv(conn)
    assert msg["type"] == "error" and "depth" in msg["detail"]
    assert await ws_recv(conn) is None
    assert conn.close_code == 1008
    # Even far deeper than the message size limit allows, a close frame ends it.
    conn = await ws_connect(base_url)
    await conn.write_message("[" * 100_000 + "]" * 100_000)
    while (await ws_recv(conn)) is not None:
        pass
    assert conn.close_code in (1008, 1009)
    assert not errors_logged(caplog)


@pytest.mark.gen_test(timeout=60)
async def test_ws_lone_surrogate_gets_an_error_and_the_connection_keeps_working(base_url, caplog):
    conn = await ws_connect(base_url)
    await conn.write_message('{"type": "subscribe", "run_id": "\\ud800"}')
    msg = await ws_recv(conn)
    assert msg["type"] == "error" and "surrogate" in msg["detail"]
    await conn.write_message(b'{"type": "ping", "x": "\xff"}', binary=True)
    msg = await ws_recv(conn)
    assert msg["type"] == "error" and "UTF-8" in msg["detail"]
    await conn.write_message(json.dumps({"type": "ping"}))
    assert await ws_recv(conn) == {"type": "pong"}
    conn.close()
    assert not errors_logged(caplog)


# ---------------------------------------------------------------------- one bad name, everyone else fine


@pytest.fixture
def bad_name_store(plain_store):
    runs = os.path.join(os.fsencode(plain_store), b"experiments", b"default", b"runs")
    os.rename(os.path.join(runs, b"fake-terse"), os.path.join(runs, b"fake-\xff\xfeterse"))
    return plain_store


@pytest.fixture
def store_root(request, plain_store):
    if "bad_name" in request.node.name:
        return request.getfixturevalue("bad_name_store")
    return plain_store


@pytest.mark.gen_test(timeout=60)
async def test_bad_name_run_list_is_served_escaped(http_client, base_url):
    resp, body = await fetch(http_client, base_url + "/api/runs")
    assert resp.code == 200, body
    ids = {r["run_id"] for r in body}
    assert ids == {"fake-direct", "fake-swapped", "fake-%FF%FEterse", "fake-failed", "fake-live"}
    resp, detail = await fetch(http_client, base_url + "/api/runs/fake-%25FF%25FEterse")
    assert resp.code == 200, detail
    assert detail["run_id"] == "fake-%FF%FEterse" and detail["samples"]


@pytest.mark.gen_test(timeout=60)
async def test_bad_name_run_can_be_compared_under_its_listed_name(http_client, base_url):
    resp, result = await fetch(http_client, base_url + "/api/compare", method="POST",
                               body=json.dumps({"run_ids": ["fake-direct", "fake-%FF%FEterse"]}),
                               headers={"Content-Type": "application/json"})
    assert resp.code == 200, result
    assert "fake-%FF%FEterse" in json.dumps(result)
    resp, body = await fetch(http_client, base_url + "/api/compare", method="POST",
                             body=json.dumps({"run_ids": ["fake-%FF%FEterse", "fake-%FF%FEterse"]}),
                             headers={"Content-Type": "application/json"})
    assert resp.code == 400 and "repeated: fake-%FF%FEterse" in body["detail"], body


@pytest.mark.gen_test(timeout=60)
async def test_bad_name_run_does_not_silence_websocket_subscribers(base_url, store_root):
    conn = await ws_connect(base_url)
    await conn.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
    assert (await ws_recv(conn))["type"] == "subscribed"
    runs = os.path.join(os.fsencode(store_root), b"experiments", b"default", b"runs")
    os.rename(os.path.join(runs, b"fake-direct"), os.path.join(runs, b"fake-\xc3("))
    seen = set()
    deadline = time.monotonic() + 30
    while not {"run_removed", "run_started"} <= seen:
        assert time.monotonic() < deadline, seen
        msg = await ws_recv(conn)
        assert msg is not None, "connection closed"
        if msg.get("run_id") in ("fake-direct", "fake-%C3("):
            seen.add(msg["type"])
    await conn.write_message(json.dumps({"type": "ping"}))
    while (msg := await ws_recv(conn)) != {"type": "pong"}:
        assert msg is not None
    conn.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_send_closes_that_connection_with_1011(base_url, daemon):
    bad = await ws_connect(base_url)
    await bad.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
    assert (await ws_recv(bad))["type"] == "subscribed"
    (victim,) = daemon.hub.clients

    async def broken(*args, **kwargs):
        raise RuntimeError("injected send failure")

    victim.handler.write_message = broken
    good = await ws_connect(base_url)
    await good.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
    assert (await ws_recv(good))["type"] == "subscribed"
    event = daemon.hub.publish({"type": "run_progress", "run_id": "fake-live", "data": {"run_id": "fake-live"}})
    assert (await ws_recv(bad)) is None
    assert bad.close_code == 1011
    assert (await ws_recv(good))["seq"] == event["seq"]
    await good.write_message(json.dumps({"type": "ping"}))
    assert await ws_recv(good) == {"type": "pong"}
    assert daemon.hub.stats["clients_closed_on_error"] == 1
    good.close()


def test_body_cache_drops_bodies_of_older_versions():
    from themis_daemon.web.app import BodyCache

    cache = BodyCache(max_bytes=10_000)
    for version in range(50):
        for page in range(3):
            cache.put(("run", "a", version, page), (b"x" * 100, "etag"), group=("run", "a"), version=version)
        cache.put(("runs", version), (b"y" * 100, "etag", 1), group="runs", version=version)
    assert cache._size == 4 * 100 and len(cache._items) == 4
    assert cache.get(("run", "a", 49, 2)) is not None and cache.get(("run", "a", 48, 2)) is None
    cache.drop_group(("run", "a"))
    assert cache._size == 100 and list(cache._items) == [("runs", 49)]
