"""Readers by backend name (also how scan worker processes rebuild the reader they need)."""

from __future__ import annotations

from typing import Any

from .reader import EventReader


def make_reader(kind: str, location: str, **options: Any) -> EventReader:
    if kind == "sqlite":
        from .sqlite import SqliteReader

        return SqliteReader(location, **options)
    if kind == "jsonl":
        from .jsonl import JsonlReader

        return JsonlReader(location, **options)
    if kind == "postgres":
        from .postgres import PostgresReader

        return PostgresReader(location, **options)
    raise ValueError(f"unknown Themis 4 backend {kind!r}")
