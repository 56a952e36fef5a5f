"""The persistent cache of a Themis 1.x store's per-run state, outside the store.

A restart then reads one file instead of decoding every JSONL file again. The cache is never
trusted over the files: each run's entry carries, for every file it was built from, the inode,
size, modification time and the first and last bytes read, and is used only if the file still
matches (a file that grew is read on from where the entry stopped). A cache that is damaged,
truncated, written by another format version or for another store is ignored and rebuilt.
Writers replace the file atomically (temp file + rename in the cache directory), so daemons
sharing a cache directory never see a half-written one; the last writer wins.

Layout: MAGIC, then frames of (4-byte length, 16-byte BLAKE2b digest, msgpack body); the first
frame is the header, each following one a run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
from typing import Any, Dict, Iterable, Optional

import msgspec

from ... import __version__

log = logging.getLogger("themis_daemon.storage")

MAGIC = b"themis-daemon:themis1-cache\n"
FORMAT = 3  # bump whenever what an entry holds or means changes
_FRAME = struct.Struct("<I16s")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


def default_cache_dir(environ=os.environ) -> str:
    """systemd's CacheDirectory= ($CACHE_DIRECTORY), else $XDG_CACHE_HOME or ~/.cache."""
    if environ.get("CACHE_DIRECTORY"):
        return environ["CACHE_DIRECTORY"].split(":")[0]
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "themis-daemon")


def cache_file(cache_dir: str, root: str) -> str:
    """One file per store, named after its absolute path."""
    key = hashlib.blake2b(os.path.abspath(root).encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
    return os.path.join(cache_dir, f"themis1-{key}.cache")


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class RunCache:
    """Loads and saves the entries of one store."""

    def __init__(self, cache_dir: str, root: str):
        self.root = os.path.abspath(root)
        self.dir = os.path.abspath(cache_dir)
        self.path = cache_file(self.dir, self.root)
        self.usable = not _inside(self.dir, self.root)  # nothing is ever written into a store
        if not self.usable:
            log.warning("storage cache directory %s is inside the store %s: not using a cache", self.dir, self.root)

    def load(self) -> Dict[str, Dict[str, Any]]:
        """run id -> entry; empty when there is no usable cache (the reason is logged)."""
        if not self.usable:
            return {}
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read the storage cache %s (%s): rebuilding it", self.path, exc.strerror or exc)
            return {}
        try:
            return self._parse(data)
        except (ValueError, msgspec.DecodeError, struct.error, KeyError, TypeError) as exc:
            log.warning("ignoring the storage cache %s: %s; rebuilding it", self.path, exc)
            return {}

    def _parse(self, data: bytes) -> Dict[str, Dict[str, Any]]:
        if not data.startswith(MAGIC):
            raise ValueError("not a themis-daemon cache file")
        pos = len(MAGIC)
        frames = []
        while pos < len(data):
            if pos + _FRAME.size > len(data):
                raise ValueError("truncated")
            length, digest = _FRAME.unpack_from(data, pos)
            pos += _FRAME.size
            body = data[pos:pos + length]
            if len(body) != length:
                raise ValueError("truncated")
            if hashlib.blake2b(body, digest_size=16).digest() != digest:
                raise ValueError("checksum mismatch")
            frames.append(body)
            pos += length
        if not frames:
            raise ValueError("empty")
        header = _DECODER.decode(frames[0])
        if not isinstance(header, dict) or header.get("format") != [FORMAT, __version__]:
            raise ValueError(f"format {header.get('format') if isinstance(header, dict) else '?'}, "
                             f"this version reads {[FORMAT, __version__]}")
        if header.get("root") != self.root:
            raise ValueError(f"written for another store ({header.get('root')!r})")
        if header.get("runs") != len(frames) - 1:
            raise ValueError("truncated")
        out = {}
        for body in frames[1:]:
            entry = _DECODER.decode(body)
            out[entry["run_id"]] = entry
        return out

    def save(self, entries: Iterable[Dict[str, Any]]) -> Optional[int]:
        """Write every entry (atomically); the file's size, or None if it could not be written."""
        if not self.usable:
            return None
        tmp = None
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            bodies = []
            for entry in entries:
                try:
                    bodies.append(_ENCODER.encode(entry))
                except (ValueError, TypeError, OverflowError, msgspec.EncodeError):
                    pass  # e.g. a folder name that is not UTF-8: that run is read again next time
            header = _ENCODER.encode({"format": [FORMAT, __version__], "root": self.root, "runs": len(bodies)})
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".cache", dir=self.dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC)
                for body in [header] + bodies:
                    fh.write(_FRAME.pack(len(body), hashlib.blake2b(body, digest_size=16).digest()))
                    fh.write(body)
                size = fh.tell()
            os.replace(tmp, self.path)
            tmp = None
            return size
        except (OSError, msgspec.EncodeError, OverflowError, TypeError) as exc:
            log.warning("cannot write the storage cache %s: %s", self.path, getattr(exc, "strerror", None) or exc)
            return None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
