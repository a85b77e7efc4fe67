"""Packing a disk's data into archive members: examples, and hypothesis on small
disks (blocks of 4 bytes, cells of 16, windows of 64) for the rest."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_vm.core.extent import DATA, ZERO, Extent, split_at_blocks
from borg_vm.format.packing import Packing, map_from_json, map_to_json, pack

SMALL = Packing(block_size=4, window=64, step=16, dense=6, max_pieces=5)
PROPERTY = settings(max_examples=300, deadline=None)
MAX_DISK = 300


@st.composite
def extent_maps(draw, size=MAX_DISK):
    """Sorted, disjoint extents of a disk of size bytes, DATA and ZERO."""
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=40)))
    bounds = [0] + cuts + [size]
    return [Extent(lo, hi - lo, draw(st.sampled_from((DATA, DATA, ZERO))))
            for lo, hi in zip(bounds, bounds[1:]) if draw(st.booleans())]


def pieces_of(extents, block_size):
    return [p for e in extents if e.kind == DATA for p in split_at_blocks(e, block_size)]


def whole(p, block_size=SMALL.block_size):
    return p.start % block_size == 0 and p.length >= block_size


# --- examples -----------------------------------------------------------------------

def test_docstring_picture():
    # blocks of 8: a, b small; c unaligned and long (head c1 packs, body c2 alone);
    # d, e small after it.
    packing = Packing(block_size=8, window=64, step=16, dense=100)
    a, b, c, d, e = (Extent(1, 2), Extent(5, 2), Extent(12, 27), Extent(41, 2), Extent(46, 1))
    assert pack([a, Extent(3, 2, ZERO), b, c, d, e], packing) == [
        (a, b, Extent(12, 4)), (Extent(16, 23),), (d, e)]


def test_window_and_dense_cells_end_packs():
    packing = Packing(block_size=4, window=64, step=16, dense=4)
    small = [Extent(1, 2), Extent(5, 2),        # cell 0: 4 bytes, dense
             Extent(17, 1), Extent(21, 1),      # cell 1: 2 bytes
             Extent(33, 1),                     # cell 2: 1 byte
             Extent(65, 1)]                     # next window
    assert pack(small, packing) == [tuple(small[:2]), tuple(small[2:5]), (small[5],)]


def test_max_pieces_ends_a_pack():
    extents = [Extent(i * 2 + 1, 1) for i in range(7)]
    assert [len(m) for m in pack(extents, SMALL)] == [5, 2]


def test_whole_pieces_stay_alone_and_nothing_is_packed_without_small_pieces():
    extents = [Extent(0, 8), Extent(8, 4, ZERO), Extent(16, 40)]
    assert pack(extents, SMALL) == [(Extent(0, 8),), (Extent(16, 40),)]
    assert pack([Extent(0, 100, ZERO)], SMALL) == []


def test_packing_rejects_misaligned_steps():
    with pytest.raises(ValueError):
        Packing(block_size=4, window=64, step=6)
    with pytest.raises(ValueError):
        Packing(block_size=4, window=40, step=16)


def test_default_packing_fits_any_power_of_two_block_size():
    for shift in range(9, 30):
        p = Packing.for_block_size(1 << shift)
        assert p.step % p.block_size == 0 and p.window % p.step == 0


# --- properties --------------------------------------------------------------------------

@PROPERTY
@given(extent_maps())
def test_members_hold_every_piece_once_in_disk_order(extents):
    members = pack(extents, SMALL)
    assert [p for m in members for p in m] == pieces_of(extents, SMALL.block_size)


@PROPERTY
@given(extent_maps())
def test_members_respect_the_rules(extents):
    pieces = pieces_of(extents, SMALL.block_size)
    cell_bytes = {}
    for p in pieces:
        if not whole(p):
            cell_bytes[p.start // SMALL.step] = cell_bytes.get(p.start // SMALL.step, 0) + p.length
    for m in pack(extents, SMALL):
        assert 1 <= len(m) <= SMALL.max_pieces
        if any(whole(p) for p in m):
            assert len(m) == 1, "a whole piece shares a member"
        assert len({p.start // SMALL.window for p in m}) == 1, "a pack crosses a window"
        for p, q in zip(m, m[1:]):
            assert p.end <= q.start
            if p.start // SMALL.step != q.start // SMALL.step:
                assert cell_bytes[p.start // SMALL.step] < SMALL.dense, \
                    "a pack goes on past a dense cell"


@PROPERTY
@given(extent_maps(), extent_maps(size=64), st.integers(0, MAX_DISK // 64 - 1))
def test_a_change_inside_one_window_leaves_the_other_windows_members_alone(
        extents, inside, window):
    """What makes packs deduplicate: the next full backup of a disk whose allocation
    changed in one place stores the same members everywhere else."""
    lo, hi = window * 64, window * 64 + 64
    cut = [e for e in extents if e.end <= lo or e.start >= hi]
    changed = sorted(cut + [Extent(e.start + lo, e.length, e.kind) for e in inside],
                     key=lambda e: e.start)
    def outside(ms):
        return [m for m in ms if m[0].end <= lo or m[0].start >= hi]
    assert outside(pack(cut, SMALL)) == outside(pack(changed, SMALL))


@PROPERTY
@given(extent_maps())
def test_maps_round_trip(extents):
    for m in pack(extents, SMALL):
        assert map_from_json(map_to_json(m)) == m


# --- reading maps (untrusted) -------------------------------------------------------

@pytest.mark.parametrize("doc", [
    [], {}, [[0, 1, 2]], [[0, "1"]], [[0, True]], [[0, 0]], [[0, -1]], [[-1, 1]],
    [[5, 2], [6, 1]],            # overlap
    [[5, 2], [1, 1]],            # out of order
    [[0, 1.5]], "x",
])
def test_map_from_json_rejects(doc):
    with pytest.raises(ValueError):
        map_from_json(json.dumps(doc).encode())


def test_map_from_json_rejects_non_json():
    with pytest.raises(ValueError):
        map_from_json(b"\xff[")
