"""Reader of a Themis 4 JSONL store (spec §3.2, §14.2): `runs/<run_id>/{snapshot.json,events.jsonl}`.

Events are appended with one `write(2)` per line and never rewritten, so each run is tailed by
byte offset and only newline-terminated lines are taken. A `rerun` removes the run folder, so a
new folder inode (or a file that shrank) means: read the run again from the start.
`snapshot.json` is written truncate-then-write and may be caught empty: try again next poll.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, List, Optional, Tuple

from ..base import NotAStore
from .reader import EventReader, Poll, Row, Unavailable

CHUNK = 1 << 20


def _open_regular(path: str) -> int:
    """Open a regular file without ever blocking (a FIFO in its place must not hang a poll)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Tail:
    __slots__ = ("dir_ino", "ino", "offset", "size")

    def __init__(self, dir_ino: int):
        self.dir_ino = dir_ino
        self.ino: Optional[int] = None
        self.offset = 0
        self.size = -1


class JsonlReader(EventReader):
    kind = "jsonl"
    global_positions = False

    def __init__(self, root: str, **kwargs: Any):
        super().__init__(os.path.abspath(root), **kwargs)
        self.runs_dir = os.path.join(self.location, "runs")
        self._tails: Dict[str, _Tail] = {}
        self._listing: Optional[int] = None   # mtime_ns of runs/ at the last complete listing
        self._pending: Dict[str, int] = {}    # run folders whose snapshot could not be read yet
        self.errors: Dict[str, str] = {}      # run_id -> unreadable file message

    def validate(self) -> None:
        if not os.path.isdir(self.runs_dir):
            raise NotAStore(f"{self.location}: no runs/ folder (expected a Themis 4 JSONL store root)")
        try:
            os.listdir(self.runs_dir)
        except OSError as exc:
            raise NotAStore(f"{self.runs_dir}: cannot be listed ({exc.strerror}) (expected a Themis 4 JSONL store root)") from None

    def _listing_sig(self) -> int:
        try:
            return os.stat(self.runs_dir).st_mtime_ns
        except OSError as exc:
            raise Unavailable(f"{exc.strerror}: {self.runs_dir}") from None

    def changed(self) -> bool:
        if self._pending or self._listing is None or self._listing_sig() != self._listing:
            return True
        for run_id, tail in self._tails.items():
            try:
                st = os.stat(os.path.join(self.runs_dir, run_id, "events.jsonl"))
            except FileNotFoundError:
                if tail.ino is not None:
                    return True
                continue
            except OSError:
                return True
            if st.st_ino != tail.ino or st.st_size != tail.size:
                return True
        return False

    def poll(self) -> Poll:
        out = Poll()
        listing = self._listing_sig()
        try:
            entries = [e for e in os.scandir(self.runs_dir) if not e.name.startswith(".")]
        except OSError as exc:
            raise Unavailable(f"{exc.strerror}: {self.runs_dir}") from None
        current: Dict[str, int] = {}
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                dir_ino = entry.inode()
            except OSError:
                continue
            known = self._tails.get(entry.name)
            if known is not None and known.dir_ino == dir_ino:
                current[entry.name] = dir_ino
                continue
            snapshot = self._read_snapshot(entry.path)
            if snapshot is None:
                self._pending[entry.name] = dir_ino  # empty or half-written: look again next poll
                continue
            self._pending.pop(entry.name, None)
            if known is not None:
                out.reset.add(entry.name)
            out.snapshots[entry.name] = snapshot
            self._tails[entry.name] = _Tail(dir_ino)
            current[entry.name] = dir_ino
        for run_id in list(self._tails):
            if run_id not in current:
                del self._tails[run_id]
                self.errors.pop(run_id, None)
        out.runs = dict(current)
        budget = self.batch
        for run_id in current:
            if budget <= 0:
                out.more = True
                break
            rows, full = self._read_events(run_id, budget)
            if rows is None:  # replaced or truncated in place: fold it again from the start
                self._tails[run_id] = _Tail(current[run_id])
                if run_id not in out.snapshots:
                    out.reset.add(run_id)
                rows, full = self._read_events(run_id, budget)
                if rows is None:
                    continue
            if full:
                out.more = True
            out.rows.extend(rows)
            budget -= len(rows)
        if not out.more and not self._pending:
            self._listing = listing
        return out

    def _read_snapshot(self, run_dir: str) -> Optional[bytes]:
        try:
            fd = _open_regular(os.path.join(run_dir, "snapshot.json"))
        except OSError:
            return None
        try:
            data = b""
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        data = data.strip()
        if not data or not data.endswith(b"}"):
            return None
        return data

    def _read_events(self, run_id: str, budget: int) -> Tuple[Optional[List[Row]], bool]:
        """New complete lines of one run's events.jsonl, at most `budget` of them."""
        tail = self._tails[run_id]
        path = os.path.join(self.runs_dir, run_id, "events.jsonl")
        try:
            fd = _open_regular(path)
        except FileNotFoundError:
            return [], False  # a pending run: no events yet
        except OSError as exc:
            self.errors[run_id] = f"events.jsonl unreadable: {exc.strerror or exc}"
            return [], False
        rows: List[Row] = []
        full = False
        try:
            st = os.fstat(fd)
            if tail.ino is not None and (st.st_ino != tail.ino or st.st_size < tail.offset):
                # Replaced or truncated: Themis never does this except by removing the run,
                # so read it again from the start (the source folds it afresh).
                tail.offset = 0
                raise _Restart()
            tail.ino = st.st_ino
            tail.size = st.st_size
            pos = tail.offset
            buf = b""
            while pos + len(buf) < st.st_size and len(rows) < budget:
                chunk = os.pread(fd, min(CHUNK, st.st_size - pos - len(buf)), pos + len(buf))
                if not chunk:
                    break
                buf += chunk
                start = 0
                while len(rows) < budget:
                    end = buf.find(b"\n", start)
                    if end < 0:
                        break
                    line = buf[start:end]
                    if line.strip():
                        rows.append(Row(pos + start, run_id, "", line))
                    start = end + 1
                pos += start
                buf = buf[start:]
                if len(rows) >= budget:
                    full = True
            tail.offset = pos
            self.errors.pop(run_id, None)
        except _Restart:
            os.close(fd)
            return None, False
        except OSError as exc:
            self.errors[run_id] = f"events.jsonl unreadable: {exc.strerror or exc}"
            os.close(fd)
            return [], False
        os.close(fd)
        return rows, full

    def snapshot(self, run_id: str) -> Any:
        return self._read_snapshot(os.path.join(self.runs_dir, run_id))

    def fetch(self, run_id: str, positions: List[int]) -> Dict[int, Any]:
        out: Dict[int, Any] = {}
        path = os.path.join(self.runs_dir, run_id, "events.jsonl")
        try:
            fd = _open_regular(path)
        except OSError:
            return out
        try:
            for pos in sorted(set(positions)):
                data = b""
                offset = pos
                while True:
                    chunk = os.pread(fd, 65536, offset)
                    if not chunk:
                        break
                    end = chunk.find(b"\n")
                    if end >= 0:
                        data += chunk[:end]
                        break
                    data += chunk
                    offset += len(chunk)
                out[pos] = data
        finally:
            os.close(fd)
        return out


class _Restart(Exception):
    pass
