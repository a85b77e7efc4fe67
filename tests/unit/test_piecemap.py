"""The map mount serves a disk by: for any chain of extents, it reads as a
flatten restore writes (checked byte by byte against a per-byte model of
restore: apply each archive's data and zero extents in order over zeros)."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_vm.core.extent import DATA, ZERO, Extent
from borg_vm.format.piecemap import Piece, PieceMap, layer_pieces, resolve

MAX_DISK = 200
PROPERTY = settings(max_examples=300, deadline=None)


@st.composite
def chains(draw):
    """A disk size and a chain (full first) of (extents, data members) per archive;
    a member is the pieces it holds back to back: several for a pack (format 3)."""
    size = draw(st.integers(1, MAX_DISK))
    layers = []
    for _ in range(draw(st.integers(1, 5))):
        cuts = sorted(set(draw(st.lists(st.integers(0, size), max_size=12))) | {0, size})
        extents, pieces = [], []
        for lo, hi in zip(cuts, cuts[1:]):
            kind = draw(st.sampled_from((DATA, ZERO, None)))
            if kind is None:
                continue
            extents.append(Extent(lo, hi - lo, kind))
            if kind == DATA:   # pieces: the extent cut at a few more places
                inner = sorted(set(draw(st.lists(st.integers(lo + 1, hi), max_size=3))) | {hi})
                pieces += [Extent(a, b - a) for a, b in zip([lo] + inner, inner) if b > a]
        members = []       # consecutive pieces grouped into members of 1-3
        while pieces:
            n = draw(st.integers(1, 3))
            members.append(tuple(pieces[:n]))
            pieces = pieces[n:]
        layers.append((extents, members))
    return size, layers


def restored(size, layers):
    """What a flatten restore writes, per byte: (layer, member start, byte in member)
    or None for zero."""
    out = [None] * size
    for i, (extents, members) in enumerate(layers):
        where = {}   # disk byte -> (member start, byte in member)
        for m in members:
            at = 0
            for p in m:
                where.update({x: (m[0].start, at + x - p.start) for x in range(p.start, p.end)})
                at += p.length
        for e in extents:
            for x in range(e.start, e.end):
                out[x] = None if e.kind == ZERO else (i, *where[x])
    return out


def served(disk_map: PieceMap, offset=0, length=None):
    """What the map serves, per byte, in the same terms."""
    length = disk_map.size - offset if length is None else length
    out = []
    for p, lo, hi in disk_map.spans(offset, length):
        out += [None if p.zero else (p.layer, p.member, x - p.base) for x in range(lo, hi)]
    return out


def build(size, layers) -> PieceMap:
    return PieceMap(size, tuple(resolve([layer_pieces(i, e, m) for i, (e, m) in
                                        enumerate(layers)], size)))


@PROPERTY
@given(chains())
def test_the_map_reads_as_a_flatten_restore_writes(chain):
    size, layers = chain
    disk_map = build(size, layers)
    assert served(disk_map) == restored(size, layers)


@PROPERTY
@given(chains())
def test_pieces_tile_the_disk_and_zeros_are_joined(chain):
    size, layers = chain
    pieces = build(size, layers).pieces
    assert pieces[0].start == 0 and pieces[-1].end == size
    for a, b in zip(pieces, pieces[1:]):
        assert a.end == b.start
        assert not (a.zero and b.zero), f"{a} and {b} not joined"
    for p in pieces:
        assert p.length > 0


@PROPERTY
@given(chains(), st.data())
def test_any_request_reads_its_part_of_the_disk(chain, data):
    size, layers = chain
    disk_map = build(size, layers)
    offset = data.draw(st.integers(0, size))
    length = data.draw(st.integers(0, size - offset))
    assert served(disk_map, offset, length) == restored(size, layers)[offset:offset + length]
    status = disk_map.block_status(offset, length)
    assert sum(n for _s, n, _z in status) == length
    zeros = [z for s, n, z in status for _ in range(n)]
    assert zeros == [b is None for b in restored(size, layers)[offset:offset + length]]


@PROPERTY
@given(chains())
def test_the_map_survives_its_file(chain):
    size, layers = chain
    disk_map = build(size, layers)
    f = io.BytesIO()
    disk_map.write(f, {"target": "vda"})
    f.seek(0)
    assert PieceMap.read(f) == ({"target": "vda", "size": size, "pieces": len(disk_map)},
                                disk_map)
    assert disk_map.pieces == PieceMap(size, disk_map.pieces).pieces


def test_the_drawing_in_the_docstring():
    full = layer_pieces(0, [Extent(0, 18), Extent(18, 12)], [(Extent(0, 18),), (Extent(18, 12),)])
    inc1 = layer_pieces(1, [Extent(5, 8, ZERO), Extent(23, 10)], [(Extent(23, 10),)])
    inc2 = layer_pieces(2, [Extent(40, 4)], [(Extent(40, 4),)])
    assert list(resolve([full, inc1, inc2], 50)) == [
        Piece(0, 5, 0, 0, 0), Piece(5, 8), Piece(13, 5, 0, 0, 0), Piece(18, 5, 0, 18, 18),
        Piece(23, 10, 1, 23, 23), Piece(33, 7), Piece(40, 4, 2, 40, 40), Piece(44, 6)]


def test_a_pack_serves_each_piece_from_its_place_in_the_member():
    # one member at 10 holding [10, 14) then [20, 26): disk byte 20 is its byte 4
    pieces = layer_pieces(0, [Extent(10, 4), Extent(20, 6)], [(Extent(10, 4), Extent(20, 6))])
    pieces = list(pieces)
    assert pieces == [Piece(10, 4, 0, 10, 10), Piece(20, 6, 0, 10, 16)]
    disk_map = PieceMap(30, resolve([pieces], 30))
    assert served(disk_map, 20, 2) == [(0, 10, 4), (0, 10, 5)]


@pytest.mark.parametrize("members, why", [
    ([(Extent(0, 8),)], "cover exactly"),                      # short of the extent
    ([(Extent(0, 10),), (Extent(10, 2),)], "cover exactly"),   # beyond it
    ([(Extent(0, 6),), (Extent(4, 6),)], "overlap"),
    ([(Extent(0, 4),), (Extent(6, 4),)], "cover exactly"),     # a gap
    ([(Extent(0, 4), Extent(6, 4))], "cover exactly"),         # a gap inside a pack
])
def test_members_must_cover_the_data_extents_exactly(members, why):
    with pytest.raises(ValueError, match=why):
        layer_pieces(0, [Extent(0, 10), Extent(20, 5, ZERO)], members)


def test_a_request_beyond_the_disk_is_refused():
    disk_map = PieceMap(10, (Piece(0, 10),))
    with pytest.raises(ValueError, match="beyond"):
        list(disk_map.spans(5, 6))
