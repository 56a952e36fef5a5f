"""The one place that owns JSON bodies, problem-details errors, API keys and CORS."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import http.client
import itertools
import logging
import os
import re
from typing import Any, Callable, Dict, Iterable, List, Optional

import tornado.web

from .. import jsonutil

log = logging.getLogger("themis_daemon.web")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _new_rid_series() -> None:
    global _RID_PREFIX, _RID_COUNTER
    _RID_PREFIX = os.urandom(4).hex()  # this process's: ids of workers and replicas differ
    _RID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))


_new_rid_series()
os.register_at_fork(after_in_child=_new_rid_series)  # forked workers start a series of their own


def new_request_id() -> str:
    """16 hex characters, unique within this process and (by its random half) across processes;
    a counter, as a UUID per request was a measurable share of a cached answer."""
    return "%s%08x" % (_RID_PREFIX, next(_RID_COUNTER) & 0xFFFFFFFF)


def request_id(handler: Any) -> str:
    """The caller's X-Request-Id when it is sane (so nginx's id flows through), else a new one."""
    rid = getattr(handler, "_request_id", None)
    if rid is None:
        given = handler.request.headers.get("X-Request-Id", "")
        rid = given if REQUEST_ID.match(given) else new_request_id()
        handler._request_id = rid
    return rid


def problem(status: int, detail: str, **extra: Any) -> Dict[str, Any]:
    """An RFC 9457 problem-details body."""
    body: Dict[str, Any] = {"type": "about:blank", "title": http.client.responses.get(status, "Error"),
                            "status": status, "detail": detail}
    body.update(extra)
    return body


class ApiError(tornado.web.HTTPError):
    """An error whose `detail` is shown to the client (HTTPError's log_message is not)."""

    def __init__(self, status: int, detail: str, headers: Optional[Dict[str, str]] = None, **extra: Any):
        super().__init__(status, "%s", detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def origin_allowed(origin: Optional[str], allowed: Iterable[str]) -> bool:
    if not origin:
        return False
    for pattern in allowed:
        if pattern == "*" or pattern == origin or fnmatch.fnmatchcase(origin, pattern):
            return True
    return False


def key_matches(candidate: str, keys: List[str]) -> bool:
    """Constant-time comparison against every key, so timing reveals neither key nor position."""
    cand = hashlib.sha256(candidate.encode("utf-8", "surrogatepass")).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(cand, hashlib.sha256(key.encode("utf-8")).digest())
    return found


def request_key_from(headers: Any) -> Optional[str]:
    """The API key a request's headers carry (X-API-Key, else Authorization: Bearer)."""
    key = headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def request_key(handler: tornado.web.RequestHandler, allow_query: bool = False) -> Optional[str]:
    key = request_key_from(handler.request.headers)
    if key is not None:
        return key
    if allow_query:
        token = handler.get_query_argument("token", None)
        if token:
            return token
    return None


class Tickets:
    """Short-lived single-use tickets that let a browser open /ws without putting its API key
    in the URL (where proxies and access logs would keep it).

    A ticket is an expiry and a random nonce, signed with a secret derived from the configured
    keys, so every worker and replica with the same keys accepts it; each process remembers the
    nonces it has redeemed until they expire.
    """

    TTL = 30.0
    MAX_REMEMBERED = 100_000

    def __init__(self, clock=None):
        import time

        self.clock = clock or time.time
        self._used: Dict[bytes, float] = {}

    @staticmethod
    def _secret(keys: List[str]) -> bytes:
        material = "\0".join(sorted(keys)).encode("utf-8", "surrogatepass")
        return hashlib.sha256(b"themis-daemon ws ticket\0" + material).digest()

    def issue(self, keys: List[str]) -> str:
        import base64
        import os

        payload = int(self.clock() + self.TTL).to_bytes(8, "big") + os.urandom(16)
        mac = hmac.new(self._secret(keys), payload, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(payload + mac).decode("ascii").rstrip("=")

    def redeem(self, ticket: str, keys: List[str]) -> bool:
        import base64
        import binascii

        try:
            raw = base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4))
        except (binascii.Error, ValueError):
            return False
        if len(raw) != 40:
            return False
        payload, mac = raw[:24], raw[24:]
        if not hmac.compare_digest(mac, hmac.new(self._secret(keys), payload, hashlib.sha256).digest()[:16]):
            return False
        now = self.clock()
        expires = int.from_bytes(payload[:8], "big")
        if expires < now or payload in self._used:
            return False
        if len(self._used) >= self.MAX_REMEMBERED:
            self._used = {k: t for k, t in self._used.items() if t >= now}
            if len(self._used) >= self.MAX_REMEMBERED:
                return False  # a flood of valid tickets: refuse rather than grow
        self._used[payload] = expires
        return True


STANDARD_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")


class _AnyMethod(tuple):
    """Lets every method through Tornado's early 405, so the key is checked first and the 405
    names the allowed methods (see BaseHandler.prepare)."""

    def __contains__(self, item: object) -> bool:
        return True


class BaseHandler(tornado.web.RequestHandler):
    """Shared behaviour of every HTTP route: JSON in and out, errors as RFC 9457 problems."""

    SUPPORTED_METHODS = _AnyMethod(STANDARD_METHODS)  # type: ignore[assignment]
    # Routes that stay public when API keys are configured.
    public = False

    def allowed_methods(self) -> List[str]:
        base = tornado.web.RequestHandler
        return [m for m in STANDARD_METHODS
                if m == "OPTIONS" or getattr(type(self), m.lower(), None) is not getattr(base, m.lower(), None)]

    @property
    def daemon(self):
        return self.application.settings["daemon"]

    @property
    def config(self):
        return self.daemon.settings

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Request-Id", request_id(self))
        self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        cors = self.daemon.settings.cors
        if not origin or not origin_allowed(origin, cors.allow_origins):
            return
        if "*" in cors.allow_origins and not cors.allow_credentials:
            self.set_header("Access-Control-Allow-Origin", "*")
        else:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.add_header("Vary", "Origin")
        if cors.allow_credentials:
            self.set_header("Access-Control-Allow-Credentials", "true")
        self.set_header("Access-Control-Expose-Headers", "ETag, X-Total-Count, X-Request-Id")

    def options(self, *args: Any) -> None:
        """CORS preflight; answered without authentication as browsers send no credentials."""
        cors = self.daemon.settings.cors
        origin = self.request.headers.get("Origin")
        if origin and origin_allowed(origin, cors.allow_origins):
            self.set_header("Access-Control-Allow-Methods", ", ".join(cors.allow_methods))
            requested = self.request.headers.get("Access-Control-Request-Headers")
            allowed = cors.allow_headers
            if "*" in allowed and requested:
                self.set_header("Access-Control-Allow-Headers", requested)
            else:
                self.set_header("Access-Control-Allow-Headers", ", ".join(allowed))
            self.set_header("Access-Control-Max-Age", str(cors.max_age))
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    def prepare(self) -> None:
        self.daemon.ensure_started()
        method = self.request.method
        if method != "OPTIONS" and not self.public:
            self.check_api_key()  # before anything else: an unknown method learns nothing either
        allowed = self.allowed_methods()
        if method not in allowed:
            raise ApiError(405, f"Method {method if method in STANDARD_METHODS else 'not'} allowed here; "
                                f"use {', '.join(allowed)}", headers={"Allow": ", ".join(allowed)})

    def check_api_key(self, allow_query: bool = False) -> None:
        keys = self.daemon.api_keys
        if not keys:
            return
        given = request_key(self, allow_query)
        if given is None:
            raise ApiError(401, "API key required: send it as X-API-Key or Authorization: Bearer",
                           headers={"WWW-Authenticate": 'Bearer realm="themis-daemon"'})
        if not key_matches(given, keys):
            raise ApiError(403, "Invalid API key")

    # ------------------------------------------------------------------ bodies

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(jsonutil.dumpb(obj))

    def resolve_run(self, ref: str) -> str:
        """A full run id: Themis 4 runs may be named by a unique prefix of >= 8 hex characters."""
        from ..storage import AmbiguousRun, RunNotFound

        try:
            return self.daemon.store.resolve(ref)
        except AmbiguousRun as exc:
            raise ApiError(404, f"Run not found: {ref} is a prefix of {exc.matches} runs; give more characters",
                           matches=exc.matches) from None
        except RunNotFound:
            raise ApiError(404, f"Run not found: {ref}") from None

    async def read_store(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Storage reads run in the work pool; a run removed meanwhile is a 404, and a store that
        cannot be read right now a 503 the client may retry."""
        from ..storage import RunNotFound, Unavailable

        try:
            return await asyncio.get_running_loop().run_in_executor(self.daemon.executor, fn, *args)
        except RunNotFound as exc:
            raise ApiError(404, f"Run not found: {exc.args[0]}") from None
        except Unavailable as exc:
            raise ApiError(503, f"{what} cannot be read right now: {exc}", headers={"Retry-After": "1"}) from None

    def json_body(self) -> Any:
        # `curl -d` labels JSON as a form; what matters is that the body parses as JSON.
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype.startswith("multipart/"):
            raise ApiError(415, f"Unsupported content type {ctype!r}: send application/json")
        body = self.request.body
        if not body or not body.strip():
            raise ApiError(400, "Invalid JSON body: the body is empty")
        try:
            return jsonutil.loads_strict(body)
        except jsonutil.InvalidJSON as exc:
            raise ApiError(400, f"Invalid JSON body: {exc}") from None

    def query_int(self, name: str, default: Optional[int], minimum: int = 0,
                  maximum: Optional[int] = None) -> Optional[int]:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw, 10)
        except ValueError:
            raise ApiError(400, f"Query parameter '{name}' must be an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ApiError(400, f"Query parameter '{name}' must be {bound}, got {value}")
        return value

    def query_bool(self, name: str, default: bool) -> bool:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ApiError(400, f"Query parameter '{name}' must be true or false, got {raw!r}")

    # ------------------------------------------------------------------ errors

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        title = http.client.responses.get(status_code, "Error")
        if isinstance(exc, ApiError):
            body = problem(status_code, exc.detail, **exc.extra)
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, tornado.web.HTTPError) and status_code < 500:
            body = problem(status_code, exc.reason or title)
        elif status_code >= 500:
            body = problem(status_code, "Internal server error", request_id=request_id(self))
        else:
            body = problem(status_code, self._reason or title)
        self.set_header("Content-Type", "application/problem+json")
        self.clear_header("ETag")
        self.finish(jsonutil.dumpb(body))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return  # client errors are answered, not logged as failures
        super().log_exception(typ, value, tb)


class NotFoundHandler(BaseHandler):
    """JSON 404 for any unknown path, instead of Tornado's HTML page."""

    public = True

    def prepare(self) -> None:
        raise ApiError(404, f"Not found: {self.request.path}")
