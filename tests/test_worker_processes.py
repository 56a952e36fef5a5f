"""Worker pool processes and the stop signals a terminal or systemd sends to all of them."""

from __future__ import annotations

import os
import signal

import pytest

from themis_daemon.storage.base import worker_context, worker_process_setup


def _report(queue) -> None:
    worker_process_setup(background=False)
    queue.put(os.getpid())


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM)])
def test_a_worker_outlives_stop_signals_that_arrive_while_it_starts(signals):
    # Ctrl-C reaches the whole process group; a worker still starting its interpreter (before
    # worker_process_setup ignores the signal) used to die of it, and the statistics request
    # that started it got a 503 while the daemon drained.
    ctx = worker_context()
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_report, args=(queue,))
    proc.start()
    try:
        for sig in signals:
            os.kill(proc.pid, sig)
        proc.join(120)
        assert proc.exitcode == 0
        assert queue.get() == proc.pid
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(10)


def test_the_parent_keeps_its_signal_mask():
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    ctx = worker_context()
    queue = ctx.SimpleQueue()
    proc = ctx.Process(target=_report, args=(queue,))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before

