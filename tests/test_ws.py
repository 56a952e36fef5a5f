"""WebSocket /ws with real clients while a writer appends to a store the way Themis does."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time

import pytest
import tornado.websocket

from themis_daemon.demo.writer import ThemisRunWriter, make_arith_dataset

FINAL = ("run_completed", "run_failed")


@pytest.fixture
def store_root(gzip_store):
    return gzip_store


async def connect(base_url, path="/ws"):
    return await tornado.websocket.websocket_connect(base_url.replace("http", "ws", 1) + path)


async def recv(conn, timeout=5.0):
    msg = await asyncio.wait_for(conn.read_message(), timeout)
    assert msg is not None, "connection closed"
    return json.loads(msg)


async def recv_until(conn, pred, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; got {[m.get('type') for m in got]}"
        msg = await recv(conn, remaining)
        got.append(msg)
        if pred(msg):
            return got


async def send(conn, obj):
    await conn.write_message(json.dumps(obj))


async def subscribed(base_url, run_id):
    """A connection subscribed to `run_id`, past the `subscribed` answer."""
    conn = await connect(base_url)
    await send(conn, {"type": "subscribe", "run_id": run_id})
    assert (await recv(conn))["type"] == "subscribed"
    return conn


def events_of(msgs, run_id):
    return [m for m in msgs if m.get("run_id") == run_id and "seq" in m]


async def drive(writer, steps, pause=0.12, torn=True):
    """Advance a run a few records at a time, with torn writes completed on a later poll."""
    writer.start()
    await asyncio.sleep(pause)
    for i in range(steps):
        if torn and i == 1:
            writer.append_partial("record", 0.5)
            await asyncio.sleep(pause)
            writer.finish_partial()
        writer.step(4)
        await asyncio.sleep(pause)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("compression", ["gzip", "none"])  # truncated gzip member / torn line
async def test_live_run_events_in_order(base_url, store_root, compression):
    conn = await subscribed(base_url, "live-1")
    writer = ThemisRunWriter(store_root, "live-1", dataset=make_arith_dataset(20), eval_batch=5,
                             compression=compression)
    await drive(writer, 5)
    writer.complete()
    msgs = await recv_until(conn, lambda m: m.get("type") in FINAL)
    evs = events_of(msgs, "live-1")
    kinds = [e["type"] for e in evs]
    assert kinds[0] == "run_started" and kinds[-1] == "run_completed"
    assert set(kinds[1:-1]) <= {"run_progress"} and "run_progress" in kinds
    seqs = [e["seq"] for e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    progress = [e for e in evs if e["type"] == "run_progress"]
    generated = [e["data"]["generated"] for e in progress]
    assert generated == sorted(generated)
    assert all(0.0 <= e["progress"] <= 1.0 for e in progress)
    final = evs[-1]["data"]
    assert (final["status"], final["generated"], final["evaluated"], final["expected_samples"]) == ("completed", 20, 20, 20)
    assert final["progress"] == 1.0
    conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_failed_run_and_late_subscriber(base_url, store_root):
    conn = await subscribed(base_url, "*")
    writer = ThemisRunWriter(store_root, "doomed", dataset=make_arith_dataset(10), eval_batch=5)
    await drive(writer, 2, torn=False)
    writer.fail("results sink unavailable: connection refused")
    msgs = await recv_until(conn, lambda m: m.get("type") == "run_failed")
    failed = msgs[-1]
    assert failed["run_id"] == "doomed"
    assert failed["error_message"] == "results sink unavailable: connection refused"
    assert failed["data"]["status"] == "failed"
    # A late subscriber learns the final state at once.
    late = await connect(base_url)
    await send(late, {"type": "subscribe", "run_id": "doomed"})
    assert (await recv(late))["type"] == "subscribed"
    state = await recv(late)
    assert state["type"] == "run_state" and state["data"]["status"] == "failed"
    # ...and can replay what it missed.
    await send(late, {"type": "subscribe", "run_id": "doomed", "since": 0})
    replay = await recv_until(late, lambda m: m.get("type") == "run_failed")
    assert [m["type"] for m in events_of(replay, "doomed")][0] == "run_started"
    conn.close()
    late.close()


@pytest.mark.gen_test(timeout=30)
async def test_run_finished_between_two_polls_still_has_both_events(base_url, store_root, daemon):
    conn = await subscribed(base_url, "quick")
    daemon.monitor.stop()  # nothing polls while the whole run is written
    writer = ThemisRunWriter(store_root, "quick", dataset=make_arith_dataset(6), eval_batch=5)
    writer.start()
    writer.step(6)
    writer.complete()
    await daemon.monitor.refresh(after_now=True)
    msgs = await recv_until(conn, lambda m: m.get("type") in FINAL)
    assert [m["type"] for m in events_of(msgs, "quick")] == ["run_started", "run_completed"]
    conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_protocol_errors_keep_connection_open(base_url):
    conn = await connect(base_url)
    await send(conn, {"type": "ping"})
    assert await recv(conn) == {"type": "pong"}
    await conn.write_message("not json")
    msg = await recv(conn)  # the original's message, plus where the parser stopped
    assert (msg["type"], msg["message"]) == ("error", "Invalid JSON mapping") and "line 1" in msg["detail"]
    await send(conn, {"type": "dance"})
    assert await recv(conn) == {"type": "error", "message": "Unknown message type: dance"}
    await send(conn, {"run_id": "x"})
    assert await recv(conn) == {"type": "error", "message": "Unknown message type: None"}
    await send(conn, {"type": "subscribe"})
    err = await recv(conn)
    assert err["type"] == "error" and "run_id" in err["message"]
    await send(conn, {"type": "subscribe", "run_id": "x", "extra": 1})
    err = await recv(conn)
    assert err["type"] == "error" and err["errors"][0]["pointer"] == "/extra"
    await send(conn, {"type": "unsubscribe", "run_id": "x"})
    assert await recv(conn) == {"type": "unsubscribed", "run_id": "x"}
    await send(conn, {"type": "ping"})
    assert await recv(conn) == {"type": "pong"}
    conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_known_run_snapshot_on_subscribe(base_url):
    conn = await connect(base_url)
    await send(conn, {"type": "subscribe", "run_id": "gz-live"})
    sub = await recv(conn)
    assert sub == {"type": "subscribed", "run_id": "gz-live", "last_seq": sub["last_seq"]}
    state = await recv(conn)
    assert state["type"] == "run_state"
    assert (state["data"]["generated"], state["data"]["evaluated"], state["data"]["expected_samples"]) == (12, 10, 20)
    conn.close()


def raw_ws_client(port):
    """A WebSocket client that completes the handshake, subscribes to everything, never reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    payload = json.dumps({"type": "subscribe", "run_id": "*"}).encode()
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(frame)
    return sock


@pytest.mark.gen_test(timeout=30)
async def test_stuck_client_does_not_delay_others(base_url, http_port, daemon):
    stuck = raw_ws_client(http_port)
    try:
        good = await connect(base_url)
        await send(good, {"type": "subscribe", "run_id": "*"})
        await recv(good)
        deadline = time.monotonic() + 5
        while len(daemon.hub.clients) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        big = {"run_id": None, "status": "in_progress", "padding": "x" * 20000}
        for i in range(300):  # far more than the stuck client's socket buffers hold
            daemon.hub.publish({"type": "run_progress", "run_id": f"r{i % 50}", "data": dict(big, run_id=f"r{i % 50}")})
        daemon.hub.publish({"type": "run_completed", "run_id": "r-final", "data": {"run_id": "r-final"}})
        t0 = time.monotonic()
        msgs = await recv_until(good, lambda m: m.get("type") == "run_completed", timeout=10)
        assert time.monotonic() - t0 < 5
        assert msgs[-1]["run_id"] == "r-final"
        # the stuck client's queue stays bounded: progress coalesced per run
        for c in daemon.hub.clients:
            assert len(c.queue) <= daemon.settings.websocket.queue_size
        assert daemon.hub.stats["events_coalesced"] > 0
        good.close()
    finally:
        stuck.close()


@pytest.mark.gen_test(timeout=30)
async def test_websockets_library_client(base_url, store_root):
    import websockets

    uri = base_url.replace("http", "ws", 1) + "/ws"
    async with websockets.connect(uri) as ws:
        await ws.send(json.dumps({"type": "subscribe", "run_id": "wsl"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "subscribed"
        writer = ThemisRunWriter(store_root, "wsl", dataset=make_arith_dataset(8), eval_batch=5)
        writer.start()
        await asyncio.sleep(0.15)
        writer.step(8)
        writer.complete()
        kinds = []
        deadline = time.monotonic() + 10
        while "run_completed" not in kinds and time.monotonic() < deadline:
            kinds.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["type"])
        assert kinds[0] == "run_started" and kinds[-1] == "run_completed"


class TestLimitsAndStalls:
    @pytest.fixture
    def app_settings(self):
        return {"poll_interval": 0.05, "stalled_after": 0.3, "max_subscriptions": 3,
                "max_message_size": 512, "replay_buffer": 5, "max_connections": 2}

    @pytest.mark.gen_test(timeout=30)
    async def test_connection_cap_refuses_at_handshake(self, base_url):
        from tornado.httpclient import HTTPClientError

        first, second = await connect(base_url), await connect(base_url)
        with pytest.raises(HTTPClientError) as err:
            await connect(base_url)
        assert err.value.code == 503
        first.close()
        second.close()

    @pytest.mark.gen_test(timeout=30)
    async def test_stalled_run_is_reported_once(self, base_url, store_root):
        conn = await subscribed(base_url, "slowpoke")
        writer = ThemisRunWriter(store_root, "slowpoke", dataset=make_arith_dataset(10), eval_batch=5)
        writer.start()
        writer.step(2)
        msgs = await recv_until(conn, lambda m: m.get("type") == "run_stalled")
        assert msgs[-1]["idle_seconds"] >= 0.3 and msgs[-1]["data"]["status"] == "in_progress"
        writer.step(2)  # moving again, then completing: no second stall before the final event
        writer.complete()
        msgs = await recv_until(conn, lambda m: m.get("type") == "run_completed")
        assert "run_stalled" not in [m["type"] for m in msgs]
        conn.close()

    @pytest.mark.gen_test(timeout=30)
    async def test_subscription_cap_and_message_size(self, base_url):
        conn = await connect(base_url)
        for i in range(3):
            await send(conn, {"type": "subscribe", "run_id": f"r{i}"})
            assert (await recv(conn))["type"] == "subscribed"
        await send(conn, {"type": "subscribe", "run_id": "r3"})
        err = await recv(conn)
        assert err["type"] == "error" and "limit 3" in err["message"]
        await conn.write_message(json.dumps({"type": "ping", "pad": "x" * 2000}))
        assert await asyncio.wait_for(conn.read_message(), 5) is None
        assert conn.close_code == 1009

    @pytest.mark.gen_test(timeout=30)
    async def test_replay_says_when_the_buffer_is_too_short(self, base_url, daemon):
        for i in range(20):  # final-type events: never coalesced, so each one is replayed
            daemon.hub.publish({"type": "run_completed", "run_id": "busy", "data": {"run_id": "busy", "i": i}})
        conn = await connect(base_url)
        await send(conn, {"type": "subscribe", "run_id": "busy", "since": 2})
        assert (await recv(conn))["type"] == "subscribed"
        gap = await recv(conn)
        assert gap["type"] == "replay_incomplete" and gap["oldest_seq"] == daemon.hub.seq - 4
        replayed = [await recv(conn) for _ in range(5)]
        assert [m["seq"] for m in replayed] == list(range(daemon.hub.seq - 4, daemon.hub.seq + 1))
        conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_monitor_survives_storage_root_vanishing(base_url, store_root, daemon, http_client):
    conn = await subscribed(base_url, "*")
    moved = store_root + ".away"
    os.rename(store_root, moved)
    await asyncio.sleep(0.3)
    resp = await http_client.fetch(base_url + "/api/runs")
    assert len(json.loads(resp.body)) == 3  # last known state is still served
    ready = await http_client.fetch(base_url + "/readyz", raise_error=False)
    assert ready.code == 503
    os.rename(moved, store_root)
    writer = ThemisRunWriter(store_root, "after-outage", dataset=make_arith_dataset(5), eval_batch=5)
    writer.start()
    writer.step(5)
    writer.complete()
    msgs = await recv_until(conn, lambda m: m.get("type") == "run_completed" and m["run_id"] == "after-outage")
    assert msgs[-1]["data"]["generated"] == 5
    conn.close()


class TestStalledInRest:
    @pytest.fixture
    def app_settings(self):
        return {"poll_interval": 0.05, "stalled_after": 60}

    @pytest.mark.gen_test(timeout=30)
    async def test_killed_writer_shows_as_stalled_everywhere(self, base_url, http_client, store_root):
        # gz-live's writer was killed: its files last moved an hour ago. gz-direct is completed.
        hour_ago = time.time() - 3600
        for dirpath, _dirs, files in os.walk(os.path.join(store_root, "experiments", "default", "runs", "gz-live")):
            for name in files:
                os.utime(os.path.join(dirpath, name), (hour_ago, hour_ago))
        resp = await http_client.fetch(base_url + "/api/runs")
        runs = {r["run_id"]: r for r in json.loads(resp.body)}
        assert runs["gz-live"]["stalled"] is True and runs["gz-direct"]["stalled"] is False
        detail = json.loads((await http_client.fetch(base_url + "/api/runs/gz-live?samples_limit=1")).body)
        assert detail["stalled"] is True
        conn = await subscribed(base_url, "gz-live")
        assert (await recv(conn))["data"]["stalled"] is True
        conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_protocol_pings_get_no_json_pong(base_url):
    """A WebSocket-level ping is answered by the protocol; only a JSON ping gets a JSON pong."""
    conn = await connect(base_url)
    for _ in range(3):
        conn.ping(b"are you there")
    await send(conn, {"type": "unsubscribe", "run_id": "marker"})
    # the first text message is the answer to the marker, not a pong per protocol ping
    assert await recv(conn) == {"type": "unsubscribed", "run_id": "marker"}
    await send(conn, {"type": "ping"})
    assert await recv(conn) == {"type": "pong"}
    conn.close()
