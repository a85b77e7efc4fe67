"""Prefetch: order, errors handed to the consumer, and no thread outliving its block."""

import ctypes
import threading
from concurrent.futures import Future

import pytest

from borg_vm.prefetch import Buffers, ahead


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "prefetch"]


@pytest.fixture(autouse=True)
def no_thread_left():
    assert prefetch_threads() == []
    yield
    assert prefetch_threads() == [], "a prefetch thread outlived its block"


@pytest.mark.parametrize("depth", [1, 2, 4, 100])
def test_items_in_order(depth):
    with ahead(iter(range(1000)), depth) as items:
        assert list(items) == list(range(1000))


def test_empty():
    with ahead([], 4) as items:
        assert list(items) == []


def test_producer_stays_within_depth():
    produced = []
    idle = threading.Event()   # never set: a bounded wait between polls

    def gen():
        for i in range(100):
            produced.append(i)
            yield i

    with ahead(gen(), 3) as items:
        assert next(items) == 0
        # 1 consumed + 3 queued + 1 held by the producer while it waits for room
        for _ in range(200):
            if len(produced) >= 5:
                break
            idle.wait(0.01)
        idle.wait(0.05)
        assert len(produced) == 5
        assert list(items) == list(range(1, 100))


def test_producer_exception_reaches_consumer():
    def gen():
        yield 1
        yield 2
        raise OSError("NBD read failed")

    got = []
    with pytest.raises(OSError, match="NBD read failed"):
        with ahead(gen(), 2) as items:
            for item in items:
                got.append(item)
    assert got == [1, 2]


def test_producer_exception_before_first_item():
    def gen():
        raise ValueError("no")
        yield  # pragma: no cover

    with pytest.raises(ValueError):
        with ahead(gen(), 2) as items:
            next(items)


def test_leaving_early_stops_producer():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    with ahead(endless(), 2) as items:
        assert [next(items) for _ in range(5)] == list(range(5))
    # the thread is gone (checked by the fixture) and stopped soon after the consumer left
    assert len(produced) <= 5 + 2 + 2


def test_consumer_exception_stops_producer():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    with pytest.raises(RuntimeError, match="borg died"):
        with ahead(endless(), 4) as items:
            next(items)
            raise RuntimeError("borg died")


def test_leaving_without_consuming():
    """Guards the drain in ahead()'s exit: a producer blocked on a full queue
    (depth 1, nothing consumed) must be woken by emptying the queue, see the
    stop flag and end, so leaving the block neither hangs nor leaves the thread
    running through the rest of its source (the fixture checks the thread is gone)."""
    source = iter(range(10**6))
    done = threading.Event()

    def leave():
        with ahead(source, 1):
            pass
        done.set()

    leaver = threading.Thread(target=leave, daemon=True)
    leaver.start()
    assert done.wait(10), "leaving the block hung on the blocked producer"
    leaver.join()
    # at most the queued item, the one blocked in put and one after the drain were taken
    assert next(source) <= 3


def test_producer_runs_in_another_thread():
    seen = []

    def gen():
        seen.append(threading.current_thread().name)
        yield 1

    with ahead(gen(), 1) as items:
        assert list(items) == [1]
    assert seen == ["prefetch"]


def test_buffers_are_separate_writable_and_page_aligned():
    ring = Buffers(3, 8192)
    bufs = [ring.take() for _ in range(3)]
    for i, b in enumerate(bufs):
        assert len(b) == 8192 and not b.readonly
        b[:] = bytes([i]) * 8192
        assert ctypes.addressof(ctypes.c_char.from_buffer(b)) % 4096 == 0
    assert [bytes(b[:1]) for b in bufs] == [b"\x00", b"\x01", b"\x02"]
    assert ring.take() is bufs[0]   # in turn


def test_a_buffer_is_taken_again_only_once_the_writes_holding_it_finished():
    """Restore skips zero blocks and pieces of disks it does not write, so writes
    do not come one per buffer: the buffers themselves wait for them."""
    ring = Buffers(2, 4096)
    first = ring.take()
    write = Future()
    write.set_running_or_notify_cancel()
    ring.hold(first[1024:2048], write)
    ring.hold(first[:1024], None)            # written at once
    ring.take()
    taken = []
    taker = threading.Thread(target=lambda: taken.append(ring.take()))
    taker.start()
    taker.join(0.2)
    assert taker.is_alive() and not taken
    write.set_result(None)
    taker.join(5)
    assert taken == [first]


def test_a_failed_write_is_raised_by_take():
    ring = Buffers(1, 4096)
    write = Future()
    write.set_running_or_notify_cancel()
    ring.hold(ring.take(), write)
    write.set_exception(OSError(5, "Input/output error"))
    with pytest.raises(OSError, match="Input/output"):
        ring.take()
    ring.take()   # raised once
