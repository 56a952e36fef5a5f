"""Recorded list answers replayed without a handler: the same bytes, checks, counters and logs,
and never once the state, the settings or the request's deciding headers differ."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Dict, List, Optional, Tuple

import pytest

from themis_daemon.config import settings_from_kwargs
from themis_daemon.web import replay

from test_storage import run_path, truncate_file

KEY = "replay-key-0123456789"


@pytest.fixture
def app_settings():
    # A long poll interval: the state stays fresh between the requests of a test, and a test
    # that changes the store refreshes the monitor itself.
    return {"poll_interval": 30.0, "allow_origins": ["http://dash.example"]}


async def raw_get(port: int, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, List[Tuple[str, str]], bytes]:
    """One GET over a fresh connection, read byte for byte: status, header lines in order, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).decode("latin-1")
        status_line, *rest = head[:-4].split("\r\n")
        pairs = [tuple(line.split(": ", 1)) for line in rest]
        length = int(dict(pairs).get("Content-Length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 60) if length else b""
        return int(status_line.split()[1]), pairs, body
    finally:
        writer.close()


def stable(pairs):
    return [(k, v) for k, v in pairs if k not in ("Date", "X-Request-Id")]


VARIANTS = [
    ("/api/runs", {}),
    ("/api/runs", {"Accept-Encoding": "gzip"}),
    ("/api/runs", {"Origin": "http://dash.example"}),
    ("/api/runs", {"Origin": "http://elsewhere.example", "Accept-Encoding": "gzip, br"}),
    ("/api/runs?sort=run_id&limit=2", {}),
    ("/api/runs?status=completed", {"Accept-Encoding": "gzip"}),
]


@pytest.mark.parametrize("separate_body", (False, True))
@pytest.mark.gen_test(timeout=120)
async def test_replayed_answers_are_the_handlers_answers(http_port, base_url, daemon, separate_body, monkeypatch):
    if separate_body:  # big bodies go out after their headers, in a write of their own
        monkeypatch.setattr(replay, "SEPARATE_BODY", 0)
    for path, headers in VARIANTS:
        before = daemon.replays.replayed
        first = await raw_get(http_port, path, headers)
        assert first[0] == 200
        assert daemon.replays.replayed == before  # the handler answered and it was recorded
        for _ in range(3):
            again = await raw_get(http_port, path, headers)
            assert (again[0], stable(again[1]), again[2]) == (first[0], stable(first[1]), first[2]), (path, headers)
            assert [k for k, _ in again[1]] == [k for k, _ in first[1]]  # same header order
        assert daemon.replays.replayed == before + 3, (path, headers)
    # a conditional request: the handler's 304, then the same 304 replayed
    _, pairs, _ = await raw_get(http_port, "/api/runs")
    etag = dict(pairs)["Etag"]
    before = daemon.replays.replayed
    first = await raw_get(http_port, "/api/runs", {"If-None-Match": etag})
    again = await raw_get(http_port, "/api/runs", {"If-None-Match": etag})
    assert first[0] == again[0] == 304 and first[2] == again[2] == b""
    assert stable(first[1]) == stable(again[1])
    assert daemon.replays.replayed == before + 1  # the second 304


@pytest.mark.gen_test(timeout=120)
async def test_request_ids_and_dates_are_made_per_answer(http_port, base_url, daemon):
    await raw_get(http_port, "/api/runs")
    ids = set()
    for _ in range(5):
        _, pairs, _ = await raw_get(http_port, "/api/runs")
        ids.add(dict(pairs)["X-Request-Id"])
        assert dict(pairs)["Date"].endswith(" GMT")
    assert len(ids) == 5
    _, pairs, _ = await raw_get(http_port, "/api/runs", {"X-Request-Id": "from-nginx.42"})
    assert dict(pairs)["X-Request-Id"] == "from-nginx.42"
    _, pairs, _ = await raw_get(http_port, "/api/runs", {"X-Request-Id": "bad id with spaces"})
    assert dict(pairs)["X-Request-Id"] != "bad id with spaces"
    assert daemon.replays.replayed >= 7


@pytest.mark.gen_test(timeout=120)
async def test_a_changed_store_is_never_answered_from_a_recording(http_port, base_url, daemon, store_root):
    rec = run_path(store_root, "fake-direct", "generation", "records.jsonl")
    rest = truncate_file(rec, 1 + 5)  # header + 5 records; the rest comes later
    await daemon.monitor.refresh(after_now=True)
    _, _, body = await raw_get(http_port, "/api/runs")
    await raw_get(http_port, "/api/runs")
    replayed = daemon.replays.replayed
    assert replayed == 1
    assert {r["run_id"]: r for r in json.loads(body)}["fake-direct"]["generated"] == 5
    with open(rec, "ab") as fh:  # Themis writes one more record
        fh.write(rest[0] + b"\n")
    await daemon.monitor.refresh(after_now=True)
    status, _, body2 = await raw_get(http_port, "/api/runs")
    assert status == 200 and daemon.replays.replayed == replayed  # the handler answered
    assert {r["run_id"]: r for r in json.loads(body2)}["fake-direct"]["generated"] == 6
    _, _, body3 = await raw_get(http_port, "/api/runs")
    assert body3 == body2 and daemon.replays.replayed == replayed + 1
    # state too old to answer from without a refresh: the handler answers (and refreshes)
    daemon.monitor._last_ok -= 3600
    status, _, body4 = await raw_get(http_port, "/api/runs")
    assert status == 200 and body4 == body2 and daemon.replays.replayed == replayed + 1


@pytest.mark.gen_test(timeout=120)
async def test_errors_are_never_recorded(http_port, base_url, daemon):
    for _ in range(3):
        status, pairs, body = await raw_get(http_port, "/api/runs?sort=bogus")
        assert status == 400 and json.loads(body)["status"] == 400
    status, _, _ = await raw_get(http_port, "/api/runs", {"Content-Length": "0"})
    assert daemon.replays.replayed == 0


@pytest.mark.gen_test(timeout=120)
async def test_counters_and_access_log_count_replayed_answers(http_port, base_url, daemon, http_client, caplog):
    caplog.set_level(logging.DEBUG, logger="tornado.access")
    for _ in range(6):
        await raw_get(http_port, "/api/runs", {"X-Request-Id": "counted-1"})
    assert daemon.replays.replayed == 5
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access" and "rid=counted-1" in r.getMessage()]
    assert len(lines) == 6 and all(line.startswith("200 GET /api/runs ") for line in lines)
    metrics = (await http_client.fetch(base_url + "/metrics")).body.decode()
    line = [m for m in metrics.splitlines() if m.startswith('themis_http_requests_total{handler="RunsHandler",method="GET",status="200"}')]
    assert line and float(line[0].split()[-1]) == 6.0
    count = [m for m in metrics.splitlines() if m.startswith('themis_http_request_duration_seconds_count{handler="RunsHandler"}')]
    assert count and float(count[0].split()[-1]) == 6.0


class TestWithKeys:
    @pytest.fixture
    def app_settings(self):
        return {"poll_interval": 30.0, "api_keys": [KEY]}

    @pytest.mark.gen_test(timeout=120)
    async def test_a_replay_checks_the_key_like_the_handler(self, http_port, base_url, daemon, store_root):
        good = {"X-API-Key": KEY}
        first = await raw_get(http_port, "/api/runs", good)
        assert first[0] == 200
        assert (await raw_get(http_port, "/api/runs", good))[2] == first[2]
        assert (await raw_get(http_port, "/api/runs", {"Authorization": f"Bearer {KEY}"}))[0] == 200
        assert daemon.replays.replayed == 2  # any valid key, however it is sent
        assert (await raw_get(http_port, "/api/runs"))[0] == 401
        assert (await raw_get(http_port, "/api/runs", {"X-API-Key": "wrong-key-123456"}))[0] == 403
        assert daemon.replays.replayed == 2
        # a reload that changes the keys: the old key is refused, nothing recorded before is replayed
        daemon.apply(settings_from_kwargs(store_root, poll_interval=30.0, api_keys=["another-key-98765"]))
        assert (await raw_get(http_port, "/api/runs", good))[0] == 403
        fresh = await raw_get(http_port, "/api/runs", {"X-API-Key": "another-key-98765"})
        assert fresh[0] == 200 and fresh[2] == first[2]
        assert daemon.replays.replayed == 2


async def read_answer(reader) -> Tuple[int, Dict[str, str], bytes]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).decode("latin-1")
    status_line, *rest = head[:-4].split("\r\n")
    headers = dict(tuple(line.split(": ", 1)) for line in rest)
    length = int(headers.get("Content-Length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 60) if length else b""
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("separate_body", (False, True))
@pytest.mark.gen_test(timeout=120)
async def test_keep_alive_connections_carry_replayed_and_handled_answers_in_turn(
        http_port, base_url, daemon, separate_body, monkeypatch):
    # A replay writes its answer straight to the connection's stream: the connection must go on
    # to the next request, replayed or not, exactly as after a handler's answer.
    if separate_body:
        monkeypatch.setattr(replay, "SEPARATE_BODY", 0)
    first = await raw_get(http_port, "/api/runs")
    run_id = json.loads(first[2])[0]["run_id"]
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    try:
        before = daemon.replays.replayed
        for path in ["/api/runs", "/api/runs", f"/api/runs/{run_id}", "/api/runs", "/healthz", "/api/runs"]:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status, headers, body = await read_answer(reader)
            assert status == 200, path
            assert "Connection" not in headers and "Transfer-Encoding" not in headers
            if path == "/api/runs":
                assert body == first[2]
            else:
                assert body != first[2] and json.loads(body)
        assert daemon.replays.replayed == before + 4
        # two requests sent at once (pipelined): two complete answers, in order
        writer.write(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     b"GET /api/runs?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await read_answer(reader))[2] == first[2]
        assert len(json.loads((await read_answer(reader))[2])) == 1
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_replay_to_a_closing_or_http_1_0_client_says_so(http_port, base_url, daemon):
    first = await raw_get(http_port, "/api/runs")
    await raw_get(http_port, "/api/runs", {"Connection": "close"})  # the handler's, recorded
    for request, connection in [
        (b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", "close"),
        (b"GET /api/runs HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", None),
    ]:
        for _ in range(2):  # the handler's answer, then the replayed one
            before = daemon.replays.replayed
            reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
            try:
                writer.write(request)
                status, headers, body = await read_answer(reader)
                assert status == 200 and body == first[2]
                assert headers.get("Connection") == connection
                assert await asyncio.wait_for(reader.read(), 60) == b""  # the daemon closed it
            finally:
                writer.close()
        assert daemon.replays.replayed == before + 1
    # HTTP/1.0 asking for keep-alive keeps the connection, and is told so
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    try:
        for _ in range(3):
            writer.write(b"GET /api/runs HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
            status, headers, body = await read_answer(reader)
            assert status == 200 and body == first[2] and headers.get("Connection") == "Keep-Alive"
    finally:
        writer.close()
