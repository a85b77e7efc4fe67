"""libnbd: the only module that imports the nbd binding (Debian's python3-libnbd).

Reading a backup export (block status of several metadata contexts,
pipelined reads with several requests in flight) and writing images served
by qemu-nbd for restore. NBD errors become NbdError with the export named.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import Callable, Iterable, Iterator, Sequence

import nbd

from ..errors import NbdError
from ..core.extent import Run, clip_runs, runs_from_entries

log = logging.getLogger(__name__)

BASE_ALLOCATION = nbd.CONTEXT_BASE_ALLOCATION
# A block-status request covers at most this much; servers may answer less.
MAX_BLOCK_STATUS = 1024 * 1024 * 1024
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

    def __init__(self, handle: "nbd.NBD", where: str):
        self.h = handle
        self.where = where

    def _fail(self, action: str, e: "nbd.Error") -> NbdError:
        return NbdError(action=action, where=self.where, detail=e.string, errno=e.errnum)

    @property
    def size(self) -> int:
        return self.h.get_size()

    def can_meta_context(self, context: str) -> bool:
        return bool(self.h.can_meta_context(context))

    def block_status(self, contexts: Sequence[str]) -> dict[str, list[Run]]:
        """Return the runs of each context covering the whole export.

        Raise NbdError if the server does not report a requested context.
        """
        size, offset = self.size, 0
        runs: dict[str, list[Run]] = {c: [] for c in contexts}
        while offset < size:
            reply: dict[str, list[Run]] = {}

            def collect(context, start, entries, _err):
                if context in runs:
                    reply[context] = runs_from_entries(start, entries)
                return 0

            try:
                self.h.block_status(min(size - offset, MAX_BLOCK_STATUS), offset, collect)
            except nbd.Error as e:
                raise self._fail("block status", e) from e
            missing = set(contexts) - set(reply)
            if missing:
                raise NbdError(action="block status", where=self.where,
                               detail=f"server did not report {', '.join(sorted(missing))}")
            end = min(size, *(r[-1].end for r in reply.values() if r))
            if end <= offset:
                raise NbdError(action="block status", where=self.where,
                               detail=f"no progress at offset {offset}")
            for c in contexts:
                runs[c].extend(clip_runs(reply[c], offset, end))
            offset = end
        return runs

    def read_pipelined(self, requests: Iterable[tuple[int, int]], depth: int,
                       hold: int) -> Iterator[tuple[int, memoryview]]:
        """Yield (offset, data) for each (offset, length) request, in order.

        Up to depth requests are in flight at once. Buffers are recycled: a
        yielded view stays valid while the consumer holds at most `hold`
        yielded views (the current one included), so reading gigabytes costs
        a fixed set of buffers and no page faults after the first round.
        """
        requests = list(requests)
        size = max((length for _, length in requests), default=0)
        ring = [bytearray(size) for _ in range(min(len(requests), depth + hold))]
        pending: collections.deque = collections.deque()
        todo = iter(enumerate(requests))

        def submit() -> None:
            for i, (offset, length) in todo:
                view = memoryview(ring[i % len(ring)])[:length]
                cookie = self.h.aio_pread(nbd.Buffer.from_buffer(view), offset)
                pending.append((cookie, offset, view))
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
    def pipelined_writes(self, depth: int) -> Iterator["Callable[[bytes, int], None]"]:
        """Yield write(data, offset) that keeps up to depth writes in flight.

        data must not change after it was passed. Leaving the block waits for
        every write; raise NbdError if one failed.
        """
        pending: collections.deque = collections.deque()

        def retire() -> None:
            cookie, _keep = pending[0]
            while not self.h.aio_command_completed(cookie):
                self.h.poll(-1)
            pending.popleft()

        def write(data, offset: int) -> None:
            buf = nbd.Buffer.from_buffer(data)
            pending.append((self.h.aio_pwrite(buf, offset), buf))
            while len(pending) >= depth:
                retire()

        try:
            yield write
            while pending:
                retire()
        except nbd.Error as e:
            raise self._fail("write", e) from e

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros, unallocating where the image allows."""
        end = offset + length
        try:
            while offset < end:
                n = min(end - offset, MAX_ZERO_REQUEST)
                self.h.zero(n, offset)
                offset += n
        except nbd.Error as e:
            raise self._fail(f"write zeroes at {offset}", e) from e

    def flush(self) -> None:
        try:
            self.h.flush()
        except nbd.Error as e:
            raise self._fail("flush", e) from e


@contextlib.contextmanager
def _handle(where: str, contexts: Sequence[str] = ()) -> Iterator["nbd.NBD"]:
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


def _close(h: "nbd.NBD") -> None:
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
def open_stdio_command(argv: Sequence[str], where: str,
                       contexts: Sequence[str] = ()) -> Iterator[Export]:
    """Yield the export of an NBD server speaking on its stdin/stdout (e.g. nbdkit -s)."""
    with _handle(where, contexts) as h:
        h.connect_command(list(argv))
        yield Export(h, where)
