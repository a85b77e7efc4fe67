"""libnbd: the only module that imports the nbd binding (Debian's python3-libnbd).

Reading a backup export (block status of several metadata contexts,
pipelined reads with several requests in flight) and writing images served
by qemu-nbd for restore. NBD errors become NbdError with the export named.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import nbd

from borg_vm.core.disk_source import Endpoint
from borg_vm.core.extent import Run, clip_runs, runs_from_entries
from borg_vm.errors import NbdError

log = logging.getLogger(__name__)

BASE_ALLOCATION = nbd.CONTEXT_BASE_ALLOCATION
# A block-status request covers at most this much; servers may answer less.
MAX_BLOCK_STATUS = 1024 * 1024 * 1024
# QEMU spends ~1.5 s of CPU mapping a fragmented 1 TiB qcow2 (issue #11); with
# two requests out, it works on the next while this side parses a reply.
BLOCK_STATUS_IN_FLIGHT = 2
# NBD_CMD_WRITE_ZEROES takes a 32-bit length: zero big ranges in steps.
MAX_ZERO_REQUEST = 1024 * 1024 * 1024


def bitmap_context(bitmap: str) -> str:
    """Return the metadata context QEMU's NBD server exports a dirty bitmap under."""
    return f"qemu:dirty-bitmap:{bitmap}"


def dirty_bitmap_context(target: str) -> str:
    """Return the metadata context libvirt's backup job exports a disk's dirty bitmap under."""
    return bitmap_context(f"backup-{target}")


class Export:
    """A connected NBD export (one disk)."""

    def __init__(self, handle: nbd.NBD, where: str):
        self.h = handle
        self.where = where

    def _fail(self, action: str, e: nbd.Error) -> NbdError:
        return NbdError(action=action, where=self.where, detail=e.string, errno=e.errnum)

    @property
    def size(self) -> int:
        return self.h.get_size()

    def can_meta_context(self, context: str) -> bool:
        return bool(self.h.can_meta_context(context))

    def block_status(self, context: str, ranges: Iterable[tuple[int, int]] | None = None
                     ) -> list[Run]:
        """Return the sorted runs of a metadata context covering the half-open
        (start, end) ranges (default: the whole export).

        Requests of at most MAX_BLOCK_STATUS bytes go out BLOCK_STATUS_IN_FLIGHT
        at a time, so the server works on the next while this side reads a
        reply; a reply that covers less than its request is followed by one for
        the rest, one that covers more is cut at the request's end. Raise
        NbdError if the server does not report the context or stops making
        progress.
        """
        todo = collections.deque(_windows(ranges if ranges is not None else [(0, self.size)],
                                          MAX_BLOCK_STATUS))
        pending: collections.deque = collections.deque()
        done: list[tuple[int, list[Run]]] = []
        try:
            while todo or pending:
                while todo and len(pending) < BLOCK_STATUS_IN_FLIGHT:
                    pending.append(self._ask_status(context, *todo.popleft()))
                cookie, start, end, reply = pending.popleft()
                while not self.h.aio_command_completed(cookie):
                    self.h.poll(-1)
                runs = self._answered(context, start, end, reply)
                done.append((start, runs))
                if runs[-1].end < end:
                    todo.appendleft((runs[-1].end, end))
        except nbd.Error as e:
            raise self._fail("block status", e) from e
        done.sort(key=lambda d: d[0])
        return _joined(runs for _start, runs in done)

    def _ask_status(self, context: str, start: int, end: int) -> tuple:
        """Send one block status request for [start, end); return what to wait for."""
        reply: list[list[Run]] = []

        def collect(meta, offset, entries, _err):
            if meta == context:
                reply.append(runs_from_entries(offset, entries))
            return 0

        return self.h.aio_block_status(end - start, start, collect), start, end, reply

    def _answered(self, context: str, start: int, end: int, reply: list[list[Run]]
                  ) -> list[Run]:
        """Return the runs a completed request reported inside [start, end), at least one."""
        if not reply:
            raise NbdError(action="block status", where=self.where,
                           detail=f"server did not report {context}")
        runs = reply[0]
        if runs and runs[-1].end > end:  # the server may say more than it was asked
            runs = clip_runs(runs, start, end)
        if not runs or runs[0].start != start:
            raise NbdError(action="block status", where=self.where,
                           detail=f"no progress at offset {start}")
        return runs

    def read_pipelined(self, requests: Iterable[tuple[int, int]], depth: int,
                       hold: int) -> Iterator[tuple[int, memoryview]]:
        """Yield (offset, data) for each (offset, length) request, in order.

        Up to depth requests are in flight at once. Buffers are recycled: a
        yielded view stays valid while the consumer holds at most `hold`
        yielded views (the current one included), so reading gigabytes costs
        depth + hold buffers (each as big as the largest request it served)
        and no page faults after the first round. requests may be a generator:
        it is consumed as reads go out.
        """
        ring = [_Slot() for _ in range(depth + hold)]
        pending: collections.deque = collections.deque()
        todo = iter(enumerate(requests))

        def submit() -> None:
            for i, (offset, length) in todo:
                view, buf = ring[i % len(ring)].get(length)
                pending.append((self.h.aio_pread(buf, offset), offset, view))
                if len(pending) >= depth:
                    return

        try:
            submit()
            while pending:
                cookie, offset, view = pending[0]
                while not self.h.aio_command_completed(cookie):
                    self.h.poll(-1)
                pending.popleft()
                submit()
                yield offset, view
        except nbd.Error as e:
            raise self._fail("read", e) from e

    def pwrite(self, data, offset: int) -> None:
        try:
            self.h.pwrite(data, offset)
        except nbd.Error as e:
            raise self._fail(f"write at {offset}", e) from e

    @contextlib.contextmanager
    def pipelined_writes(self, depth: int) -> Iterator[Callable[[bytes, int], None]]:
        """Yield write(data, offset) that keeps up to depth writes in flight.

        data is copied into one of depth recycled buffers (see _Slot: libnbd
        would otherwise keep every buffer written from, a restore all it
        wrote), so the caller may reuse it at once. Leaving the block waits
        for every write; raise NbdError if one failed.
        """
        ring = [_Slot() for _ in range(depth)]
        pending: collections.deque = collections.deque()
        written = 0

        def write(data, offset: int) -> None:
            nonlocal written
            while len(pending) >= depth:  # the slot about to be used is free again
                self._retire(pending)
            view, buf = ring[written % depth].get(len(data))
            view[:] = data
            pending.append(self.h.aio_pwrite(buf, offset))
            written += 1

        try:
            yield write
            while pending:
                self._retire(pending)
        except nbd.Error as e:
            raise self._fail("write", e) from e

    def _retire(self, pending: collections.deque) -> None:
        """Wait for the oldest command in flight to complete (it raises nbd.Error if
        it failed) and drop it."""
        cookie = pending[0]
        while not self.h.aio_command_completed(cookie):
            self.h.poll(-1)
        pending.popleft()

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros, unallocating where the image allows."""
        self.zero_ranges([(offset, length)], 1)

    def zero_ranges(self, ranges: Iterable[tuple[int, int]], depth: int) -> None:
        """Make each (offset, length) of ranges read as zeros, as zero does, with up
        to depth requests in flight: a record may list millions of zero extents,
        and one request at a time pays a round trip each."""
        pending: collections.deque = collections.deque()
        offset = 0
        try:
            for offset, length in ranges:
                for at in range(offset, offset + length, MAX_ZERO_REQUEST):
                    while len(pending) >= depth:
                        self._retire(pending)
                    n = min(offset + length - at, MAX_ZERO_REQUEST)
                    pending.append(self.h.aio_zero(n, at))
            while pending:
                self._retire(pending)
        except nbd.Error as e:
            raise self._fail(f"write zeroes (at {offset} or before)", e) from e

    def flush(self) -> None:
        try:
            self.h.flush()
        except nbd.Error as e:
            raise self._fail("flush", e) from e


class _Slot:
    """One recycled I/O buffer, with the nbd.Buffer of each length used so far.

    libnbd 1.14's Python binding keeps every buffer object passed to
    aio_pread/aio_pwrite alive for good: measured, ~300 bytes a read (60 MiB
    for 200,000 reads), and a write's whole data (a restore held everything it
    wrote, 6 GiB for a 6 GiB disk). The same objects used again cost nothing
    more.
    """

    def __init__(self):
        self.data = bytearray()
        self.buffers: dict[int, tuple[memoryview, nbd.Buffer]] = {}

    def get(self, length: int) -> tuple[memoryview, nbd.Buffer]:
        """Return a view of the first length bytes and the nbd.Buffer over it."""
        if len(self.data) < length:  # a held view keeps the old buffer alive
            self.data = bytearray(length)
            self.buffers = {}
        if length not in self.buffers:
            view = memoryview(self.data)[:length]
            self.buffers[length] = (view, nbd.Buffer.from_buffer(view))
        return self.buffers[length]


def _joined(replies: Iterable[list[Run]]) -> list[Run]:
    """Return the runs of consecutive replies as one list, the last run of a reply
    joined with the first of the next where they touch with the same flags
    (requests cut the server's runs at their ends)."""
    out: list[Run] = []
    for runs in replies:
        first = runs[0]
        if out and out[-1].end == first.start and out[-1].flags == first.flags:
            out[-1] = Run(out[-1].start, out[-1].length + first.length, first.flags)
            out.extend(runs[1:])
        else:
            out.extend(runs)
    return out


def _windows(ranges: Iterable[tuple[int, int]], most: int) -> Iterator[tuple[int, int]]:
    """Yield the half-open ranges cut into pieces of at most `most` bytes."""
    for start, end in ranges:
        for lo in range(start, end, most):
            yield lo, min(end, lo + most)


@contextlib.contextmanager
def _handle(where: str, contexts: Sequence[str] = ()) -> Iterator[nbd.NBD]:
    h = nbd.NBD()
    try:
        for c in contexts:
            h.add_meta_context(c)
        yield h
    except nbd.Error as e:
        raise NbdError(action="connect", where=where, detail=e.string) from e
    finally:
        with contextlib.suppress(nbd.Error):
            h.shutdown()
        _close(h)


def _close(h: nbd.NBD) -> None:
    """Close h now, whoever still holds a reference to it.

    Closing (not just disconnecting) waits for a server libnbd started to
    exit; until then qemu-nbd holds its image's lock, and the next qemu-nbd on
    that image (a flatten restore's next layer) fails to lock it.
    """
    if hasattr(h, "close"):  # libnbd >= 1.16
        h.close()
    elif hasattr(h, "_o"):  # 1.14 closes only in __del__: do what close() does later
        nbd.libnbdmod.close(h._o)
        del h._o


@contextlib.contextmanager
def open_unix(socket: str, export: str, contexts: Sequence[str] = ()) -> Iterator[Export]:
    """Yield the named export of the NBD server on a unix socket, with metadata contexts."""
    where = f"export {export!r} at {socket}"
    with _handle(where, contexts) as h:
        h.set_export_name(export)
        h.connect_unix(socket)
        yield Export(h, where)


@contextlib.contextmanager
def open_command(argv: Sequence[str], where: str,
                 contexts: Sequence[str] = ()) -> Iterator[Export]:
    """Yield the export of an NBD server libnbd starts with socket activation (e.g. qemu-nbd).

    The server lives exactly as long as the connection.
    """
    with _handle(where, contexts) as h:
        h.connect_systemd_socket_activation(list(argv))
        yield Export(h, where)


@contextlib.contextmanager
def open_endpoint(endpoint: Endpoint, where: str,
                  contexts: Sequence[str] = ()) -> Iterator[Export]:
    """Yield the export endpoint names: a server libnbd starts (its command), or
    one that serves already (its NBD URI)."""
    if endpoint.uri is None:
        with open_command(endpoint.command, where, contexts) as exp:
            yield exp
        return
    with _handle(where, contexts) as h:
        h.connect_uri(endpoint.uri)
        yield Export(h, where)
