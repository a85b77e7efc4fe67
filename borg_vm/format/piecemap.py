"""Where each byte of a disk comes from, as of one checkpoint: the map
``borg-vm mount`` serves a disk by. Pure, no I/O.

A disk's chain is a full archive and the incrementals on it (core/chain.py).
Each archive records extents: DATA (bytes stored in data members, each member
``disk/{target}/{start:016x}`` holding the disk's bytes from ``start``, or,
from format 3, the pieces its map lists back to back) and ZERO (the range
reads as zeros). Read as a flatten restore writes them, newest
layer wins, a ZERO extent hides what lies below it, and what no layer lists
reads as zeros (the full's unlisted ranges are zero)::

    full (0)   |a-member.........|b-member...|         |
    inc  (1)        |zero...|         |c-member.|
    inc  (2)                                         |d..|
    map        |a.. |zero...|a.. |b..|c........|zeros|d..|zeros|

Each piece of the map is zeros (``layer`` is None) or bytes of one member of
one layer: disk offset ``x`` in the piece is byte ``x - base`` of the file of
the member named by offset ``member`` (``base == member`` unless the member
is a pack).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from borg_vm.core.extent import ZERO, Extent, covers_data, merge_overlapping


@dataclass(frozen=True, order=True)
class Piece:
    """Bytes [start, start+length) of the disk: zeros (layer None) or the data
    member of archive `layer` (0: the chain's full) named by disk offset
    `member`, whose byte x - base holds disk byte x."""

    start: int
    length: int
    layer: int | None = None
    member: int = 0
    base: int = 0

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def zero(self) -> bool:
        return self.layer is None


def layer_pieces(layer: int, extents: Sequence[Extent], members: Sequence[Sequence[Extent]]
                 ) -> list[Piece]:
    """Given one archive's extents of a disk and its data members, each as the
    pieces of the disk it holds back to back (one for a plain member, a pack's
    map), return its pieces, sorted. Raise ValueError unless the members cover
    exactly the DATA extents (a member beyond them, a gap, an overlap)."""
    members = sorted(members, key=lambda m: m[0].start if m else 0)   # listed in any order
    try:
        same = covers_data((p for m in members for p in m), extents)
    except ValueError as e:
        raise ValueError(f"data members overlap: {e}") from e
    if not same:
        raise ValueError("data members do not cover exactly the manifest's data extents")
    return sorted([piece for m in members for piece in _member_pieces(layer, m)]
                  + [Piece(e.start, e.length) for e in extents if e.kind == ZERO])


def _member_pieces(layer: int, pieces: Sequence[Extent]) -> Iterator[Piece]:
    """The map pieces of one member: each disk piece where its bytes lie in the file."""
    at = 0   # where the piece starts in the member's file
    for p in pieces:
        yield Piece(p.start, p.length, layer, pieces[0].start, p.start - at)
        at += p.length


def resolve(layers: Sequence[Sequence[Piece]], size: int) -> list[Piece]:
    """Given the pieces of each archive of a disk's chain (full first; each sorted
    and disjoint) and the disk's size, return the map: pieces covering [0, size)
    in order, each from the newest layer that lists it, zeros where none does."""
    out: list[Piece] = []
    covered: list[tuple[int, int]] = []
    for pieces in reversed(layers):
        out.extend(_outside(pieces, covered))
        covered = merge_overlapping(covered + [(p.start, p.end) for p in pieces])
    out.extend(Piece(lo, hi - lo) for lo, hi in _gaps(covered, size))
    return _join_zeros(sorted(out))


def _outside(pieces: Iterable[Piece], covered: list[tuple[int, int]]) -> Iterator[Piece]:
    """Yield the parts of sorted disjoint pieces outside the sorted disjoint covered ranges."""
    i = 0
    for p in pieces:
        while i < len(covered) and covered[i][1] <= p.start:
            i += 1
        lo, j = p.start, i
        while j < len(covered) and covered[j][0] < p.end:
            if covered[j][0] > lo:
                yield replace(p, start=lo, length=covered[j][0] - lo)
            lo, j = max(lo, covered[j][1]), j + 1
        if lo < p.end:
            yield replace(p, start=lo, length=p.end - lo)


def _gaps(covered: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    end = 0
    for lo, hi in covered:
        if lo > end:
            yield end, lo
        end = max(end, hi)
    if end < size:
        yield end, size


def _join_zeros(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for p in pieces:
        if out and p.zero and out[-1].zero and out[-1].end == p.start:
            out[-1] = replace(out[-1], length=out[-1].length + p.length)
        else:
            out.append(p)
    return out


@dataclass(frozen=True)
class PieceMap:
    """A disk's map: pieces covering [0, size) in order."""

    size: int
    pieces: tuple[Piece, ...]
    _starts: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_starts", [p.start for p in self.pieces])

    def spans(self, offset: int, length: int) -> Iterator[tuple[Piece, int, int]]:
        """Yield (piece, lo, hi): the disk bytes [lo, hi) of the request [offset,
        offset+length) that each piece holds, in order. Raise ValueError for a
        request beyond the disk."""
        end = offset + length
        if offset < 0 or length < 0 or end > self.size:
            raise ValueError(f"request {offset}+{length} is beyond the disk's {self.size} bytes")
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while offset < end:
            p = self.pieces[i]
            hi = min(p.end, end)
            yield p, offset, hi
            offset, i = hi, i + 1

    def block_status(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """Return (start, length, reads as zeros) runs covering [offset,
        offset+length), neighbours of one kind joined."""
        out: list[tuple[int, int, bool]] = []
        for p, lo, hi in self.spans(offset, length):
            if out and out[-1][2] == p.zero:
                out[-1] = (out[-1][0], out[-1][1] + hi - lo, p.zero)
            else:
                out.append((lo, hi - lo, p.zero))
        return out

    def to_doc(self) -> dict:
        return {"size": self.size,
                "pieces": [[p.start, p.length, p.layer, p.member, p.base]
                           for p in self.pieces]}

    @classmethod
    def from_doc(cls, doc: dict) -> PieceMap:
        return cls(doc["size"], tuple(Piece(*p) for p in doc["pieces"]))
