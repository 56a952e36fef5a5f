"""Themis 4 (themis-eval 4.x) event-sourced stores: SQLite, JSONL and PostgreSQL.

`fold.py` is the pure event fold; `sqlite.py`, `jsonl.py` and `postgres.py` are readers behind
`reader.EventReader`; `source.py` turns a reader into a source the daemon serves.
"""
