"""Run list and run detail, served from the store's cache (no file is read for unchanged runs)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

from .. import jsonutil
from ..storage import STATUSES, RunNotFound
from .base import ApiError, BaseHandler
from .replay import Recorder, Recording

SORT_KEYS = ("created_at", "updated_at", "completed_at", "run_id", "experiment_id", "status",
             "progress", "num_samples")
MAX_PAGE = 100_000
GZIP_MIN = 1024  # smaller bodies are not worth compressing


def _sort_key(field: str):
    def key(summary: Dict[str, Any]) -> Tuple:
        value = summary.get(field)
        # None sorts before every value, whatever its type.
        return (value is not None, value if value is not None else 0, summary["run_id"])
    return key


class _Compressed:
    """gzip variants of recently served cached bodies, by ETag: compressing a run list or a
    big detail for every client that accepts gzip cost more than everything else a request
    does (about 6x fewer list answers per second)."""

    MAX = 64
    items: "OrderedDict[str, bytes]" = OrderedDict()
    lock = threading.Lock()

    @classmethod
    def get(cls, etag: str) -> Optional[bytes]:
        with cls.lock:
            return cls.items.get(etag)

    @classmethod
    def put(cls, etag: str, data: bytes) -> None:
        with cls.lock:
            cls.items[etag] = data
            while len(cls.items) > cls.MAX:
                cls.items.popitem(last=False)


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, 6, mtime=0)


class CachedBodyMixin:
    """Serve a pre-encoded body with an ETag computed once per cached body (and its gzip
    variant compressed once, off the IOLoop)."""

    _etag: Optional[str] = None

    async def send_cached(self, body: bytes, etag: str) -> None:
        self._etag = etag
        self._record_for_replay()
        if len(body) >= GZIP_MIN and "gzip" in self.request.headers.get("Accept-Encoding", "") \
                and self.request.headers.get("If-None-Match") != etag:
            packed = _Compressed.get(etag)
            if packed is None:
                loop = asyncio.get_running_loop()
                packed = await loop.run_in_executor(self.daemon.executor, _gzip, body)
                _Compressed.put(etag, packed)
            # Tornado's own compression leaves a body that already names its encoding alone.
            self.set_header("Content-Encoding", "gzip")
            body = packed
        self.finish(body)

    def compute_etag(self) -> Optional[str]:
        return self._etag or super().compute_etag()

    # The state a handler's answer showed, when its answer may be replayed (see replay.py).
    replay_token: Any = None

    def _record_for_replay(self) -> None:
        token, replays = self.replay_token, getattr(self.daemon, "replays", None)
        if token is None or replays is None or self.request.method != "GET":
            return
        request, name, metrics = self.request, type(self).__name__, self.daemon.metrics

        def done(rec: Recorder) -> None:
            code = rec.start_line.code if rec.start_line is not None else 0
            if code in (200, 304) and code == self.get_status():
                counter, latency = metrics.counters_for(name, "GET", code)
                replays.record(request, Recording(rec.start_line, rec.headers, b"".join(rec.chunks), token,
                                                  name, counter, latency))

        request.connection = Recorder(request.connection, done)


def _etag(body: bytes) -> str:
    return '"%s"' % hashlib.blake2b(body, digest_size=12).hexdigest()


class RunsHandler(CachedBodyMixin, BaseHandler):
    async def get(self) -> None:
        statuses = self._statuses()
        experiment = self.get_query_argument("experiment_id", None)
        sort = self.get_query_argument("sort", "-created_at")
        field = sort[1:] if sort.startswith("-") else sort
        if field not in SORT_KEYS:
            raise ApiError(400, f"Unknown sort key {sort!r}; use one of {', '.join(SORT_KEYS)} (prefix '-' for descending)")
        limit = self.query_int("limit", None, 0, MAX_PAGE)
        offset = self.query_int("offset", 0, 0)
        await self.daemon.monitor.ensure_fresh()
        monitor = self.daemon.monitor
        token = self.current_token(self.daemon)
        key = ("runs", monitor.generation, monitor.stall_generation, statuses, experiment, sort, limit, offset)
        hit = self.daemon.cache.get(key)
        if hit is None:
            items: List[Dict[str, Any]] = monitor.summaries()
            if statuses:
                items = [s for s in items if s["status"] in statuses]
            if experiment is not None:
                items = [s for s in items if s["experiment_id"] == experiment]
            if sort != "-created_at":
                items.sort(key=_sort_key(field), reverse=sort.startswith("-"))
            total = len(items)
            page = items[offset:] if limit is None else items[offset:offset + limit]
            body = jsonutil.dumpb(page)
            hit = (body, _etag(body), total)
            self.daemon.cache.put(key, hit, group="runs", version=key[1:3])
        body, etag, total = hit
        self.set_header("X-Total-Count", str(total))
        self.replay_token = token
        await self.send_cached(body, etag)

    @staticmethod
    def current_token(daemon: Any) -> Any:
        """What a list answer depends on besides the request: the store's state (while it is
        fresh enough to answer without a refresh) and the settings."""
        monitor = daemon.monitor
        if not monitor.is_fresh():
            return None
        return (monitor.generation, monitor.stall_generation, daemon.settings_version)

    def _statuses(self) -> Optional[Tuple[str, ...]]:
        raw = self.get_query_arguments("status")
        if not raw:
            return None
        parts = [p.strip() for r in raw for p in r.split(",")]
        if "" in parts:
            raise ApiError(400, f"Query parameter 'status' has an empty value; use one or several of "
                                f"{', '.join(STATUSES + ('unknown',))}, comma-separated")
        wanted = tuple(sorted(set(parts)))
        bad = [s for s in wanted if s not in STATUSES + ("unknown",)]
        if bad:
            raise ApiError(400, f"Unknown status {bad[0]!r}; use one of {', '.join(STATUSES + ('unknown',))}")
        return wanted or None


class RunHandler(CachedBodyMixin, BaseHandler):
    async def get(self, run_id: str) -> None:
        offset = self.query_int("samples_offset", 0, 0)
        limit = self.query_int("samples_limit", None, 0, MAX_PAGE)
        pending = self.query_bool("include_pending", False)
        await self.daemon.monitor.ensure_fresh()
        run_id = self.resolve_run(run_id)
        state = self._state(run_id)
        stalled = run_id in self.daemon.monitor.stalled
        page = (offset, limit, pending)
        hit = self.daemon.cache.get(("run", run_id, state.version, stalled, page))
        if hit is None:
            body, etag, version = await self.read_store("Run details", self._render, run_id, stalled, page)
            hit = (body, etag)
            self.daemon.cache.put(("run", run_id, version, stalled, page), hit, group=("run", run_id),
                                  version=(version, stalled))
        await self.send_cached(*hit)

    def _render(self, run_id: str, stalled: bool, page: Tuple[int, Optional[int], bool]) -> Tuple[bytes, str, int]:
        detail, version = self.daemon.store.detail_versioned(run_id, *page, encoded=True)
        detail["stalled"] = stalled
        body = jsonutil.dumpb_sliced(detail, "samples")
        return body, _etag(body), version  # hashing megabytes is no work for the loop either

    def _state(self, run_id: str):
        try:
            return self.daemon.store.get(run_id)
        except RunNotFound:
            raise ApiError(404, f"Run not found: {run_id}") from None

    async def delete(self, run_id: str) -> None:
        await self.daemon.monitor.ensure_fresh()
        self._state(self.resolve_run(run_id))
        raise ApiError(501, "Delete not implemented: themis-daemon serves the storage read-only")


default_handlers = [
    (r"/api/runs/?", RunsHandler),
    (r"/api/runs/([^/]+)", RunHandler),
]
