"""Writing one archive's data into restored images: the part of restore shared
by its modes (chain, flatten, layers).

Data is addressed by (disk target, layer): layer 0 is what the guest saw
(``disk/{target}/...`` members, the disk's manifest record), layer i >= 1 the
final changes of the archive's i-th image (``frozen/{target}/{i}/...``, its
sealed record). Every piece is checked against the disk's size before it is
written, and every written record against its extents and SHA-256 after.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import cast

from borg_vm import prefetch
from borg_vm.adapters import qemu, rawimage, subproc
from borg_vm.adapters.borg import ImageStore
from borg_vm.adapters.libnbd import open_command
from borg_vm.core import extent
from borg_vm.errors import IntegrityError
from borg_vm.format import names as fmt
from borg_vm.format import reader
from borg_vm.format.manifest import Manifest
from borg_vm.format.reader import Key
from borg_vm.format.summary import ArchiveInfo
from borg_vm.format.tarstream import Member
from borg_vm.progress import Progress

# Pieces of data members handed from the borg reader thread to the writer.
RESTORE_PIECE = 4 * 1024 * 1024
RESTORE_PREFETCH = 4
WRITES_IN_FLIGHT = 4
# A complete image is read from borg, and its changed blocks written, up to
# this many blocks at a time: adjacent blocks that differ from what lies below
# go out as one write (one NBD request to qemu-nbd instead of sixteen).
IMAGE_SPAN_BLOCKS = 16
# Zero requests carry no data: as many in flight as qemu-nbd takes at once (its
# NBD server's MAX_NBD_REQUESTS), so millions of zero extents do not each wait
# for a round trip.
ZEROS_IN_FLIGHT = 16
# The reader hands over one buffer of pieces at a time (members.buffer_batches).
# Every piece read and not yet written is in a buffer: those queued, the one the
# reader hands over and the next it fills meanwhile, those of the writes in
# flight and the one being written (with fewer the reader would wait for the
# writer: prefetch.Buffers).
RESTORE_BUFFERS = RESTORE_PREFETCH + 2 + WRITES_IN_FLIGHT + 1
# Restored images and XML hold decrypted guest data: readable by their owner only,
# set before any data is written, whatever the umask.
PRIVATE = 0o600



def remove_file(path: str) -> None:
    """Remove a file restore or boot made, if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def create_image(path: str, fmt_: str, size: int, backing: str | None = None,
                 backing_format: str | None = None) -> None:
    """Create an empty image (a qcow2 overlay on backing) readable by its owner only."""
    qemu.create(path, fmt_, size, backing=backing, backing_format=backing_format)
    os.chmod(path, PRIVATE)


@dataclass(frozen=True)
class Layer:
    """One image to write one archive's data of one disk into."""

    path: str
    format: str
    zeros: bool   # write the zero extents too (the image lies over older data)


def read_for(arc: ArchiveInfo, keys: Iterable[Key], known: Manifest | None = None
             ) -> reader.Read:
    """Return what apply_archive reads of arc to write keys: their data and the manifest.

    Sealed layers (layer >= 1) can be asked for only with the archive's manifest
    already read (known).
    """
    # A record with only zero extents has no data members (and borg warns about
    # a path that matches nothing).
    wanted = [w for k in keys if (w := _wanted(arc, known, k))]
    return reader.Read(arc.archive, tuple(p for p, _ in wanted) + (fmt.MANIFEST,),
                        sum(n for _, n in wanted))


def apply_archive(found: AbstractContextManager[Iterator[Member]], arc: ArchiveInfo,
                  layers: dict[Key, Layer], progress: Progress) -> Manifest:
    """Write the data (and, over older data, the zero extents) of the given
    (disk, layer)s of one archive into their images, in one pass over the archive.
    Two keys must not share an image (their order in the stream is the archive's).

    found yields the archive's members of read_for(arc, layers, ...). Return
    the archive's manifest. Raise IntegrityError unless each record's data
    covers exactly its extents and hashes to its digest; FormatError for a
    damaged archive (also a manifest that disagrees with arc's name or comment,
    reader.check_archive).
    """
    with contextlib.ExitStack() as stack:
        outs = {k: stack.enter_context(_open_image(image)) for k, image in layers.items()}
        sizes = {t: arc.summary.disks[t].virtual_size for t, _ in outs}
        tally = reader.Tally(arc.archive, outs)
        _write_members(found, tally, outs, sizes, progress)
        manifest = tally.manifest(arc)
        tally.check(manifest, outs)
        for k, out in outs.items():
            if layers[k].zeros:
                out.zero_ranges(extent.spans(reader.record_of(arc.archive, manifest, k).extents,
                                             extent.ZERO), ZEROS_IN_FLIGHT)
            out.flush()
    return manifest


class ImageExtracts:
    """The borg extracts of a restore's image archives, started in the order
    apply_image takes them (each image, then the one below it if it has one:
    plan.extract_order), one ahead: Borg 2 takes about a second to open the repository,
    which passes while the image before streams (and, for the first, while the
    record's small members are read). As a context manager: leaving it stops
    every borg still running."""

    def __init__(self, store: ImageStore, order: Sequence[str]):
        self.store = store
        self.order = list(order)
        self._stack = contextlib.ExitStack()
        self._started: list[subproc.Stream] = []
        self._taken = 0

    def __enter__(self) -> ImageExtracts:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        if len(self._started) < len(self.order):
            self._started.append(self._stack.enter_context(
                self.store.extract_image(self.order[len(self._started)])))

    def take(self, image_id: str) -> subproc.Stream:
        """Return the running extract of image_id, the next in order, and start the
        one after it."""
        assert self._taken < len(self.order) and self.order[self._taken] == image_id, \
            f"image archive {image_id} taken out of order"
        stream = self._started[self._taken]
        self._taken += 1
        self._start()
        return stream


def apply_image(extracts: ImageExtracts, image_id: str, layer: Layer, size: int, block: int,
                progress: Progress, below: str | None = None) -> None:
    """Write the one file of the image archive with ID image_id (a complete disk
    image, format version 6) into layer's image, which is new, leaving unwritten
    the blocks that read the same below it: zeros, or (below: the ID of the
    image archive of the layer below, format version 7) that image's blocks.
    Raise IntegrityError if a file is not size bytes, a BorgError if borg fails
    (also when it logs an error: adapters/borg/borg2.py)."""
    span = block * IMAGE_SPAN_BLOCKS
    # A raw image's O_DIRECT writes read their buffer after write() returned: one
    # more buffer than writes in flight, each taken again only once its writes
    # finished (unchanged blocks are skipped, so writes do not come in turn).
    ring = prefetch.Buffers(WRITES_IN_FLIGHT + 1, span)
    under = bytearray(span)
    offset = 0

    def damaged(image: str, holds: str) -> IntegrityError:
        return IntegrityError(target=os.path.basename(layer.path), archive=image,
                              detail=f"its image holds {holds} bytes, the disk {size}")

    with contextlib.ExitStack() as stack:
        out = stack.enter_context(_open_image(layer))
        write = stack.enter_context(out.pipelined_writes(WRITES_IN_FLIGHT))
        proc = extracts.take(image_id)
        lower = extracts.take(below) if below is not None else None
        while True:
            view = ring.take()
            n = _fill(cast(io.BufferedReader, proc.stdout), view)
            if lower is not None and _fill(cast(io.BufferedReader, lower.stdout),
                                           memoryview(under)[:n]) != n:
                raise damaged(cast(str, below), f"fewer than {offset + n}")
            if n == 0:
                break
            if offset + n > size:   # raised before borg sends the rest (it is stopped)
                raise damaged(image_id, f"more than {size}")
            for start, end in changed_runs(view[:n], None if lower is None else under, block):
                ring.hold(view, write(view[start:end], offset + start))
            offset += n
            progress.advance(n)
        extracts.store.finish("extract", proc)
        if lower is not None:
            if lower.stdout.read(1):
                raise damaged(cast(str, below), f"more than {size}")
            extracts.store.finish("extract", lower)
        if offset != size:
            raise damaged(image_id, str(offset))
        out.flush()


def changed_runs(data: memoryview, below: bytearray | None, block: int
                 ) -> Iterator[tuple[int, int]]:
    """Yield (start, end) of each run of adjacent blocks of data that differ from
    the same bytes of below (None: zeros), the last block possibly short."""
    run = None
    for at in range(0, len(data), block):
        end = min(at + block, len(data))
        # A copy and memcmp: ~20 times faster than comparing memoryviews.
        same = _zeros(end - at) if below is None else below[at:end]
        if data[at:end].tobytes() != same:
            run = at if run is None else run
        elif run is not None:
            yield run, at
            run = None
    if run is not None:
        yield run, len(data)


@functools.cache
def _zeros(n: int) -> bytes:
    return bytes(n)


def _fill(stream: io.BufferedReader, view: memoryview) -> int:
    """Read into view until it is full or the stream ends; return the bytes read."""
    got = 0
    while got < len(view) and (n := stream.readinto(view[got:])):
        got += n
    return got


def _open_image(layer: Layer):
    """Return a context manager opening layer's image for writing: a raw image
    directly, a qcow2 through a qemu-nbd libnbd starts (both with O_DIRECT where
    the file system allows)."""
    if layer.format == "raw":
        return rawimage.open_raw(layer.path)
    return open_command(qemu.nbd_server_argv(layer.path, layer.format,
                                             direct=rawimage.supports_direct(layer.path)),
                        where=os.path.basename(layer.path))


def _wanted(arc: ArchiveInfo, known: Manifest | None, key: Key) -> tuple[str, int] | None:
    """Return (the path borg is asked for to get key's data, its data bytes), or
    None if it has none."""
    target, layer = key
    if layer == 0:
        n = arc.summary.disks[target].data_bytes
        return (fmt.disk_prefix(target), n) if n else None
    assert known is not None, "sealed layers need the manifest read first"
    record = reader.record_of(arc.archive, known, key)
    return (fmt.sealed_prefix(target, layer), record.data_bytes) if record.data_bytes else None


def _write_members(found: AbstractContextManager[Iterator[Member]], tally: reader.Tally, outs: dict,
                   sizes: dict[str, int], progress: Progress) -> None:
    """Stream the archive's members through tally: data members go to outs at their
    offsets (each checked against its disk's size first)."""
    with contextlib.ExitStack() as stack:
        writers = {k: stack.enter_context(out.pipelined_writes(WRITES_IN_FLIGHT))
                   for k, out in outs.items()}
        buffers = prefetch.Buffers(RESTORE_BUFFERS, RESTORE_PIECE)
        pieces = reader.pieces(stack.enter_context(found), tally.archive, sizes, buffers)
        # Reading borg's output and hashing it run ahead in a thread while this
        # one writes.
        with prefetch.ahead(reader.buffer_batches(tally.count(pieces)),
                            RESTORE_PREFETCH) as ahead:
            for _name, key, offset, piece in itertools.chain.from_iterable(ahead):
                if key in outs:
                    buffers.hold(cast(memoryview, piece), writers[key](piece, offset))
                    progress.advance(len(piece))
