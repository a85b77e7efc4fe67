"""Which archive members a disk's data becomes (format 3). Pure, no I/O.

Borg pays for every tar member (an item, and a chunker restarted at its
start): measured on this stack, 20,000 members of 64 KiB took 1.3-1.6 x the
time of the same bytes as one member, and a fragmented 1 TiB disk has
100,000s of such extents. So the small pieces of data are packed together,
and only pieces of a block or more keep members of their own::

    block        |0       |1       |2       |3       |4       |5       |
    DATA         |a|  |b|   |c...........................|  |d|   |e|
    pieces       |a|  |b|   |c1|c2.......................|  |d|   |e|
    members      [a  b      c1] [c2......................]  [d      e]
                 pack (map)      whole                      pack (map)

A piece (``split_at_blocks``) is *whole* if it starts on a block boundary and
is at least a block long: it stays one member, so a fixed chunker cuts it into
the disk's blocks and identical blocks deduplicate wherever they are. Every
other piece is *small* (under a block, inside one block) and joins the pack
of its neighbours. A pack ends

- before and after a whole piece (the stream stays in disk order),
- at every multiple of ``window`` of the disk, and
- at the end of every ``step``-sized cell of the disk that holds at least
  ``dense`` bytes of small pieces, and after ``max_pieces`` pieces.

Where a pack ends depends only on the allocation near it, never on what came
before: a new or freed extent shifts the data of its own pack only, so the
next full backup still deduplicates the other packs. A sparse disk gets about
one pack per ``window`` (1 TiB: ~1,000 packs instead of 100,000 members), a
dense one a pack per ``step`` at most.

A pack of two or more pieces is preceded by a map member listing its pieces
as JSON ``[[start, length], ...]`` (ascending, disjoint); a pack of one piece
is an ordinary member.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from borg_vm.core.extent import DATA, Extent, split_at_blocks
from borg_vm.core.extent_arrays import UNSIGNED_64, ExtentArray

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


# Defaults: a sparse 1 TiB disk in ~1,000 packs; an allocation change re-stores
# at most a window's small pieces, and on a densely fragmented disk a cell's.
WINDOW = 1 * GIB
STEP = 16 * MIB
DENSE = 1 * MIB
MAX_PIECES = 16 * KIB
# A map lists at most MAX_PIECES pieces of at most ~36 bytes each ([start,length],).
MAX_MAP_BYTES = 1 * MIB
# No piece of any disk ends beyond this (the arrays hold 8-byte unsigned integers).
MAX_DISK_BYTE = 2**64 - 1


@dataclass(frozen=True)
class Packing:
    """Where packs of small pieces end (see the module docstring)."""

    block_size: int
    window: int = WINDOW
    step: int = STEP
    dense: int = DENSE
    max_pieces: int = MAX_PIECES

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.step % self.block_size or self.window % self.step:
            raise ValueError(f"{self}: step must be a multiple of block_size, window of step")

    @classmethod
    def for_block_size(cls, block_size: int) -> Packing:
        """Return the default packing for a power-of-two chunk size (the step grows
        to the block size if that is bigger)."""
        step = max(STEP, block_size)
        return cls(block_size, window=max(WINDOW, step), step=step)


def pack(extents: Sequence[Extent], packing: Packing) -> list[tuple[Extent, ...]]:
    """Given a record's sorted extents, return its archive members in disk order, each
    as the tuple of DATA pieces it holds back to back (see the module docstring)."""
    pieces = [p for e in extents if e.kind == DATA for p in split_at_blocks(e, packing.block_size)]
    dense = _dense_cells(pieces, packing)
    members: list[tuple[Extent, ...]] = []
    current: list[Extent] = []
    for p in pieces:
        if _whole(p, packing.block_size):
            members.extend(m for m in (tuple(current), (p,)) if m)
            current = []
            continue
        if current and (len(current) == packing.max_pieces
                        or _ends_between(current[-1], p, packing, dense)):
            members.append(tuple(current))
            current = []
        current.append(p)
    if current:
        members.append(tuple(current))
    return members


def _whole(piece: Extent, block_size: int) -> bool:
    return piece.start % block_size == 0 and piece.length >= block_size


def _dense_cells(pieces: Sequence[Extent], packing: Packing) -> set[int]:
    """Return the indexes of the step-sized cells holding at least `dense` bytes of
    small pieces (a small piece lies inside one block, so inside one cell)."""
    small: dict[int, int] = {}
    for p in pieces:
        if not _whole(p, packing.block_size):
            cell = p.start // packing.step
            small[cell] = small.get(cell, 0) + p.length
    return {cell for cell, n in small.items() if n >= packing.dense}


def _ends_between(last: Extent, nxt: Extent, packing: Packing, dense: set[int]) -> bool:
    """Return True if a pack ending with `last` must end before the small piece `nxt`."""
    cell, next_cell = last.start // packing.step, nxt.start // packing.step
    if cell == next_cell:
        return False
    return (cell in dense or last.start // packing.window != nxt.start // packing.window)


def map_to_json(pieces: Sequence[Extent]) -> bytes:
    """Return the map member of a pack: its pieces as compact JSON."""
    return json.dumps([[p.start, p.length] for p in pieces], separators=(",", ":")).encode()


def map_from_json(raw: bytes) -> ExtentArray:
    """Return the pieces a map member lists (held in arrays: a mount holds every
    map of a disk's chain).

    Raise ValueError unless it is a non-empty JSON list of [start, length]
    integer pairs, ascending and disjoint, every length positive. (Whether
    they describe their data member is for the reader to check.)
    """
    doc = json.loads(raw)
    if type(doc) is not list or not doc:
        raise ValueError("a pack map must be a non-empty list")
    starts, lengths = array(UNSIGNED_64), array(UNSIGNED_64)
    end = 0
    for value in doc:
        if (type(value) is not list or len(value) != 2
                or any(type(x) is not int for x in value)):
            raise ValueError(f"pack map entry {value!r} is not [start, length]")
        start, length = value
        if start < end or length <= 0 or start + length > MAX_DISK_BYTE:
            raise ValueError(f"pack map entry {value!r} is out of order, overlaps, is empty "
                             "or lies beyond any disk")
        starts.append(start)
        lengths.append(length)
        end = start + length
    return ExtentArray(starts, lengths, bytes(len(starts)))
