"""GET /openapi.json, Swagger UI at /docs and ReDoc at /redoc, all working offline.

The document is built from the schema files (see themis_daemon.openapi); the two viewers are
vendored under themis_daemon/static/vendor and configured by small scripts in static/docs, as
the Content-Security-Policy forbids inline scripts and any other origin.
"""

from __future__ import annotations

import functools
import html

from .. import __version__, jsonutil
from ..openapi import build_openapi
from .base import BaseHandler
from .dashboard import set_page_headers

TITLE = "Themis daemon API"


@functools.lru_cache(maxsize=1)
def openapi_bytes() -> bytes:
    return jsonutil.dumpb(build_openapi())


class OpenAPIHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.finish(openapi_bytes())


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
{head}
</head>
<body{body_attrs}>
{nav}
{body}
</body>
</html>
"""


# The dashboard and both API viewers link to one another; relative, as every other URL here.
LINKS = (("dashboard", "dashboard/", "Dashboard"), ("docs", "docs", "Swagger UI"), ("redoc", "redoc", "ReDoc"),
         ("openapi", "openapi.json", "openapi.json"))


def nav(current: str) -> str:
    items = []
    for key, href, label in LINKS:
        attrs = ' aria-current="page"' if key == current else ""
        items.append(f'<a href="{href}"{attrs}>{html.escape(label)}</a>')
    return '<nav class="doc-links" aria-label="Themis daemon pages">' + " ".join(items) + "</nav>"


class _PageHandler(BaseHandler):
    public = True
    page = ""
    head = ""
    body = ""
    body_attrs = ""
    title = TITLE

    def set_default_headers(self) -> None:
        super().set_default_headers()
        set_page_headers(self)
        self.set_header("Content-Type", "text/html; charset=utf-8")

    def get(self) -> None:
        self.finish(PAGE.format(title=html.escape(f"{self.title} {__version__}"), head=self.head,
                                nav=nav(self.page), body=self.body, body_attrs=self.body_attrs))


class SwaggerUIHandler(_PageHandler):
    page = "docs"
    title = TITLE + " – Swagger UI"
    head = '<link rel="stylesheet" href="static/vendor/swagger-ui/swagger-ui.css">\n' \
           '<link rel="stylesheet" href="static/docs/docs.css">'
    body = ('<div id="swagger-ui" data-spec-url="openapi.json"></div>\n'
            '<script src="static/vendor/swagger-ui/swagger-ui-bundle.js"></script>\n'
            '<script src="static/docs/swagger-init.js"></script>')


class RedocHandler(_PageHandler):
    page = "redoc"
    title = TITLE + " – ReDoc"
    head = '<link rel="stylesheet" href="static/docs/docs.css">'
    body_attrs = ' class="redoc-page"'
    body = ('<div id="redoc" data-spec-url="openapi.json"></div>\n'
            '<script src="static/vendor/redoc/redoc.standalone.js"></script>\n'
            '<script src="static/docs/redoc-init.js"></script>')


default_handlers = [
    (r"/openapi.json", OpenAPIHandler),
    (r"/docs/?", SwaggerUIHandler),
    (r"/redoc/?", RedocHandler),
]
