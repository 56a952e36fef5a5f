"""The batch prefetcher of Themis 4 details: order, flow control, the side future, stopping."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from themis_daemon.storage.themis4.source import SIDE_READY, _Prefetched


def test_batches_in_order_and_the_side_future_when_it_completes():
    gate = threading.Event()
    produced = []

    def batches():
        for i in range(5):
            if i == 2:
                assert gate.wait(10)  # the third batch waits until the side future is done
            produced.append(i)
            yield {i: i}

    side: Future = Future()
    got = []
    for item in _Prefetched(batches(), side):
        got.append(item)
        if item == {1: 1}:
            side.set_result("snapshot")
            gate.set()
    assert got[:2] == [{0: 0}, {1: 1}] and got[2] is SIDE_READY
    assert [g for g in got if g is not SIDE_READY] == [{i: i} for i in range(5)]


def test_a_side_future_done_before_the_start_comes_first():
    side: Future = Future()
    side.set_result(None)
    assert list(_Prefetched(iter([{1: 1}]), side))[0] is SIDE_READY


def test_the_producer_stays_at_most_two_batches_ahead_and_stops_on_close():
    produced = []

    def batches():
        for i in range(100):
            produced.append(i)
            yield {i: i}

    pre = _Prefetched(batches())
    it = iter(pre)
    assert next(it) == {0: 0}
    for _ in range(200):  # let the producer run as far as it may
        if len(produced) >= 4:
            break
        threading.Event().wait(0.01)
    assert len(produced) <= 4  # the one handed over, two ahead, and one waiting for a slot
    pre.close()  # wakes the producer waiting for a slot; it ends without producing more
    assert not pre._worker.is_alive() and len(produced) <= 4


def test_a_failing_producer_raises_in_the_consumer():
    def batches():
        yield {1: 1}
        raise RuntimeError("gone")

    got = []
    try:
        for item in _Prefetched(batches()):
            got.append(item)
    except RuntimeError as exc:
        assert str(exc) == "gone"
    else:
        raise AssertionError("no error")
    assert got == [{1: 1}]
