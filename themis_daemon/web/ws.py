"""WebSocket /ws: subscriptions per run and a hub that fans run events out to clients.

Each client has its own bounded queue and its own sender coroutine, so a slow or stuck client
only ever delays itself: queued progress for one run coalesces to the newest, final events
are never dropped, and a client whose queue still overflows is disconnected.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Deque, Dict, NamedTuple, Optional, Set

import tornado.web
import tornado.websocket

from .. import jsonutil
from ..validation import describe
from .base import ApiError, BaseHandler, origin_allowed

log = logging.getLogger("themis_daemon.ws")

ALL = "*"
COALESCING = {"run_progress"}
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_LATER = 1013
CLOSE = "_close"  # the kind of a queued close: sent after the messages queued before it


class Outgoing(NamedTuple):
    """A queued message, encoded once however many clients it goes to."""

    kind: Optional[str]
    run_id: Optional[str]
    seq: Optional[int]
    text: str
    close_code: Optional[int] = None

    @classmethod
    def of(cls, message: Dict[str, Any]) -> "Outgoing":
        return cls(message.get("type"), message.get("run_id"), message.get("seq"), jsonutil.dumps(message))


class Client:
    """One connection's subscriptions and outgoing queue."""

    def __init__(self, hub: "Hub", handler: "WebSocketHandler"):
        self.hub = hub
        self.handler = handler
        self.subscriptions: Set[str] = set()
        self.queue: Deque[Outgoing] = deque()
        self._wakeup = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self.closed = False
        self.dropped = 0

    def wants(self, run_id: Optional[str]) -> bool:
        return ALL in self.subscriptions or (run_id is not None and run_id in self.subscriptions)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._pump())

    def send(self, message: Any) -> None:
        """Queue a message (a dict or an Outgoing); never blocks, whatever the client's speed."""
        if self.closed:
            return
        if not isinstance(message, Outgoing):
            message = Outgoing.of(message)
        if message.kind in COALESCING:
            for i, queued in enumerate(self.queue):
                if queued.kind == message.kind and queued.run_id == message.run_id:
                    del self.queue[i]
                    self.dropped += 1
                    self.hub.stats["events_coalesced"] += 1
                    break
        self.queue.append(message)
        if len(self.queue) > self.hub.settings.queue_size:
            self._shed()
        self._wakeup.set()

    def _shed(self) -> None:
        # Drop the oldest progress events first; final events are never dropped.
        for i, queued in enumerate(self.queue):
            if queued.kind in COALESCING:
                del self.queue[i]
                self.dropped += 1
                self.hub.stats["events_dropped"] += 1
                return
        log.warning("disconnecting a client that does not read its events (%d queued)", len(self.queue))
        self.hub.stats["clients_disconnected_slow"] += 1
        self.close(CLOSE_TRY_LATER, "client too slow: event queue overflow")

    async def _pump(self) -> None:
        while not self.closed:
            if not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            message = self.queue.popleft()
            if message.kind == CLOSE:
                self.close(message.close_code or CLOSE_POLICY, message.text)
                break
            try:
                await self.handler.write_message(message.text)
            except (tornado.websocket.WebSocketClosedError, tornado.iostream.StreamClosedError):
                break
            except Exception:
                # Never leave a connection open but silent: the client sees a close code and
                # reconnects, the other clients are not affected.
                log.exception("sending to a WebSocket client failed; closing that connection")
                self.hub.stats["clients_closed_on_error"] += 1
                self.close(CLOSE_INTERNAL_ERROR, "internal error")
                break
            if message.seq is not None:
                self.hub.stats["events_sent"] += 1
        self.closed = True

    def close_after_queue(self, code: int, reason: str) -> None:
        """Close once what is already queued (an error reply) has been sent."""
        if not self.closed:
            self.queue.append(Outgoing(CLOSE, None, None, reason, code))
            self._wakeup.set()

    def detach(self) -> None:
        """Stop sending: the sender coroutine wakes up and ends."""
        self.closed = True
        self._wakeup.set()

    def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.detach()
            try:
                self.handler.close(code, reason)
            except Exception:
                pass


class Hub:
    """Assigns sequence numbers, keeps a bounded replay buffer and fans events out."""

    def __init__(self, settings: Any):
        self.settings = settings
        self.seq = 0
        self.buffer: Deque[Outgoing] = deque(maxlen=max(settings.replay_buffer, 1))
        self.clients: Set[Client] = set()
        self.stats = {"events_published": 0, "events_sent": 0, "events_dropped": 0,
                      "events_coalesced": 0, "clients_disconnected_slow": 0, "clients_closed_on_error": 0}

    def publish(self, event: Dict[str, Any]) -> Dict[str, Any]:
        # A `seq` derived from store positions (see monitor.positional_seq) is kept when it moves
        # forward; anything else is numbered after the newest sequence number.
        wanted = event.get("seq")
        self.seq = wanted if isinstance(wanted, int) and wanted > self.seq else self.seq + 1
        event = dict(event, seq=self.seq)
        self.stats["events_published"] += 1
        out = Outgoing.of(event)
        if self.settings.replay_buffer:
            self.buffer.append(out)
        for client in list(self.clients):
            if client.wants(out.run_id):
                client.send(out)
        return event

    def replay(self, run_id: str, since: int) -> tuple:
        """Buffered events after `since` for `run_id`, and whether the buffer reaches back."""
        oldest = self.buffer[0].seq if self.buffer else self.seq + 1
        complete = since >= oldest - 1 or since >= self.seq
        events = [e for e in self.buffer if e.seq > since and (run_id == ALL or e.run_id == run_id)]
        return events, complete, oldest

    def subscriptions(self) -> int:
        return sum(len(c.subscriptions) for c in self.clients)

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for client in list(self.clients):
            client.close(code, reason)


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    """The /ws protocol of the reference, plus `*`, `since` replay and `run_state` snapshots."""

    client: Optional[Client] = None

    @property
    def daemon(self):
        return self.application.settings["daemon"]

    def prepare(self) -> None:
        # Refusals happen here, before the upgrade, with a JSON body and a real status code.
        self.daemon.ensure_started()
        ticket = self.get_query_argument("ticket", None)
        if ticket is not None and self.daemon.api_keys:
            if not self.daemon.tickets.redeem(ticket, self.daemon.api_keys):
                raise ApiError(403, "Invalid, expired or already used WebSocket ticket; "
                                    "get a new one with POST /api/ws-ticket")
        else:
            BaseHandler.check_api_key(self, allow_query=True)
        hub = self.daemon.hub
        if len(hub.clients) >= self.daemon.settings.websocket.max_connections:
            raise ApiError(503, "Too many WebSocket connections")

    write_error = BaseHandler.write_error

    async def get(self, *args: Any, **kwargs: Any) -> None:
        # A plain GET (no upgrade) gets a JSON problem like every other route, not Tornado's text.
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(400, 'GET /ws needs a WebSocket upgrade ("Upgrade: websocket")')
        await super().get(*args, **kwargs)
    set_default_headers = lambda self: None  # noqa: E731 - the upgrade response sets its own

    def check_origin(self, origin: str) -> bool:
        allowed = self.daemon.settings.cors.allow_origins
        return origin_allowed(origin, allowed) or super().check_origin(origin)

    def open(self) -> None:
        self.client = Client(self.daemon.hub, self)
        self.daemon.hub.clients.add(self.client)
        self.client.start()

    def on_close(self) -> None:
        if self.client is not None:
            self.client.detach()
            self.daemon.hub.clients.discard(self.client)

    def reply(self, message: Dict[str, Any]) -> None:
        if self.client is not None:
            self.client.send(message)

    def error(self, message: str, **extra: Any) -> None:
        self.reply({"type": "error", "message": message, **extra})

    async def on_message(self, raw: Any) -> None:
        try:
            await self._on_message(raw)
        except Exception:
            log.exception("handling a WebSocket message failed; closing that connection")
            if self.client is not None:
                self.client.close(CLOSE_INTERNAL_ERROR, "internal error")

    async def _on_message(self, raw: Any) -> None:
        try:
            msg = jsonutil.loads_strict(raw)
        except jsonutil.InvalidJSON as exc:
            self.error("Invalid JSON mapping", detail=str(exc))
            if "depth limit" in str(exc) and self.client is not None:
                # Nothing legitimate nests this deep: end the conversation with a close code.
                self.client.close_after_queue(CLOSE_POLICY, "message nested too deeply")
            return
        if not isinstance(msg, dict):
            self.error("Invalid JSON mapping")
            return
        kind = msg.get("type")
        if kind not in ("ping", "subscribe", "unsubscribe"):
            self.error(f"Unknown message type: {kind}")
            return
        problems = describe("ws_client_message", msg)
        if problems:
            first = problems[0]
            self.error(f"Invalid {kind} message: {first['pointer'] or '/'}: {first['message']}", errors=problems)
            return
        if kind == "subscribe":
            # Answer from a scanned store, so a known run always gets its run_state.
            await self.daemon.monitor.ensure_fresh()
        getattr(self, f"handle_{kind}")(msg)

    # `handle_*`, not `on_*`: Tornado calls `on_ping(data)` for protocol-level pings, which
    # are answered by the protocol itself and must not produce a JSON pong.
    def handle_ping(self, msg: Dict[str, Any]) -> None:
        self.reply({"type": "pong"})

    def handle_subscribe(self, msg: Dict[str, Any]) -> None:
        run_id = msg["run_id"]
        client = self.client
        hub = self.daemon.hub
        limit = self.daemon.settings.websocket.max_subscriptions
        if run_id not in client.subscriptions and len(client.subscriptions) >= limit:
            self.error(f"Too many subscriptions (limit {limit})", run_id=run_id)
            return
        client.subscriptions.add(run_id)
        self.reply({"type": "subscribed", "run_id": run_id, "last_seq": hub.seq})
        since = msg.get("since")
        if since is not None:
            events, complete, oldest = hub.replay(run_id, since)
            if not complete:
                self.reply({"type": "replay_incomplete", "run_id": run_id, "since": since,
                            "oldest_seq": oldest,
                            "message": f"events after seq {since} are no longer buffered; replay starts at {oldest}"})
            for ev in events:
                self.reply(ev)
        summary = self.daemon.monitor.summary(run_id) if run_id != ALL else None
        if summary is not None:
            self.reply({"type": "run_state", "run_id": run_id, "data": summary})

    def handle_unsubscribe(self, msg: Dict[str, Any]) -> None:
        self.client.subscriptions.discard(msg["run_id"])
        self.reply({"type": "unsubscribed", "run_id": msg["run_id"]})


class WsTicketHandler(BaseHandler):
    """POST /api/ws-ticket: a single-use ticket, valid for 30 s, to open /ws?ticket=... from a
    browser, which cannot set headers on a WebSocket (the key stays out of URLs and logs)."""

    def post(self) -> None:
        ticket = self.daemon.tickets.issue(self.daemon.api_keys)
        self.set_header("Cache-Control", "no-store")
        self.write_json({"ticket": ticket, "expires_in": int(self.daemon.tickets.TTL)}, 201)


default_handlers = [
    (r"/ws", WebSocketHandler),
    (r"/api/ws-ticket", WsTicketHandler),
]
