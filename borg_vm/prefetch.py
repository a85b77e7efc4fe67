"""Run a producer iterator in a background thread, ahead of its consumer.

Used so NBD reads overlap with Borg ingesting the previous data: the
producer blocks once `depth` items wait, which bounds memory.
"""

from __future__ import annotations

import contextlib
import mmap
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")
_DONE = object()
_JOIN_POLL_SECONDS = 0.05


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


@contextlib.contextmanager
def ahead(items: Iterable[T], depth: int) -> Iterator[Iterator[T]]:
    """Yield an iterator over items, produced by a thread at most depth items ahead.

    An exception in the producer is raised in the consumer. Leaving the block
    early stops the producer and waits for it, so nothing outlives the block.
    """
    if depth < 1:
        raise ValueError("depth must be at least 1 (0 would be unbounded)")
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(_Failure(e))

    def consume() -> Iterator[T]:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    q.get_nowait()
            worker.join(_JOIN_POLL_SECONDS)


class Buffers:
    """count writable buffers of size bytes, taken in turn by a producer that
    fills them (take) while a consumer's writes may still read earlier ones
    (hold): a buffer is handed out again only after every write holding it
    finished, so no piece is overwritten under a write in flight, however many
    pieces the consumer skips without writing.

    Each starts on a page boundary (what O_DIRECT writes need) and is reused, so
    streaming gigabytes costs no page faults after the first round.
    """

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._views = [memoryview(mmap.mmap(-1, size)) for _ in range(count)]
        self._index = {id(v.obj): i for i, v in enumerate(self._views)}
        self._held: list[list[Future]] = [[] for _ in range(count)]
        self._lock = threading.Lock()
        self._next = 0

    def take(self) -> memoryview:
        """Return the next buffer in turn, once the writes holding it finished
        (it raises what the first failed one raised)."""
        i = self._next
        self._next = (i + 1) % len(self._views)
        with self._lock:
            held, self._held[i] = self._held[i], []
        for done in held:
            done.result()
        return self._views[i]

    def hold(self, piece: memoryview, write: Future | None) -> None:
        """Given a piece of one of these buffers and the write still reading it
        (None: it was written at once), keep its buffer from take until the
        write finished."""
        if write is not None and not write.done():
            with self._lock:
                self._held[self._index[id(piece.obj)]].append(write)
