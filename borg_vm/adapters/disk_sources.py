"""DiskSource implementations (see core/disk_source.py): where a backup reads disks.

- ``PullBackupSource``: the NBD exports of a libvirt pull-mode backup job on a
  unix socket; one export per disk, named by its target, with the job's dirty
  bitmap under ``qemu:dirty-bitmap:backup-<target>``.
- ``ImageSource``: the images of a shut-off domain, each served read-only by
  its own qemu-nbd for as long as the source is open (which holds the image
  locks, so the domain cannot start and write meanwhile), with a persistent
  bitmap under ``qemu:dirty-bitmap:<bitmap>``.

Every source here is an NBD server read through libnbd, so they share the
reading side (``_NbdSource``) and differ in how an export is reached and what
its dirty-bitmap context is called.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from borg_vm.adapters import qemu
from borg_vm.adapters.libnbd import (
    BASE_ALLOCATION,
    Export,
    bitmap_context,
    dirty_bitmap_context,
    open_endpoint,
    open_unix,
)
from borg_vm.core.disk_source import DiskStatus, Endpoint
from borg_vm.core.extent import status_ranges

# 4 MiB requests with 8 in flight read a libvirt pull-backup export much faster
# than one request at a time (measured with libnbd 1.14 on a 2 GiB image: ~960
# against ~550 MiB/s), and faster than Borg ingests: in a profiled full backup
# the reading thread waits on its full queue most of the time (bench/NOTES.md,
# "Full backup (item 1)").
READ_REQUEST = 4 * 1024 * 1024
READS_IN_FLIGHT = 8
# Dirty ranges closer than this share one allocation request: one more request
# costs the server about as much as scanning this much more of a sparse qcow2.
STATUS_GAP = 32 * 1024 * 1024


class _NbdSource:
    """The reading side shared by NBD-backed sources.

    A disk is reached over two connections, each with one metadata context:
    its dirty bitmap, then ``base:allocation`` (with the reads). QEMU computes
    every context a connection asked for over each block-status request, and
    allocation is the costly one (reading every L2 table of a qcow2: ~1.5 s for
    a fragmented 1 TiB disk), so an incremental asks for allocation only near
    its dirty ranges (extent.status_ranges).
    """

    read_request = READ_REQUEST

    def _open(self, target: str) -> contextlib.AbstractContextManager[Export]:
        """The disk's export with the base:allocation context."""
        raise NotImplementedError

    def _open_dirty(self, target: str) -> contextlib.AbstractContextManager[Export]:
        """The disk's export with its dirty bitmap's context (_dirty_context)."""
        raise NotImplementedError

    def _dirty_context(self, target: str) -> str:
        raise NotImplementedError

    def extent_map(self, target: str, incremental: bool) -> DiskStatus:
        """Return the disk's size and allocation runs over the whole disk or, for an
        incremental, its dirty runs and the allocation runs around them."""
        if not incremental:
            with self._open(target) as exp:
                return DiskStatus(exp.size, tuple(exp.block_status(BASE_ALLOCATION)))
        with self._open_dirty(target) as exp:
            size = exp.size
            dirty = exp.block_status(self._dirty_context(target))
        with self._open(target) as exp:
            allocation = exp.block_status(BASE_ALLOCATION, status_ranges(dirty, STATUS_GAP))
        return DiskStatus(size, tuple(allocation), tuple(dirty))

    @contextlib.contextmanager
    def reads(self, target: str, requests: Iterable[tuple[int, int]], hold: int
              ) -> Iterator[Iterator[tuple[int, memoryview]]]:
        """Yield pipelined reads of the requests (READS_IN_FLIGHT at once)."""
        with self._open(target) as exp:
            yield exp.read_pipelined(requests, READS_IN_FLIGHT, hold)


class PullBackupSource(_NbdSource):
    """The exports of a libvirt pull-mode backup job serving on a unix socket."""

    def __init__(self, socket: str):
        self.socket = socket

    def _open(self, target: str):
        return open_unix(self.socket, target, [BASE_ALLOCATION])

    def _open_dirty(self, target: str):
        return open_unix(self.socket, target, [self._dirty_context(target)])

    def _dirty_context(self, target: str) -> str:
        return dirty_bitmap_context(target)

    def endpoint(self, target: str) -> Endpoint:
        return Endpoint(uri=f"nbd+unix:///{urllib.parse.quote(target)}?socket="
                            f"{urllib.parse.quote(self.socket)}")


class NbdServers(Protocol):
    """Where the images are: serve(argv) is the context in which the qemu-nbd of
    argv serves, as an Endpoint (services/hosts.py: on this machine, a command
    libnbd starts per connection; on a hypervisor over ssh, a server there,
    forwarded)."""

    def nbd_server(self, argv: Sequence[str]) -> contextlib.AbstractContextManager[Endpoint]:
        ...


class _ThisMachine:
    def nbd_server(self, argv: Sequence[str]) -> contextlib.AbstractContextManager[Endpoint]:
        return contextlib.nullcontext(Endpoint(command=tuple(argv)))


THIS_MACHINE: NbdServers = _ThisMachine()


class ImageSource(_NbdSource):
    """Images served by qemu-nbd, one server per disk, all started on entry and
    held until exit: block status and reads see one unchanging image.

    images maps each target to (path, format, bitmap or None); a disk with a
    bitmap exports it as its dirty context, from a second read-only qemu-nbd
    started for the dirty map alone (the first one's lock lets it read).
    servers says where qemu-nbd runs (the images' machine).
    """

    def __init__(self, images: dict[str, tuple[str, str, str | None]],
                 servers: NbdServers = THIS_MACHINE):
        self.images = images
        self.servers = servers
        self._endpoints: dict[str, Endpoint] = {}
        self._exports: dict[str, Export] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ImageSource:
        with contextlib.ExitStack() as stack:
            for target, (path, fmt, _bitmap) in sorted(self.images.items()):
                endpoint = stack.enter_context(
                    self.servers.nbd_server(qemu.nbd_reader_argv(path, fmt)))
                self._endpoints[target] = endpoint
                self._exports[target] = stack.enter_context(open_endpoint(
                    endpoint, where=f"{target} ({path})", contexts=[BASE_ALLOCATION]))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._exports.clear()
        self._endpoints.clear()
        self._stack.close()

    def _open(self, target: str):
        return contextlib.nullcontext(self._exports[target])

    @contextlib.contextmanager
    def _open_dirty(self, target: str) -> Iterator[Export]:
        path, fmt, bitmap = self.images[target]
        with self.servers.nbd_server(qemu.nbd_reader_argv(path, fmt, bitmap)) as endpoint, \
                open_endpoint(endpoint, where=f"{target} ({path}, bitmap {bitmap})",
                              contexts=[self._dirty_context(target)]) as exp:
            yield exp

    def endpoint(self, target: str) -> Endpoint:
        """The image's server for another program: on this machine a second
        read-only qemu-nbd (the first one's lock lets it read), elsewhere the
        first one, which serves many clients."""
        return self._endpoints[target]

    def _dirty_context(self, target: str) -> str:
        bitmap = self.images[target][2]
        assert bitmap, f"disk {target} was opened without a bitmap"
        return bitmap_context(bitmap)
