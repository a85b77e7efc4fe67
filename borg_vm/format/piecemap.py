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

A hostile archive may list millions of extents (format/__init__.py): the
pieces of each archive are made one at a time as ``resolve`` sweeps over them
all at once, and the map holds its pieces in arrays (40 bytes a piece), which
it writes to the file the nbdkit plugin reads (adapters/nbdkit_plugin.py) as
they are, after a JSON line.
"""

from __future__ import annotations

import bisect
import heapq
import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import IO, Any

from borg_vm.core.extent import ZERO, Extent, covers_data, spans

_U64, _I64 = "Q", "q"
_ZERO_LAYER = -1     # the layer a zero piece has in the map's arrays
_START = attrgetter("start")


@dataclass(frozen=True, order=True, slots=True)
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
                 ) -> Iterator[Piece]:
    """Given one archive's extents of a disk and its data members, each as the
    pieces of the disk it holds back to back (one for a plain member, a pack's
    map), return an iterator of its pieces, sorted. Raise ValueError at once
    unless the members cover exactly the DATA extents (a member beyond them, a
    gap, an overlap)."""
    members = sorted(members, key=lambda m: m[0].start if m else 0)   # listed in any order
    try:
        same = covers_data((p for m in members for p in m), extents)
    except ValueError as e:
        raise ValueError(f"data members overlap: {e}") from e
    if not same:
        raise ValueError("data members do not cover exactly the manifest's data extents")
    data = (piece for m in members for piece in _member_pieces(layer, m))
    zeros = (Piece(start, length) for start, length in spans(extents, ZERO))
    return heapq.merge(data, zeros, key=_START)


def _member_pieces(layer: int, pieces: Sequence[Extent]) -> Iterator[Piece]:
    """The map pieces of one member: each disk piece where its bytes lie in the file."""
    at = 0   # where the piece starts in the member's file
    first = pieces[0].start
    for start, length in spans(pieces):
        yield Piece(start, length, layer, first, start - at)
        at += length


def resolve(layers: Sequence[Iterable[Piece]], size: int) -> Iterator[Piece]:
    """Given the pieces of each archive of a disk's chain (full first; each sorted
    and disjoint) and the disk's size, yield the map: pieces covering [0, size)
    in order, each from the newest layer that lists it, zeros where none does
    (neighbouring zeros joined). One sweep over all layers at once::

        layer 1       |c......|          |zero|
        layer 0   |a.........|b..............|
        pos       ^   ^       ^          ^    ^   each step: the newest piece at
        map       |a. |c......|b.........|zero|   pos, until it ends or a newer begins
    """
    its = [iter(pieces) for pieces in layers]
    heads = [next(it, None) for it in its]
    pos, zeros_from = 0, None
    while pos < size:
        for i, it in enumerate(its):
            while (head := heads[i]) is not None and head.end <= pos:
                heads[i] = next(it, None)
        top = max((i for i, h in enumerate(heads) if h is not None and h.start <= pos),
                  default=None)
        piece = None if top is None else heads[top]
        newer = heads if top is None else heads[top + 1:]
        end = min([h.start for h in newer if h is not None]
                  + [size if piece is None else min(size, piece.end)])
        if piece is None or piece.zero:
            zeros_from = pos if zeros_from is None else zeros_from
        else:
            if zeros_from is not None:
                yield Piece(zeros_from, pos - zeros_from)
                zeros_from = None
            yield replace(piece, start=pos, length=end - pos)
        pos = end
    if zeros_from is not None:
        yield Piece(zeros_from, size - zeros_from)


class PieceMap:
    """A disk's map: pieces covering [0, size) in order, held in arrays."""

    def __init__(self, size: int, pieces: Iterable[Piece]):
        self.size = size
        self._starts, self._lengths = array(_U64), array(_U64)
        self._layers, self._members, self._bases = array(_I64), array(_U64), array(_U64)
        for p in pieces:
            self._starts.append(p.start)
            self._lengths.append(p.length)
            self._layers.append(_ZERO_LAYER if p.layer is None else p.layer)
            self._members.append(p.member)
            self._bases.append(p.base)

    def _arrays(self) -> tuple[array[int], ...]:
        return self._starts, self._lengths, self._layers, self._members, self._bases

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PieceMap):
            return NotImplemented
        return self.size == other.size and self._arrays() == other._arrays()

    __hash__ = None   # type: ignore[assignment]

    def piece(self, i: int) -> Piece:
        layer = self._layers[i]
        return Piece(self._starts[i], self._lengths[i], None if layer == _ZERO_LAYER else layer,
                     self._members[i], self._bases[i])

    @property
    def pieces(self) -> tuple[Piece, ...]:
        """Every piece, made at once (a small map's)."""
        return tuple(self.piece(i) for i in range(len(self)))

    def spans(self, offset: int, length: int) -> Iterator[tuple[Piece, int, int]]:
        """Yield (piece, lo, hi): the disk bytes [lo, hi) of the request [offset,
        offset+length) that each piece holds, in order. Raise ValueError for a
        request beyond the disk."""
        end = offset + length
        if offset < 0 or length < 0 or end > self.size:
            raise ValueError(f"request {offset}+{length} is beyond the disk's {self.size} bytes")
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while offset < end:
            p = self.piece(i)
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

    def write(self, f: IO[bytes], header: dict[str, Any]) -> None:
        """Write the map to the binary stream f: header (a JSON object, with the
        map's size and count added) on a line, then the arrays as they are."""
        line = json.dumps({**header, "size": self.size, "pieces": len(self)})
        f.write(line.encode() + b"\n")
        for a in self._arrays():
            f.write(a.tobytes())

    @classmethod
    def read(cls, f: IO[bytes]) -> tuple[dict[str, Any], PieceMap]:
        """Return (the header, the map) write wrote to the binary stream f."""
        header = json.loads(f.readline())
        out = cls(header["size"], ())
        for a in out._arrays():
            n = header["pieces"] * a.itemsize
            raw = f.read(n)
            if len(raw) != n:
                raise ValueError("the map file ends early")
            a.frombytes(raw)
        return header, out
