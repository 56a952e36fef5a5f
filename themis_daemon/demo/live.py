"""A background thread that keeps a Themis storage root "live" for the demo mode (no Tornado).

Every ``interval`` seconds it advances the current demo run by a few generation records
(evaluations are appended in batches of ``eval_batch``, like Themis' orchestrator), completes
it when the dataset is exhausted, fails every ``fail_every``-th run half-way with a clear
error message, and then starts a new run ``demo-YYYYMMDD-HHMMSS-<n>`` (UTC, like Themis'
automatic ``run-YYYYMMDD-HHMMSS`` ids). At most ``max_runs`` demo runs created by this
thread are kept; older ones *that this thread created* are deleted — nothing else is ever
touched.

Manual use::

    python -m themis_daemon.demo.live ROOT --runs 3 --interval 1 --samples 40
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import random
import shutil
import sqlite3
import sys
import threading
from pathlib import Path
from typing import List, Optional

from .writer import ThemisRunWriter, make_arith_dataset

__all__ = ["DemoWriterThread", "main"]

log = logging.getLogger(__name__)

_FAIL_MESSAGES = (
    "results sink unavailable: connection refused",
    "Evaluation aborted: metric backend timed out after 30s",
    "Generation loop crashed: provider quota exceeded (HTTP 429)",
)
_TEMPLATES = ("What is {a} {op} {b}?", "What is {b} {op} {a}?")


class DemoWriterThread(threading.Thread):
    """Daemon thread writing demo runs into ``root`` (a Themis storage root)."""

    def __init__(
        self,
        root,
        interval: float = 2.0,
        samples: int = 60,
        stop_event: Optional[threading.Event] = None,
        *,
        max_runs: int = 8,
        fail_every: int = 4,
        per_tick: tuple = (3, 8),
        eval_batch: int = 10,
        compression: str = "gzip",
        experiment_id: str = "default",
        sqlite: bool = False,
        max_run_count: Optional[int] = None,
        seed: Optional[int] = None,
    ):
        super().__init__(name="themis-demo-writer", daemon=True)
        self.root = Path(root)
        self.interval = float(interval)
        self.samples = int(samples)
        self.stop_event = stop_event or threading.Event()
        self.max_runs = max(1, int(max_runs))
        self.fail_every = int(fail_every)
        self.per_tick = per_tick
        self.eval_batch = int(eval_batch)
        self.compression = compression
        self.experiment_id = experiment_id
        self.sqlite = sqlite
        self.max_run_count = max_run_count  # stop after this many runs finished (None: forever)
        self._rng = random.Random(seed)
        self._seed = seed
        self._lock = threading.Lock()
        self.writer: Optional[ThemisRunWriter] = None
        self.created: List[Path] = []          # run dirs created by this thread, oldest first
        self.created_ids: List[str] = []
        self.finished: List[tuple] = []        # (run_id, status)
        self.run_count = 0
        self._fail_at: Optional[int] = None
        self.last_error: Optional[BaseException] = None

    # ------------------------------------------------------------------ thread API

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.tick()
            if self.max_run_count is not None and len(self.finished) >= self.max_run_count:
                break
            self.stop_event.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and join it (the current run stays ``in_progress``)."""
        self.stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    @property
    def current_run_id(self) -> Optional[str]:
        w = self.writer
        return w.run_id if w is not None else None

    # ------------------------------------------------------------------ one step

    def tick(self) -> None:
        """Advance the demo by one step (also usable synchronously from tests)."""
        with self._lock:
            try:
                self._tick()
            except Exception as exc:  # never let the thread die; drop the broken run
                self.last_error = exc
                log.exception("demo writer step failed")
                self.writer = None

    def _tick(self) -> None:
        w = self.writer
        if w is None:
            self._start_run()
            return
        lo, hi = self.per_tick
        w.step(self._rng.randint(lo, hi))
        if self._fail_at is not None and w.generated >= self._fail_at:
            w.fail("%s (demo run %d)" % (self._rng.choice(_FAIL_MESSAGES), self.run_count))
            self._finish("failed")
        elif w.done_generating:
            w.complete()
            self._finish("completed")

    def _finish(self, status: str) -> None:
        self.finished.append((self.writer.run_id, status))
        log.info("demo run %s %s", self.writer.run_id, status)
        self.writer = None

    def _new_run_id(self) -> str:
        self.run_count += 1
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        base = "demo-%s-%d" % (stamp, self.run_count)
        run_id, k = base, 1
        while (self.root / "experiments" / self.experiment_id / "runs" / run_id).exists():
            k += 1
            run_id = "%s.%d" % (base, k)
        return run_id

    def _start_run(self) -> None:
        run_id = self._new_run_id()
        n = self.run_count
        seed = (self._seed or 0) * 100003 + n if self._seed is not None else self._rng.randrange(1 << 30)
        dataset = make_arith_dataset(self.samples, seed=seed)
        fail_ids = [r["id"] for r in dataset if self._rng.random() < 0.05]
        will_fail = self.fail_every > 0 and n % self.fail_every == 0
        self._fail_at = max(1, self.samples // 2) if will_fail else None
        w = ThemisRunWriter(
            self.root,
            run_id,
            experiment_id=self.experiment_id,
            compression=self.compression,
            dataset=dataset,
            template=_TEMPLATES[1] if n % 3 == 2 else _TEMPLATES[0],
            eval_batch=self.eval_batch,
            accuracy=self._rng.choice((0.6, 0.75, 0.85, 0.95)),
            seed=seed,
            sqlite=self.sqlite,
            fail_ids=fail_ids,
        )
        w.start()
        self.writer = w
        self.created.append(w.run_dir)
        self.created_ids.append(run_id)
        log.info("demo run %s started (%d samples)", run_id, self.samples)
        self._prune()

    def _prune(self) -> None:
        while len(self.created) > self.max_runs:
            run_dir, run_id = self.created.pop(0), self.created_ids.pop(0)
            if self.writer is not None and run_dir == self.writer.run_dir:  # pragma: no cover
                self.created.insert(0, run_dir)
                self.created_ids.insert(0, run_id)
                break
            shutil.rmtree(run_dir, ignore_errors=True)
            if self.sqlite:
                self._delete_db_row(run_id)

    def _delete_db_row(self, run_id: str) -> None:
        db = self.root / "experiments.db"
        if not db.exists():
            return
        conn = sqlite3.connect(str(db), timeout=10)
        try:
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            conn.commit()
        finally:
            conn.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write live demo runs into a Themis storage root.")
    p.add_argument("root")
    p.add_argument("--runs", type=int, default=3, help="stop after this many finished runs (0: forever)")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--samples", type=int, default=60)
    p.add_argument("--max-runs", type=int, default=8)
    p.add_argument("--compression", choices=("gzip", "none"), default="gzip")
    p.add_argument("--sqlite", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t = DemoWriterThread(
        args.root,
        interval=args.interval,
        samples=args.samples,
        max_runs=args.max_runs,
        compression=args.compression,
        sqlite=args.sqlite,
        max_run_count=args.runs or None,
    )
    t.start()
    try:
        while t.is_alive():
            t.join(0.5)
    except KeyboardInterrupt:
        t.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
