"""Extent arithmetic: which byte ranges of a disk a backup reads and records.

Pure functions over frozen dataclasses; no I/O.

An NBD server describes a disk as runs of ``(length, flags)`` per metadata
context. Two contexts matter:

- ``base:allocation``: flags ``STATE_HOLE`` (1) and ``STATE_ZERO`` (2); a run
  whose ZERO bit is set reads as zeros (discarded, write-zeroed or never
  written), anything else is data.
- ``qemu:dirty-bitmap:backup-<disk>``: flag 1 means written since the parent
  checkpoint (at the bitmap's granularity, 64 KiB for qcow2).

A backup records a list of ``Extent(start, length, kind)``; ``kind`` is
``DATA`` (bytes stored in the archive) or ``ZERO`` (the range reads as zeros
and restore must zero it). Ranges in neither were not changed.

Full backup (no dirty map): allocation decides alone::

    allocation  |data....|zero....|data|hole.......|
    recorded    |DATA....|ZERO....|DATA|ZERO.......|

Incremental: the dirty map selects, allocation says data or zero. A dirty
range that now reads as zero is recorded as ZERO, never dropped, or restore
would bring stale bytes back::

    dirty       |---|dirty.........|------|dirty.|---|
    allocation  |data....|zero....|data.........|hole|
    recorded        |DATA|ZERO....|       |DATA.|

With Borg 2 a backup hands Borg the whole disk and an input map of it
(``input_map``): what is recorded is read (DATA) or stored as zeros unread
(ZERO), every other range is the reference archive's (SAME)::

    recorded        |DATA|ZERO....|       |DATA.|
    input map   |same|data|zero....|same...|data.|same|

Archive members start on block boundaries where they can, so a fixed-size
chunker cuts the same chunks wherever the same block occurs (see
``split_at_blocks``)::

    block       |0       |1       |2       |3       |
    extent         |DATA.........................|
    members        |a..|b...........................|
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from operator import attrgetter, itemgetter
from typing import cast

DATA = "data"
ZERO = "zero"
KINDS = (DATA, ZERO)

STATE_HOLE = 1
STATE_ZERO = 2
STATE_DIRTY = 1

# QEMU addresses a disk in sectors of this size: an image's size, its
# allocation (qcow2 clusters and subclusters, a file system's blocks) and a
# dirty bitmap's granularity are multiples of it.
SECTOR = 512


# Slots: a fragmented 1 TiB disk maps to hundreds of thousands of these.
@dataclass(frozen=True, order=True, slots=True)
class Run:
    """A run of one metadata context: bytes [start, start+length) carry flags."""

    start: int
    length: int
    flags: int

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass(frozen=True, order=True, slots=True)
class Extent:
    """A recorded range: [start, start+length) is DATA or ZERO."""

    start: int
    length: int
    kind: str = DATA

    def __post_init__(self) -> None:
        if self.start < 0 or self.length <= 0 or self.kind not in KINDS:
            raise ValueError(f"invalid extent {self.start}+{self.length} {self.kind!r}")

    @property
    def end(self) -> int:
        return self.start + self.length


def runs_from_entries(offset: int, entries: Sequence[int]) -> list[Run]:
    """Given an NBD block-status reply (flat [length, flags, ...] from offset), return Runs."""
    runs = []
    for length, flags in zip(entries[0::2], entries[1::2], strict=False):
        if length > 0:
            runs.append(Run(offset, length, flags))
            offset += length
    return runs


def clip_runs(runs: Iterable[Run], start: int, end: int) -> list[Run]:
    """Return the parts of runs inside [start, end)."""
    out = []
    for r in runs:
        lo, hi = max(r.start, start), min(r.end, end)
        if lo < hi:
            out.append(Run(lo, hi - lo, r.flags))
    return out


_START = attrgetter("start")


def merge(extents: Iterable[Extent]) -> list[Extent]:
    """Return extents sorted, with touching extents of the same kind joined.

    Raise ValueError if two extents overlap.
    """
    out: list[Extent] = []
    for e in sorted(extents, key=_START):  # already sorted input costs one pass
        if out and e.start < out[-1].end:
            raise ValueError(f"extents overlap at {e.start}")
        if out and e.start == out[-1].end and e.kind == out[-1].kind:
            out[-1] = Extent(out[-1].start, out[-1].length + e.length, e.kind)
        else:
            out.append(e)
    return out


def _allocation_kind(flags: int) -> str:
    return ZERO if flags & STATE_ZERO else DATA


def plan_full(allocation: Iterable[Run]) -> list[Extent]:
    """Given the sorted, disjoint allocation runs of a whole disk, return what a full
    backup records (one pass, one Extent per recorded extent: a fragmented 1 TiB
    disk has ~200,000). Raise ValueError if the runs are out of order or overlap."""
    out: list[Extent] = []
    start = end = 0
    kind = None
    for r in allocation:
        if r.start < end:
            raise ValueError(f"allocation runs out of order or overlapping at {r.start}")
        k = _allocation_kind(r.flags)
        if k != kind or r.start != end:
            if kind is not None:
                out.append(Extent(start, end - start, kind))
            start, kind = r.start, k
        end = r.end
    if kind is not None:
        out.append(Extent(start, end - start, kind))
    return out


def plan_incremental(allocation: Sequence[Run], dirty: Iterable[Run]) -> list[Extent]:
    """Given allocation and dirty-bitmap runs, each sorted and disjoint, return what an
    incremental backup records.

    Every dirty byte is recorded: DATA where allocation says data, ZERO where it
    reads as zeros. Bytes not dirty are not recorded. allocation need only
    cover the dirty runs (see status_ranges); raise ValueError if it misses a
    dirty byte. One pass over both lists, however many runs each has.
    """
    out = []
    i = 0
    for d in dirty:
        if not d.flags & STATE_DIRTY:
            continue
        while i < len(allocation) and allocation[i].end <= d.start:
            i += 1
        j, covered = i, d.start
        while j < len(allocation) and allocation[j].start < d.end:
            a = allocation[j]
            lo, hi = max(a.start, d.start), min(a.end, d.end)
            if lo != covered:
                break
            out.append(Extent(lo, hi - lo, _allocation_kind(a.flags)))
            covered, j = hi, j + 1
        if covered != d.end:
            raise ValueError(f"allocation does not cover dirty byte {covered}")
    return merge(out)


def status_ranges(dirty: Iterable[Run], gap: int) -> list[tuple[int, int]]:
    """Given sorted dirty-bitmap runs, return the half-open (start, end) ranges whose
    allocation an incremental needs: the dirty runs, joined where they are less
    than gap bytes apart (fewer, longer block-status requests)."""
    out: list[tuple[int, int]] = []
    for d in dirty:
        if d.flags & STATE_DIRTY:
            if out and d.start - out[-1][1] < gap:
                out[-1] = (out[-1][0], d.end)
            else:
                out.append((d.start, d.end))
    return out


def widen_data(extents: Sequence[Extent], alignment: int, size: int) -> list[Extent]:
    """Return extents with every DATA extent widened to `alignment` boundaries (clipped to size).

    Widened DATA wins over ZERO where they meet: reading a range that is
    unchanged or zero is harmless, it only costs reads. This trades read
    amplification for whole-block deduplication; alignment <= 1 returns the
    extents unchanged.
    """
    if alignment <= 1:
        return list(extents)
    wide = merge_overlapping(
        (e.start - e.start % alignment, min(size, -(-e.end // alignment) * alignment))
        for e in extents if e.kind == DATA)
    out = [Extent(lo, hi - lo, DATA) for lo, hi in wide]
    zeros = ((e.start, e.end) for e in extents if e.kind == ZERO)
    out.extend(Extent(lo, hi - lo, ZERO) for lo, hi in subtract_all(zeros, wide))
    return merge(out)


def merge_overlapping(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return the union of half-open (lo, hi) ranges as sorted disjoint ranges."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def subtract_all(ranges: Iterable[tuple[int, int]], holes: Sequence[tuple[int, int]]
                 ) -> Iterator[tuple[int, int]]:
    """Yield the parts of the sorted disjoint half-open ranges not covered by the
    sorted disjoint holes, in order; one pass over both."""
    i = 0
    for lo, hi in ranges:
        while i < len(holes) and holes[i][1] <= lo:
            i += 1
        j = i
        while j < len(holes) and holes[j][0] < hi:
            hlo, hhi = holes[j]
            if hlo > lo:
                yield lo, hlo
            lo = max(lo, hhi)
            j += 1
        if lo < hi:
            yield lo, hi


def split_at_blocks(extent: Extent, block_size: int) -> list[Extent]:
    """Split a DATA extent into archive members that start on block boundaries.

    An unaligned start becomes its own short member up to the next boundary;
    the rest is one member starting on a boundary, which a fixed chunker of
    block_size cuts into whole blocks.
    """
    head = min(extent.end, -(-extent.start // block_size) * block_size)
    if head in (extent.start, extent.end):
        return [extent]
    return [Extent(extent.start, head - extent.start, extent.kind),
            Extent(head, extent.end - head, extent.kind)]


def requests(extent: Extent, max_request: int) -> list[tuple[int, int]]:
    """Split an extent into (offset, length) read requests of at most max_request bytes.

    Requests after the first start on max_request boundaries, so reads line
    up with blocks when max_request is the block size.
    """
    out = []
    offset = extent.start
    while offset < extent.end:
        boundary = (offset // max_request + 1) * max_request
        length = min(boundary, extent.end) - offset
        out.append((offset, length))
        offset += length
    return out


def spans(extents: Iterable[Extent], kind: str | None = None) -> Iterator[tuple[int, int]]:
    """Yield (start, length) of each of extents of kind (of every one if None), in
    order. A sequence with a spans method of its own (core/extent_arrays.py)
    yields them from its arrays, making no Extent."""
    own = getattr(extents, "spans", None)
    if own is not None:
        return cast(Iterator[tuple[int, int]], own(kind))
    return ((e.start, e.length) for e in extents if kind is None or e.kind == kind)


def joined(pairs: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Given sorted (start, length) pairs, yield them as half-open (start, end)
    ranges with touching ones joined, in one pass. Raise ValueError if two
    overlap or are out of order."""
    lo = hi = None
    for start, length in pairs:
        if hi is not None and start < hi:
            raise ValueError(f"extents overlap or are out of order at {start}")
        if hi != start:
            if lo is not None and hi is not None:
                yield lo, hi
            lo = start
        hi = start + length
    if lo is not None and hi is not None:
        yield lo, hi


def covers_data(pieces: Iterable[Extent], extents: Iterable[Extent]) -> bool:
    """Return True if pieces (as stored: data members, bytes written; sorted)
    cover exactly the DATA extents of the sorted extents. One pass over both,
    holding neither. Raise ValueError if two pieces overlap or are out of order."""
    missing = object()
    return all(a == b for a, b in zip_longest(joined(spans(pieces)),
                                              joined(spans(extents, DATA)),
                                              fillvalue=missing))


def total(extents: Iterable[Extent], kind: str) -> int:
    """Return the number of bytes in extents of the given kind."""
    return sum(map(itemgetter(1), spans(extents, kind)))


def max_extents(size: int) -> int:
    """Return the most extents a backup can record of a disk of size bytes.

    Every boundary of what it records is one of allocation or of the dirty
    bitmap, so lies on a sector boundary: at most one extent starts in each
    sector. One more for a raw file whose end lies inside its last sector (the
    image reads as zeros from there)::

        sectors   |0       |1       |2       |3   end of file |
        extents   |DATA    |ZERO    |DATA    |DATA|ZERO       |
    """
    return -(-size // SECTOR) + 1


def check_map(extents: Iterable[Extent], size: int) -> None:
    """Raise ValueError unless extents are sorted, disjoint, not empty and inside
    [0, size)."""
    end = 0
    for start, length in spans(extents):
        if start < end or length <= 0:
            raise ValueError(f"extent at {start} is empty, out of order or overlaps")
        end = start + length
    if end > size:
        raise ValueError(f"extent ends at {end}, beyond the disk size {size}")


# Borg 2's input map (``borg create --map``): what it says of each range of the
# input. DATA is read, ZERO stored as zeros unread, SAME taken unread from the
# reference archive (``--reuse-from``).
SAME = "same"


def input_map(size: int, recorded: Iterable[Extent], incremental: bool
              ) -> list[tuple[int, int, str]]:
    """Return Borg 2's input map of a disk of size bytes a backup records
    (plan_full or plan_incremental): (start, length, DATA|ZERO|SAME) ranges,
    sorted, contiguous, from 0 to size, touching ranges of one state joined.

    A full must record every byte; an incremental's unrecorded bytes are SAME
    (unchanged since the reference archive, which must be of the same size).
    Raise ValueError if a full misses a byte, or if recorded overlaps or
    ends beyond size.
    """
    out: list[tuple[int, int, str]] = []

    def add(start: int, length: int, state: str) -> None:
        if out and out[-1][2] == state:
            out[-1] = (out[-1][0], out[-1][1] + length, state)
        else:
            out.append((start, length, state))

    at = 0
    for e in recorded:
        if e.start < at or e.end > size:
            raise ValueError(f"extent {e.start}+{e.length} overlaps or ends beyond {size}")
        if e.start > at:
            if not incremental:
                raise ValueError(f"a full records no byte of [{at}, {e.start})")
            add(at, e.start - at, SAME)
        add(e.start, e.length, e.kind)
        at = e.end
    if at < size:
        if not incremental:
            raise ValueError(f"a full records no byte of [{at}, {size})")
        add(at, size - at, SAME)
    return out


def data_bytes(ranges: Iterable[tuple[int, int, str]]) -> int:
    """Return how many bytes of an input map (input_map) are DATA: what Borg reads."""
    return sum(length for _start, length, state in ranges if state == DATA)
