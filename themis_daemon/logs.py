"""Log output: human lines or JSON objects, without timestamps when journald adds its own."""

from __future__ import annotations

import json
import logging
import os
import sys

from .config import Settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if not os.environ.get("JOURNAL_STREAM"):
            out["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.json:
        handler.setFormatter(JsonFormatter())
    else:
        # journald stamps every line itself; do not print a second timestamp there.
        fmt = "%(levelname)s %(name)s: %(message)s"
        if not os.environ.get("JOURNAL_STREAM"):
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level.upper())
    logging.getLogger("tornado.access").setLevel(
        settings.logging.level.upper() if settings.logging.access_log else "WARNING")

