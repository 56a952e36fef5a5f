"""Incremental readers for Themis JSONL files, plain or gzip (one member per appended line).

Writers append whole units (a line, or a gzip member) but a reader can race them and see a
torn tail. These readers consume only complete units, remember the byte offset after the last
one and pick up the rest on the next call, so a torn tail is never mistaken for corruption.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any, List, NamedTuple, Optional, Tuple

try:  # a C parser several times faster than json; json remains the reference and the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    _orjson = None

HEADER_TYPE = "header"
# zlib is fed at most this much at a time, so finding the end of one small gzip member never
# copies the rest of a large file (which made decoding quadratic in the file size).
CHUNK = 16 * 1024


class CorruptFile(Exception):
    """A complete unit that cannot be decoded: the file is damaged, not merely being written."""


class Unit(NamedTuple):
    """Where a decoded object lives in its file, so its text can be loaded again on demand."""

    offset: int
    length: int
    index: int  # line index inside the unit (a gzip member may hold several lines)


def loads(line: bytes) -> Any:
    """Parse one JSON line as Themis' loaders do: last duplicate key wins, NaN/Infinity accepted.

    orjson keeps the last duplicate too but rejects non-finite tokens, so those lines (rare)
    go through the standard parser.
    """
    if _orjson is not None:
        try:
            return _orjson.loads(line)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(line)


def is_header(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("_type") == HEADER_TYPE


def _split_lines(data: bytes) -> List[bytes]:
    return [ln for ln in data.split(b"\n") if ln.strip()]


def decode_units(data: bytes, base: int, gz: bool) -> Tuple[List[Tuple[Unit, bytes]], int]:
    """Split `data` (read from file offset `base`) into complete units.

    Returns (units as (Unit, raw line bytes), bytes consumed).
    """
    out: List[Tuple[Unit, bytes]] = []
    if not gz:
        pos = 0
        end = data.rfind(b"\n") + 1  # only newline-terminated lines are complete
        while pos < end:
            nl = data.index(b"\n", pos)
            line = data[pos:nl]
            if line.strip():
                out.append((Unit(base + pos, nl - pos, 0), line))
            pos = nl + 1
        return out, end
    pos = 0
    n = len(data)
    view = memoryview(data)
    while pos < n:
        member = _gunzip_member(view, pos, base)
        if member is None:
            break  # truncated last member: the writer is still appending it
        text, length = member
        for i, line in enumerate(_split_lines(text)):
            out.append((Unit(base + pos, length, i), line))
        pos += length
    return out, pos


def _gunzip_member(view: memoryview, pos: int, base: int) -> Optional[Tuple[bytes, int]]:
    """Decompress the gzip member starting at `pos`: (text, member length), or None if cut short."""
    d = zlib.decompressobj(wbits=31)
    parts = []
    cur = pos
    n = len(view)
    try:
        while cur < n:
            chunk = view[cur:cur + CHUNK]
            parts.append(d.decompress(chunk))
            if d.eof:
                return b"".join(parts), cur + len(chunk) - len(d.unused_data) - pos
            cur += len(chunk)
    except zlib.error as exc:
        raise CorruptFile(f"bad gzip member at byte {base + pos}: {exc}") from exc
    return None


class JsonlTail:
    """Follows one append-only JSONL file by byte offset, so each byte is decoded once."""

    def __init__(self, path: str, gz: bool):
        self.path = path
        self.gz = gz
        self.offset = 0
        self.sig: Optional[Tuple[int, int, int]] = None  # (inode, size, mtime_ns) at last read
        self.bad_lines = 0

    def changed(self) -> Optional[os.stat_result]:
        """Return the stat result if the file moved since the last read, else None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        if self.sig is not None and (st.st_ino, st.st_size, st.st_mtime_ns) == self.sig:
            return None
        return st

    def read_new(self, st: Optional[os.stat_result] = None) -> Tuple[bool, List[Tuple[Unit, Any]]]:
        """Decode the complete units appended since the last call.

        Returns (reset, objects). `reset` is True when the file was replaced or shrank, in
        which case everything is re-read from the start and the caller must drop what it had.
        """
        if st is None:
            st = self.changed()
            if st is None:
                return False, []
        reset = False
        if self.sig is not None and (st.st_ino != self.sig[0] or st.st_size < self.offset):
            self.offset = 0
            self.bad_lines = 0
            reset = True
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        units, consumed = decode_units(data, self.offset, self.gz)
        objs: List[Tuple[Unit, Any]] = []
        for unit, line in units:
            try:
                objs.append((unit, loads(line)))
            except ValueError:
                self.bad_lines += 1
        self.offset += consumed
        # A torn tail stays unread; the writer completing it moves size and mtime again.
        self.sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        return reset, objs


def read_unit(path: str, gz: bool, unit: Unit) -> Any:
    """Load one object again from its recorded position (sample text is never kept in memory)."""
    with open(path, "rb") as fh:
        fh.seek(unit.offset)
        raw = fh.read(unit.length)
    if gz:
        raw = zlib.decompressobj(wbits=31).decompress(raw)
    lines = _split_lines(raw)
    return loads(lines[unit.index])


def read_units(path: str, gz: bool, units: List[Unit]) -> List[Any]:
    """Load many objects from one file with a single open, in file order."""
    order = sorted(range(len(units)), key=lambda i: units[i].offset)
    out: List[Any] = [None] * len(units)
    with open(path, "rb") as fh:
        cache_off, cache_lines = -1, []
        for i in order:
            u = units[i]
            if u.offset != cache_off:
                fh.seek(u.offset)
                raw = fh.read(u.length)
                if gz:
                    raw = zlib.decompressobj(wbits=31).decompress(raw)
                cache_off, cache_lines = u.offset, _split_lines(raw)
            try:
                out[i] = loads(cache_lines[u.index])
            except (IndexError, ValueError):
                out[i] = None
    return out


def count_data_lines(path: str, gz: bool) -> Tuple[int, bool]:
    """Rows of a dataset file (header excluded) and whether the file looked complete.

    Rows are counted, not parsed: only lines that look like a header are decoded.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    units, consumed = decode_units(data, 0, gz)
    rows = 0
    for _, line in units:
        if line.lstrip().startswith(b'{"_type"'):
            try:
                if is_header(loads(line)):
                    continue
            except ValueError:
                pass
        rows += 1
    return rows, consumed == len(data)
