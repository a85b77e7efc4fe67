"""Where a backup reads a disk's data: the DiskSource interface. Pure, no I/O.

The stream into Borg is written once (services/backup/run.py) and asks a source
two things per disk, in this order::

    extent_map(target, incremental) -> DiskStatus      what the disk holds now and,
                                                    for an incremental, what changed
    reads(target, requests)         -> (offset, data) for each (offset, length)
                                                    request, in request order

or, where Borg reads the disk itself (Borg 2's create --map), after the map::

    endpoint(target)                -> Endpoint       how to reach its NBD export

Implementations live in adapters/disk_sources.py: today a libvirt pull-mode backup
job's NBD exports (a running domain, frozen at the job's start). The offline
source (qemu-nbd over an image's persistent bitmaps, for a shut-off domain)
and the old-layer source (a read-only backing image with its bitmaps) are
siblings behind the same interface.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from borg_vm.core.extent import Run


@dataclass(frozen=True)
class DiskStatus:
    """One disk as a source sees it: virtual size, ``base:allocation`` runs and,
    for an incremental, the dirty-bitmap runs since the parent checkpoint. The
    allocation runs cover the whole disk for a full, and at least the dirty
    runs for an incremental (extent.status_ranges: asking a big qcow2 for all
    of its allocation costs QEMU seconds)."""

    size: int
    allocation: tuple[Run, ...]
    dirty: tuple[Run, ...] | None = None


@dataclass(frozen=True)
class Endpoint:
    """How another program reaches a disk's NBD export: an NBD URI, or the argv of
    a server to start with systemd socket activation (one of the two)."""

    uri: str | None = None
    command: tuple[str, ...] = ()


class DiskSource(Protocol):
    read_request: int   # the largest read to ask for at once, in bytes

    def extent_map(self, target: str, incremental: bool) -> DiskStatus:
        """Return the disk's map; with incremental, the dirty runs too."""

    def reads(self, target: str, requests: Iterable[tuple[int, int]], hold: int
              ) -> AbstractContextManager[Iterator[tuple[int, memoryview]]]:
        """Yield an iterator of (offset, data) for the requests (consumed as reads go
        out), in order; each view stays valid while the consumer holds at most
        `hold` of them."""

    def endpoint(self, target: str) -> Endpoint:
        """Return how another program reads the disk (read-only, the same data
        reads yields)."""
