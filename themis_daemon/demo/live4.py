"""A background thread that keeps a Themis 4 SQLite store "live" for the demo mode (no Tornado).

Each cycle submits a run (it is `pending` for a moment), starts it, writes a few cases per
tick in the exact Themis 4.0.2 format (`themis4.py`), and ends it: most runs complete, some
with failed generations (`partial_failure`), every fourth one fails mid-way. Only runs this
thread created are ever deleted (the oldest, beyond `max_runs`), the way Themis' own
`rerun` deletes a run.

Manual use::

    python -m themis_daemon.demo.live4 STORE.sqlite3 --interval 1 --cases 30
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from typing import List, Optional

from .themis4 import SqliteSink, Themis4Writer, make_arith_cases

__all__ = ["Themis4DemoThread", "main"]

log = logging.getLogger(__name__)

MODELS = ("demo-gpt-small", "demo-gpt-large", "demo-llama")


class Themis4DemoThread(threading.Thread):
    """Daemon thread writing demo runs into a Themis 4 SQLite store."""

    def __init__(self, path: str, interval: float = 1.0, cases: int = 40, *, per_tick: tuple = (2, 5),
                 max_runs: int = 6, fail_every: int = 4, seed: Optional[int] = None,
                 max_run_count: Optional[int] = None):
        super().__init__(name="themis4-demo-writer", daemon=True)
        self.path = path
        self.interval = float(interval)
        self.cases = int(cases)
        self.per_tick = per_tick
        self.max_runs = max(1, int(max_runs))
        self.fail_every = int(fail_every)
        self.max_run_count = max_run_count
        self.stop_event = threading.Event()
        self._rng = random.Random(seed)
        self.created: List[object] = []
        self.finished: List[tuple] = []
        self.run_count = 0
        self._run = None
        self._todo: List[str] = []
        self._fail_at: Optional[int] = None
        self._writer: Optional[Themis4Writer] = None
        self.last_error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self._writer = Themis4Writer(SqliteSink(self.path))
            while not self.stop_event.is_set():
                try:
                    self.tick()
                except Exception as exc:  # a demo must never take the daemon down
                    self.last_error = exc
                    log.warning("Themis 4 demo writer: %s", exc)
                if self.max_run_count is not None and len(self.finished) >= self.max_run_count:
                    break
                self.stop_event.wait(self.interval)
        finally:
            if self._writer is not None:
                self._writer.close()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def tick(self) -> None:
        if self._run is None:
            self._submit()
            return
        run = self._run
        if not getattr(run, "_started", False):
            run.start()
            run._started = True
            return
        for _ in range(self._rng.randint(*self.per_tick)):
            if self._fail_at is not None and len(run.case_ids) - len(self._todo) >= self._fail_at:
                run.fail("budget guard: token budget exhausted")
                self._finish("failed")
                return
            if not self._todo:
                run.complete()
                self._finish("completed")
                return
            case_id = self._todo.pop(0)
            broken = self._rng.random() < 0.05
            run.case(case_id, fail_generation="provider error 503: upstream overloaded" if broken else None)

    def _submit(self) -> None:
        self.run_count += 1
        model = MODELS[self.run_count % len(MODELS)]
        revision = time.strftime("demo-%Y%m%dT%H%M%S") + f"-{self.run_count}"
        run = self._writer.new_run(model=model, dataset_id="arith-demo", benchmark_id="arith",
                                   cases=make_arith_cases(self.cases), revision=revision,
                                   environment={"demo": "true"})
        run._started = False
        self._run = run
        self._todo = list(run.case_ids)
        failing = self.fail_every and self.run_count % self.fail_every == 0
        self._fail_at = self.cases // 2 if failing else None
        self.created.append(run)

    def _finish(self, status: str) -> None:
        self.finished.append((self._run.run_id, status))
        self._run = None
        while len(self.created) > self.max_runs:
            old = self.created.pop(0)
            old.rerun_clear()  # deletes exactly this run, as Themis' rerun policy does


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write live Themis 4 demo runs into an SQLite store.")
    parser.add_argument("path")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--runs", type=int, default=None, help="stop after this many finished runs")
    args = parser.parse_args(argv)
    thread = Themis4DemoThread(args.path, args.interval, args.cases, max_run_count=args.runs)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        thread.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
