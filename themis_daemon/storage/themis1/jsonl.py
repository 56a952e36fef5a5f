"""Incremental readers for Themis JSONL files, plain or gzip (one member per appended line).

Writers append whole units (a line, or a gzip member) but a reader can race them and see a
torn tail. These readers consume only complete units, remember the byte offset after the last
one and pick up the rest on the next call, so a torn tail is never mistaken for corruption.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import zlib
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

try:  # a C parser several times faster than json; json remains the reference and the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    _orjson = None

try:  # zlib-ng inflates Themis' small gzip members about three times faster than zlib
    from zlib_ng import zlib_ng as _zlib
except ImportError:  # pragma: no cover - zlib-ng is a declared dependency
    _zlib = zlib

HEADER_TYPE = "header"
# zlib is fed at most this much at a time, so finding the end of one small gzip member never
# copies the rest of a large file (which made decoding quadratic in the file size). Themis
# appends one member per line (a few hundred bytes to a few KB): a small first helping finds
# most of them at once, bigger ones follow for long lines.
FIRST_CHUNK = 2048
CHUNK = 16 * 1024
PLAIN_READ = 256 * 1024 * 1024
EDGE_BYTES = 64  # how much of a file's start and of its end-of-read is remembered
GZIP_ERRORS = (zlib.error, _zlib.error)


class CorruptFile(Exception):
    """A complete unit that cannot be decoded: the file is damaged, not merely being written."""


class LineTooLong(CorruptFile):
    """A line beyond storage.max_line_bytes: not decoded, so it cannot exhaust memory."""


class Limits:
    """Process-wide reader limits (set from the configuration, also in scan workers)."""

    max_line_bytes = 64 * 1024 * 1024
    # Store root (absolute, as configured) -> the real directories its files may resolve to:
    # its own real path and the configured extra roots.
    roots: Dict[str, Tuple[str, ...]] = {}


class OutsideRoot(PermissionError):
    """A file whose real path (after symlinks) is outside its store and the allowed roots."""


def _within(path: str, roots: Tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def open_checked(path: str):
    """open(path, "rb"), refusing a file that resolves outside its store's allowed roots.

    The check is made on the opened descriptor (what was actually opened), so swapping in a
    symlink between a check and the open does not get around it."""
    # Non-blocking, and only regular files: a FIFO or a device in place of a Themis file would
    # otherwise block the reading thread for as long as nobody writes to it.
    fh = open(path, "rb", opener=_open_nonblocking)
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise OSError(errno.EINVAL, "not a regular file", path)
    if Limits.roots:
        for root, allowed in Limits.roots.items():
            if path.startswith(root.rstrip(os.sep) + os.sep):
                try:
                    real = os.readlink(f"/proc/self/fd/{fh.fileno()}")
                except OSError:
                    real = os.path.realpath(path)
                if not _within(real, allowed):
                    fh.close()
                    raise OutsideRoot(errno.EACCES, "a symlink leading outside the storage root", path)
                break
    return fh


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


def _gunzip_member(view: memoryview, pos: int, base: int, cap: int) -> Optional[Tuple[bytes, int]]:
    """Decompress the gzip member starting at `pos`: (text, member length), or None if cut short.

    Decompression stops past `max_line_bytes` of text (LineTooLong): a small member can expand
    to gigabytes."""
    d = _zlib.decompressobj(wbits=31)
    cur = pos
    n = len(view)
    parts: List[bytes] = []
    size = 0
    try:
        chunk = view[cur:cur + FIRST_CHUNK]
        while True:
            fed_end = cur + len(chunk)
            while True:
                text = d.decompress(chunk, cap + 1 - size)
                size += len(text)
                parts.append(text)
                if size > cap:
                    raise LineTooLong(f"a line longer than storage.max_line_bytes ({cap} bytes) "
                                      f"in the gzip member at byte {base + pos}")
                if d.eof or not d.unconsumed_tail:
                    break
                chunk = d.unconsumed_tail
            if d.eof:
                return (parts[0] if len(parts) == 1 else b"".join(parts)), fed_end - len(d.unused_data) - pos
            cur = fed_end
            if cur >= n:
                return None
            chunk = view[cur:cur + CHUNK]
    except GZIP_ERRORS as exc:
        raise CorruptFile(f"bad gzip member at byte {base + pos}: {exc}") from exc


def gunzip(raw: bytes) -> bytes:
    """Decompress one stored gzip member (text loaded again by offset)."""
    return _zlib.decompressobj(wbits=31).decompress(raw)


class JsonlTail:
    """Follows one append-only JSONL file by byte offset, so each byte is decoded once."""

    def __init__(self, path: str, gz: bool):
        self.path = path
        self.gz = gz
        self.offset = 0
        self.sig: Optional[Tuple[int, int, int]] = None  # (inode, size, mtime_ns) at last read
        self.bad_lines = 0
        self.head = b""  # the file's first bytes and the bytes just before `offset`
        self.last = b""
        self.failure: Optional[str] = None  # a line too long to decode, until the file changes
        # st_ctime_ns when the file was last opened: a permission change moves it (and not the
        # size or mtime), so an unchanged file is tried again after one
        self.ctime: Optional[int] = None
        self.unreadable = False  # the last open failed: try again at every poll

    def changed(self) -> Optional[os.stat_result]:
        """Return the stat result if the file moved since the last read, else None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        if self.sig is not None and (st.st_ino, st.st_size, st.st_mtime_ns) == self.sig:
            if self.ctime is None:
                self.ctime = st.st_ctime_ns  # a position restored from the cache
            if not self.unreadable and st.st_ctime_ns == self.ctime:
                return None
        return st

    def read_new(self, st: Optional[os.stat_result] = None,
                 parse: Callable[[bytes], Any] = loads) -> Tuple[bool, List[Tuple[int, int, int, Any]], int]:
        """Decode the complete units appended since the last call.

        Returns (reset, kept, seen): `kept` holds (offset, length, index, what `parse` kept)
        for lines where it kept something, `seen` counts every decoded line. `reset` is True
        when the file was replaced or shrank, in which case everything is re-read from the
        start and the caller must drop what it had. `parse` raises ValueError for an invalid
        line and returns None for a line with nothing to keep.
        """
        if st is None:
            st = self.changed()
            if st is None:
                if self.failure is not None:
                    raise LineTooLong(self.failure)  # still there: not decoded again
                return False, [], 0
        self.failure = None
        reset = False
        if self.sig is not None and (st.st_ino != self.sig[0] or st.st_size < self.offset):
            self.restart()
            reset = True
        try:
            opened = open_checked(self.path)
        except OSError:
            self.unreadable = True
            raise
        self.unreadable, self.ctime = False, st.st_ctime_ns
        with opened as fh:
            # The bytes before the offset come along: if they changed, the file was rewritten
            # (not appended to) and is read again from its start.
            # Plain text is read in bounded helpings (gzip text is bounded per member).
            limit = -1 if self.gz else max(4 * Limits.max_line_bytes, PLAIN_READ)
            fh.seek(self.offset - len(self.last))
            data = fh.read(limit)
            if not data.startswith(self.last):
                self.restart()
                reset = True
                fh.seek(0)
                data = fh.read(limit)
            elif self.last:
                data = data[len(self.last):]
            more = limit > 0 and len(data) >= limit - len(self.last)
        try:
            kept, consumed, bad, seen = decode_lines(data, self.offset, self.gz, parse)
        except LineTooLong as exc:
            self.sig, self.failure = (st.st_ino, st.st_size, st.st_mtime_ns), str(exc)
            raise
        self.bad_lines += bad
        if consumed:
            if self.offset == 0:
                self.head = data[:EDGE_BYTES]
            self.last = (self.last + data[max(0, consumed - EDGE_BYTES):consumed])[-EDGE_BYTES:]
        self.offset += consumed
        # A torn tail stays unread; the writer completing it moves size and mtime again.
        # Unread helpings are read at the next call.
        self.sig = None if more else (st.st_ino, st.st_size, st.st_mtime_ns)
        return reset, kept, seen

    def restart(self) -> None:
        """Forget what was read: the next read starts at byte 0."""
        self.offset = 0
        self.bad_lines = 0
        self.sig = None
        self.head = self.last = b""

    def matches_file(self) -> bool:
        """Whether the file still starts and continues as it did when it was read (the same
        inode, at least as long, the same first bytes and the same bytes before the offset
        reached): what a remembered position must pass before reading on from it."""
        try:
            with open_checked(self.path) as fh:
                st = os.fstat(fh.fileno())
                if self.sig is None or st.st_ino != self.sig[0] or st.st_size < self.offset:
                    return False
                if fh.read(len(self.head)) != self.head:
                    return False
                fh.seek(self.offset - len(self.last))
                return fh.read(len(self.last)) == self.last
        except OSError:
            return False


def decode_lines(data: bytes, base: int, gz: bool, parse: Callable[[bytes], Any],
                 cap: Optional[int] = -1) -> Tuple[List[Tuple[int, int, int, Any]], int, int, int]:
    """Split and parse the complete units in `data` (read from file offset `base`).

    Returns (kept, bytes consumed, invalid lines, lines seen); see JsonlTail.read_new. `cap`
    bounds a line's decoded size (default storage.max_line_bytes; None: no bound, for the
    dataset file, which Themis writes as one gzip member of every row).
    """
    if cap == -1:
        cap = Limits.max_line_bytes
    if cap is None:
        cap = 1 << 62
    kept: List[Tuple[int, int, int, Any]] = []
    bad = seen = 0
    if not gz:
        end = data.rfind(b"\n") + 1  # only newline-terminated lines are complete
        if len(data) - end > cap:
            raise LineTooLong(f"a line longer than storage.max_line_bytes ({cap} bytes) at byte {base + end}")
        pos = base
        for line in data[:end].split(b"\n")[:-1]:
            length = len(line)
            if length > cap:
                raise LineTooLong(f"a line longer than storage.max_line_bytes ({cap} bytes) at byte {pos}")
            if line and not line.isspace():
                seen += 1
                try:
                    obj = parse(line)
                except ValueError:
                    bad += 1
                else:
                    if obj is not None:
                        kept.append((pos, length, 0, obj))
            pos += length + 1
        return kept, end, bad, seen
    pos = 0
    n = len(data)
    view = memoryview(data)
    while pos < n:
        member = _gunzip_member(view, pos, base, cap)
        if member is None:
            break  # truncated last member: the writer is still appending it
        text, length = member
        nl = text.find(b"\n")
        # Themis writes one line per member: split only when there is more.
        lines = (text[:nl],) if nl == len(text) - 1 else text.split(b"\n")
        index = 0
        for line in lines:
            if line and not line.isspace():
                seen += 1
                try:
                    obj = parse(line)
                except ValueError:
                    bad += 1
                else:
                    if obj is not None:
                        kept.append((base + pos, length, index, obj))
                index += 1
        pos += length
    return kept, pos, bad, seen


def read_unit(path: str, gz: bool, unit: Unit) -> Any:
    """Load one object again from its recorded position (sample text is never kept in memory)."""
    with open_checked(path) as fh:
        fh.seek(unit.offset)
        raw = fh.read(unit.length)
    if gz:
        raw = gunzip(raw)
    lines = _split_lines(raw)
    return loads(lines[unit.index])


def read_units(path: str, gz: bool, units: List[Unit]) -> List[Any]:
    """Load many objects from one file with a single open, in file order."""
    order = sorted(range(len(units)), key=lambda i: units[i].offset)
    out: List[Any] = [None] * len(units)
    with open_checked(path) as fh:
        cache_off, cache_lines = -1, []
        for i in order:
            u = units[i]
            if u.offset != cache_off:
                fh.seek(u.offset)
                raw = fh.read(u.length)
                if gz:
                    raw = gunzip(raw)
                cache_off, cache_lines = u.offset, _split_lines(raw)
            try:
                out[i] = loads(cache_lines[u.index])
            except (IndexError, ValueError):
                out[i] = None
    return out


def count_data_lines(path: str, gz: bool) -> Tuple[int, bool, Tuple[bytes, bytes]]:
    """Rows of a dataset file (header excluded), whether the file looked complete, and its
    first and last bytes (what a cached count is checked against).

    Rows are counted, not parsed: only lines that look like a header are decoded.
    """
    with open_checked(path) as fh:
        data = fh.read()
    headers = []

    def header(line: bytes) -> None:
        if line.lstrip().startswith(b'{"_type"'):
            try:
                if is_header(loads(line)):
                    headers.append(line)
            except ValueError:
                pass
        return None

    _, consumed, _, seen = decode_lines(data, 0, gz, header, cap=None)
    return seen - len(headers), consumed == len(data), (data[:EDGE_BYTES], data[-EDGE_BYTES:])
