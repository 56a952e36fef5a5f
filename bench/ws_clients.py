#!/usr/bin/env python
"""WebSocket client swarm for bench/bench_monitor.py (one worker process; not a test).

    python bench/ws_clients.py --port P --count N --mode latency|idle
        [--subscribe "*" | --run-ids-file FILE --offset K] [--watch-run RUN_ID]
        [--concurrency 50] [--max-seconds 600]

Opens COUNT connections to ws://127.0.0.1:P/ws (asyncio + ``websockets``), sends one
``subscribe`` per connection and waits for ``subscribed``. Then prints one line to stdout:

    READY {"ok": n, "failed": m, "connect_s": t, "errors": [...]}

and keeps every connection open and read until a line ``STOP`` (or EOF) arrives on stdin, or
MAX_SECONDS pass, whichever comes first. It then closes everything and prints

    RESULT {...}

``latency`` mode records, per connection, the wall-clock arrival time (``time.time()``) of each
``run_progress`` event of WATCH_RUN keyed by ``data.generated``; ``idle`` mode only drains.
Only 127.0.0.1 is used; the process always ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any, Dict, List, Optional

import websockets
from websockets.asyncio.client import connect

HOST = "127.0.0.1"


def raise_nofile(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Conn:
    __slots__ = ("ws", "arrivals", "task", "received")

    def __init__(self, ws):
        self.ws = ws
        self.arrivals: Dict[int, float] = {}
        self.task: Optional[asyncio.Task] = None
        self.received = 0


async def open_one(url: str, run_id: str, timeout: float, attempts: int = 4):
    last: Any = None
    for attempt in range(attempts):
        try:
            ws = await asyncio.wait_for(
                connect(url, compression=None, ping_interval=None, open_timeout=timeout,
                        close_timeout=2, max_queue=64),
                timeout + 1)
            try:
                await ws.send(json.dumps({"type": "subscribe", "run_id": run_id}))
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:  # bounded: stops at `subscribed` or deadline
                    raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
                    msg = json.loads(raw)
                    if msg.get("type") == "subscribed":
                        return ws
                    if msg.get("type") == "error":
                        raise RuntimeError("subscribe refused: %s" % msg.get("message"))
                raise TimeoutError("no 'subscribed' within %.0fs" % timeout)
            except BaseException:
                await ws.close()
                raise
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException, RuntimeError) as exc:
            last = exc
            await asyncio.sleep(0.2 * (attempt + 1))
    raise RuntimeError("%s: %s" % (type(last).__name__, last))


async def reader(conn: Conn, watch: Optional[str]) -> None:
    try:
        async for raw in conn.ws:
            t = time.time()
            conn.received += 1
            if watch is None:
                continue
            if '"run_progress"' not in raw:  # cheap pre-filter; parse only candidates
                continue
            msg = json.loads(raw)
            if msg.get("type") == "run_progress" and msg.get("run_id") == watch:
                gen = (msg.get("data") or {}).get("generated")
                if isinstance(gen, int) and gen not in conn.arrivals:
                    conn.arrivals[gen] = t
    except (websockets.exceptions.ConnectionClosed, OSError):
        pass


async def wait_stop(max_seconds: float) -> str:
    """Wait for a line (or EOF) on stdin without a thread, or for max_seconds."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    done: asyncio.Future = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not done.done() and (not data or b"\n" in data):
            done.set_result("stdin:" + (data.decode("utf-8", "replace").strip() or "EOF"))

    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(done, max_seconds)
    except asyncio.TimeoutError:
        return "max-seconds"
    finally:
        loop.remove_reader(fd)


async def amain(args) -> Dict[str, Any]:
    url = "ws://%s:%d/ws" % (HOST, args.port)
    if args.run_ids_file:
        with open(args.run_ids_file) as fh:
            ids = [line.strip() for line in fh if line.strip()]
    else:
        ids = [args.subscribe]
    sem = asyncio.Semaphore(args.concurrency)
    conns: List[Conn] = []
    errors: List[str] = []
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        run_id = ids[(args.offset + i) % len(ids)]
        async with sem:
            try:
                ws = await open_one(url, run_id, args.timeout)
            except Exception as exc:  # counted, reported
                errors.append(str(exc)[:200])
                return
        c = Conn(ws)
        c.task = asyncio.ensure_future(reader(c, args.watch_run if args.mode == "latency" else None))
        conns.append(c)

    await asyncio.gather(*(one(i) for i in range(args.count)))
    connect_s = time.perf_counter() - t0
    ready = {"ok": len(conns), "failed": len(errors), "connect_s": round(connect_s, 3),
             "errors": sorted(set(errors))[:5], "pid": os.getpid()}
    print("READY " + json.dumps(ready), flush=True)

    why = await wait_stop(args.max_seconds)
    cpu = time.process_time()
    result: Dict[str, Any] = {"stopped_by": why, "connections": len(conns), "cpu_s": round(cpu, 3),
                              "received": sum(c.received for c in conns),
                              "closed_early": sum(1 for c in conns if c.task is not None and c.task.done())}
    if args.mode == "latency":
        result["arrivals"] = [{str(k): v for k, v in c.arrivals.items()} for c in conns]
    # Close everything, bounded: a wedged close must not keep the process alive.
    for c in conns:
        if c.task is not None:
            c.task.cancel()
    closes = [asyncio.ensure_future(c.ws.close()) for c in conns]
    if closes:
        await asyncio.wait(closes, timeout=10)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--mode", choices=("latency", "idle"), default="idle")
    p.add_argument("--subscribe", default="*")
    p.add_argument("--run-ids-file")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--watch-run")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--max-seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    raise_nofile(args.count * 2 + 256)
    result = asyncio.run(amain(args))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
