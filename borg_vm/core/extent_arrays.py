"""A record's extents held compactly. Pure, no I/O.

A manifest may list millions of extents: ~200,000 for a fragmented 1 TiB
disk, and a hostile one as many as its size cap allows (format/names.py).
As ``Extent`` objects each costs ~150 bytes of Python objects; here it costs
17, in three parallel arrays::

    index      0        1          2         ...
    starts   |0       |4096      |1048576  |  array('Q')
    lengths  |4096    |1044480   |65536    |  array('Q')
    kinds    |0 DATA  |1 ZERO    |0 DATA   |  bytes

``ExtentArray`` is a read-only ``Sequence[Extent]``: code written for a tuple
of extents reads it unchanged, and only the extent asked for is made an
``Extent``. ``spans()`` and ``total()`` walk the arrays without making any.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress
from operator import itemgetter, not_
from typing import overload

from borg_vm.core.extent import DATA, KINDS, ZERO, Extent

KIND_CODES = {DATA: 0, ZERO: 1}   # a kind as the kinds array holds it (spans relies on it)
# array('Q') holds 8-byte unsigned integers: every offset and length of a disk
# (format/names.py's MAX_VIRTUAL_SIZE is far below 2**64).
UNSIGNED_64 = "Q"


class ExtentArray(Sequence[Extent]):
    """Extents as parallel arrays: starts[i], lengths[i], kinds[i] (KIND_CODES).

    Holds its arrays as given: the caller hands them over and keeps no
    reference it writes through.
    """

    __slots__ = ("_starts", "_lengths", "_kinds")

    def __init__(self, starts: array[int], lengths: array[int], kinds: bytes | bytearray):
        if not len(starts) == len(lengths) == len(kinds):
            raise ValueError("starts, lengths and kinds differ in length")
        if kinds.translate(None, bytes(range(len(KINDS)))):
            raise ValueError("a kind code is neither DATA nor ZERO")
        self._starts, self._lengths, self._kinds = starts, lengths, bytes(kinds)

    @classmethod
    def of(cls, extents: Iterable[Extent]) -> ExtentArray:
        """Return the extents, in order, as an ExtentArray."""
        if isinstance(extents, ExtentArray):
            return extents
        starts, lengths, kinds = array(UNSIGNED_64), array(UNSIGNED_64), bytearray()
        for e in extents:
            starts.append(e.start)
            lengths.append(e.length)
            kinds.append(KIND_CODES[e.kind])
        return cls(starts, lengths, kinds)

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> Extent: ...

    @overload
    def __getitem__(self, i: slice) -> ExtentArray: ...

    def __getitem__(self, i: int | slice) -> Extent | ExtentArray:
        if isinstance(i, slice):
            return ExtentArray(self._starts[i], self._lengths[i], self._kinds[i])
        return Extent(self._starts[i], self._lengths[i], KINDS[self._kinds[i]])

    def __iter__(self) -> Iterator[Extent]:
        for row in self.rows():
            yield Extent(*row)

    def rows(self) -> Iterator[tuple[int, int, str]]:
        """Yield (start, length, kind) of each extent, in order."""
        for start, length, kind in zip(self._starts, self._lengths, self._kinds, strict=True):
            yield start, length, KINDS[kind]

    def spans(self, kind: str | None = None) -> Iterator[tuple[int, int]]:
        """Yield (start, length) of each extent of kind (of every extent if None), in order."""
        pairs = zip(self._starts, self._lengths, strict=True)
        if kind is None:
            return pairs
        # ZERO is 1, DATA 0: the kinds select as they are, or negated (no Python
        # code runs per extent)
        return compress(pairs, self._kinds if KIND_CODES[kind] else map(not_, self._kinds))

    def total(self, kind: str) -> int:
        """Return the number of bytes in extents of kind."""
        return sum(map(itemgetter(1), self.spans(kind)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ExtentArray):
            return (self._starts == other._starts and self._lengths == other._lengths
                    and self._kinds == other._kinds)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._starts.tobytes(), self._lengths.tobytes(), self._kinds))

    def __repr__(self) -> str:
        shown = ", ".join(repr(e) for e in self[:3])
        return f"ExtentArray([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} extents)"



class Joiner:
    """Collects extents in order into an ExtentArray, joining each to the one
    before when it touches it and is of its kind: a stream of pieces (a read
    cut into buffers) is held as the runs it forms."""

    def __init__(self) -> None:
        self._starts, self._lengths = array(UNSIGNED_64), array(UNSIGNED_64)
        self._kinds = bytearray()

    def add(self, start: int, length: int, kind: str = DATA) -> None:
        code = KIND_CODES[kind]
        if (self._kinds and self._kinds[-1] == code
                and self._starts[-1] + self._lengths[-1] == start):
            self._lengths[-1] += length
        else:
            self._starts.append(start)
            self._lengths.append(length)
            self._kinds.append(code)

    def extents(self) -> ExtentArray:
        """Return the extents collected so far (a copy: adding more leaves it as is)."""
        return ExtentArray(self._starts[:], self._lengths[:], bytes(self._kinds))
