"""The web dashboard and the static assets of the docs pages, served from themis_daemon/static.

Everything here is public HTML/CSS/JS; the API calls the pages make carry the API key the user
entered. Every answer carries a Content-Security-Policy that only allows this daemon, so the
pages (and the vendored Swagger UI / ReDoc bundles) can never load anything from elsewhere.
"""

from __future__ import annotations

import os
from typing import Any

import tornado.web

from .base import STANDARD_METHODS, ApiError, BaseHandler, _AnyMethod, request_id

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
DASHBOARD_DIR = os.path.join(STATIC_DIR, "dashboard")


def content_security_policy(handler: tornado.web.RequestHandler) -> str:
    """Same-origin only; inline styles (Swagger UI and ReDoc set them). Built from constants
    alone: never from request headers such as Host, which a client controls. `'self'` also
    allows WebSockets to this origin (CSP Level 3)."""
    return "; ".join((
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ))


def set_page_headers(handler: tornado.web.RequestHandler) -> None:
    handler.set_header("Content-Security-Policy", content_security_policy(handler))
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("Referrer-Policy", "no-referrer")
    handler.set_header("X-Request-Id", request_id(handler))


class StaticHandler(tornado.web.StaticFileHandler):
    """Static files with the CSP, revalidated by ETag, and JSON problem details for errors."""

    def set_default_headers(self) -> None:
        set_page_headers(self)
        self.set_header("Cache-Control", "no-cache")

    write_error = BaseHandler.write_error
    # Every method reaches prepare, so that a 405 names the allowed ones (RFC 9110).
    SUPPORTED_METHODS = _AnyMethod(STANDARD_METHODS)  # type: ignore[assignment]

    def prepare(self) -> None:
        if self.request.method not in ("GET", "HEAD"):
            method = self.request.method if self.request.method in STANDARD_METHODS else "not"
            raise ApiError(405, f"Method {method} allowed here; use GET, HEAD", headers={"Allow": "GET, HEAD"})

    async def get(self, path: str, include_body: bool = True) -> None:
        # A path outside the static folder (or not a file) is simply not found, as for the API;
        # so is one no file system can hold (a NUL byte), rather than a 500.
        if "\x00" in path:
            raise ApiError(404, "Not found: the path contains a NUL byte")
        try:
            await super().get(path, include_body)
        except tornado.web.HTTPError as exc:
            if exc.status_code in (403, 404):
                raise ApiError(404, f"Not found: {self.request.path}") from None
            raise

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return
        super().log_exception(typ, value, tb)


class DashboardRedirect(BaseHandler):
    public = True

    def get(self) -> None:
        # Relative, so it also works behind a reverse proxy that adds a path prefix.
        self.redirect("dashboard/", permanent=True)


default_handlers = [
    (r"/static/(.*)", StaticHandler, {"path": STATIC_DIR}),
    (r"/dashboard", DashboardRedirect),
    (r"/dashboard/(.*)", StaticHandler, {"path": DASHBOARD_DIR, "default_filename": "index.html"}),
]
