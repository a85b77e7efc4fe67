"""Extent arithmetic: example cases for the edges, hypothesis for the rest.

Disks here are a few hundred bytes and alignments a few bytes, so every
property can be checked byte by byte against a plain per-byte model.
"""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_vm.core.extent import (
    DATA,
    KINDS,
    SAME,
    SECTOR,
    STATE_DIRTY,
    STATE_HOLE,
    STATE_ZERO,
    ZERO,
    Extent,
    Run,
    check_map,
    clip_runs,
    data_bytes,
    input_map,
    max_extents,
    merge,
    merge_overlapping,
    plan_full,
    plan_incremental,
    requests,
    runs_from_entries,
    split_at_blocks,
    status_ranges,
    subtract_all,
    total,
    widen_data,
)

MAX_DISK = 300
ALLOC_FLAGS = (0, STATE_HOLE, STATE_ZERO, STATE_HOLE | STATE_ZERO)
PROPERTY = settings(max_examples=200, deadline=None)
SIMULATION = settings(max_examples=100, deadline=None)


# --- per-byte model ------------------------------------------------------------

def kinds(extents, size):
    """Return the recorded kind of every byte of a disk of size (None: not recorded)."""
    out = [None] * size
    for e in extents:
        for i in range(e.start, e.end):
            assert out[i] is None, f"byte {i} recorded twice"
            out[i] = e.kind
    return out


def flags_per_byte(runs, size):
    out = [None] * size
    for r in runs:
        for i in range(r.start, r.end):
            out[i] = r.flags
    assert None not in out, "runs do not cover the disk"
    return out


def runs_from_bytes(flags, cuts=()):
    """Return runs for per-byte flags, split where flags change and at the extra cuts."""
    runs, start = [], 0
    for i in range(1, len(flags) + 1):
        if i == len(flags) or flags[i] != flags[start] or i in cuts:
            runs.append(Run(start, i - start, flags[start]))
            start = i
    return runs


def assert_normal(extents, size):
    """Sorted, disjoint, inside the disk, no touching neighbours of one kind."""
    check_map(extents, size)
    for a, b in zip(extents, extents[1:]):
        assert a.end <= b.start
        assert not (a.end == b.start and a.kind == b.kind), f"{a} and {b} not merged"


# --- strategies ------------------------------------------------------------------

@st.composite
def covering_runs(draw, size, flags):
    """Runs of random flags that cover [0, size) exactly, split at random points."""
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=12))) if size > 1 else []
    bounds = [0] + cuts + [size]
    return [Run(lo, hi - lo, draw(st.sampled_from(flags))) for lo, hi in zip(bounds, bounds[1:])]


@st.composite
def disk_maps(draw):
    """(size, allocation runs, dirty runs) of one disk."""
    size = draw(st.integers(1, MAX_DISK))
    allocation = draw(covering_runs(size, ALLOC_FLAGS))
    dirty = draw(covering_runs(size, (0, STATE_DIRTY)))
    return size, allocation, dirty


@st.composite
def extent_maps(draw):
    """(size, extents): a valid normalised map as a backup plan produces it."""
    size, allocation, dirty = draw(disk_maps())
    if draw(st.booleans()):
        return size, plan_full(allocation)
    return size, plan_incremental(allocation, dirty)


ranges = st.tuples(st.integers(0, 100), st.integers(0, 100)).map(lambda r: (min(r), max(r)))


def covered(rngs):
    return {i for lo, hi in rngs for i in range(lo, hi)}


# --- Extent, Run -----------------------------------------------------------------

@pytest.mark.parametrize("start, length, kind", [(-1, 1, DATA), (0, 0, DATA), (0, -5, ZERO),
                                                 (0, 1, "hole")])
def test_extent_rejects_invalid(start, length, kind):
    with pytest.raises(ValueError):
        Extent(start, length, kind)


def test_extent_end_and_default_kind():
    e = Extent(10, 5)
    assert (e.end, e.kind) == (15, DATA)
    assert Run(3, 4, 0).end == 7


# --- runs_from_entries, clip_runs --------------------------------------------------

def test_runs_from_entries_skips_empty_runs_and_keeps_offsets():
    assert runs_from_entries(100, [10, 0, 0, 3, 5, 2]) == [Run(100, 10, 0), Run(110, 5, 2)]


def test_runs_from_entries_empty():
    assert runs_from_entries(0, []) == []


@PROPERTY
@given(st.integers(0, 1000), st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3))))
def test_runs_from_entries_contiguous(offset, pairs):
    flat = [x for p in pairs for x in p]
    runs = runs_from_entries(offset, flat)
    assert [(r.length, r.flags) for r in runs] == [p for p in pairs if p[0] > 0]
    end = offset
    for r in runs:
        assert r.start == end
        end = r.end
    assert end == offset + sum(n for n, _ in pairs)


def test_clip_runs_examples():
    runs = [Run(0, 10, 0), Run(10, 10, 2), Run(20, 10, 0)]
    assert clip_runs(runs, 5, 25) == [Run(5, 5, 0), Run(10, 10, 2), Run(20, 5, 0)]
    assert clip_runs(runs, 10, 20) == [Run(10, 10, 2)]
    assert clip_runs(runs, 30, 40) == []
    assert clip_runs(runs, 7, 7) == []


@PROPERTY
@given(st.integers(1, MAX_DISK).flatmap(lambda n: st.tuples(st.just(n), covering_runs(n, ALLOC_FLAGS))),
       ranges)
def test_clip_runs_is_per_byte_restriction(sized, rng):
    size, runs = sized
    lo, hi = rng
    clipped = clip_runs(runs, lo, hi)
    flags = flags_per_byte(runs, size)
    got = {i: r.flags for r in clipped for i in range(r.start, r.end)}
    assert got == {i: flags[i] for i in range(lo, min(hi, size))}


# --- merge, merge_overlapping, subtract_all -----------------------------------------

def test_merge_joins_touching_same_kind_only():
    got = merge([Extent(10, 5, DATA), Extent(0, 10, DATA), Extent(15, 5, ZERO),
                 Extent(20, 5, ZERO), Extent(30, 1, DATA)])
    assert got == [Extent(0, 15, DATA), Extent(15, 10, ZERO), Extent(30, 1, DATA)]


def test_merge_rejects_overlap():
    with pytest.raises(ValueError, match="overlap"):
        merge([Extent(0, 10, DATA), Extent(9, 2, ZERO)])
    with pytest.raises(ValueError):
        merge([Extent(0, 10, DATA), Extent(0, 10, DATA)])


def test_merge_empty():
    assert merge([]) == []


@PROPERTY
@given(extent_maps(), st.randoms(use_true_random=False))
def test_merge_of_split_pieces_restores_map(sized, rnd):
    size, extents = sized
    pieces = [p for e in extents for p in split_at_blocks(e, rnd.randint(1, 8))]
    rnd.shuffle(pieces)
    assert merge(pieces) == extents


@PROPERTY
@given(st.lists(ranges, max_size=10))
def test_merge_overlapping_is_union(rngs):
    out = merge_overlapping(rngs)
    assert covered(out) == covered(rngs)
    for a, b in zip(out, out[1:]):
        assert a[1] < b[0], "not sorted, or touching ranges left apart"


def test_merge_overlapping_examples():
    assert merge_overlapping([(5, 10), (0, 3), (3, 4), (8, 20)]) == [(0, 4), (5, 20)]
    assert merge_overlapping([]) == []


@PROPERTY
@given(st.lists(ranges, max_size=8), st.lists(ranges, max_size=8))
def test_subtract_all_is_set_difference(rngs, holes):
    rngs = [r for r in merge_overlapping(rngs) if r[0] < r[1]]
    holes = [h for h in merge_overlapping(holes) if h[0] < h[1]]
    out = list(subtract_all(rngs, holes))
    assert covered(out) == covered(rngs) - covered(holes)
    assert all(lo < hi for lo, hi in out)
    assert all(a[1] < b[0] for a, b in zip(out, out[1:]))


def test_subtract_all_examples():
    assert list(subtract_all([(0, 100)], [(10, 20), (50, 60)])) == [(0, 10), (20, 50), (60, 100)]
    assert list(subtract_all([(10, 20)], [(0, 30)])) == []
    assert list(subtract_all([(10, 20)], [])) == [(10, 20)]
    assert list(subtract_all([(10, 20)], [(0, 10), (20, 30)])) == [(10, 20)]
    assert list(subtract_all([(0, 10), (20, 30)], [(5, 25)])) == [(0, 5), (25, 30)]


# --- plan_full, plan_incremental -----------------------------------------------------

def expected_kind(flags):
    return ZERO if flags & STATE_ZERO else DATA


def test_plan_full_docstring_example():
    allocation = [Run(0, 8, 0), Run(8, 8, STATE_ZERO), Run(16, 4, 0),
                  Run(20, 11, STATE_HOLE | STATE_ZERO)]
    assert plan_full(allocation) == [Extent(0, 8, DATA), Extent(8, 8, ZERO),
                                     Extent(16, 4, DATA), Extent(20, 11, ZERO)]


def test_plan_full_hole_without_zero_flag_is_data():
    # STATE_HOLE alone does not promise zeros (NBD spec), so the bytes must be read.
    assert plan_full([Run(0, 10, STATE_HOLE)]) == [Extent(0, 10, DATA)]


def test_plan_incremental_docstring_example():
    dirty = [Run(0, 4, 0), Run(4, 15, STATE_DIRTY), Run(19, 7, 0), Run(26, 6, STATE_DIRTY),
             Run(32, 4, 0)]
    allocation = [Run(0, 9, 0), Run(9, 9, STATE_ZERO), Run(18, 14, 0),
                  Run(32, 4, STATE_HOLE | STATE_ZERO)]
    assert plan_incremental(allocation, dirty) == [
        Extent(4, 5, DATA), Extent(9, 9, ZERO), Extent(18, 1, DATA), Extent(26, 6, DATA)]


def test_plan_incremental_dirty_zero_range_is_recorded_as_zero():
    assert plan_incremental([Run(0, 100, STATE_ZERO)], [Run(0, 100, STATE_DIRTY)]) == [
        Extent(0, 100, ZERO)]


def test_plan_incremental_nothing_dirty():
    assert plan_incremental([Run(0, 100, 0)], [Run(0, 100, 0)]) == []


@PROPERTY
@given(disk_maps())
def test_plan_full_records_every_byte_by_allocation(m):
    size, allocation, _dirty = m
    out = plan_full(allocation)
    assert_normal(out, size)
    flags = flags_per_byte(allocation, size)
    assert kinds(out, size) == [expected_kind(f) for f in flags]
    assert total(out, DATA) + total(out, ZERO) == size


@PROPERTY
@given(disk_maps())
def test_plan_incremental_records_exactly_dirty_bytes(m):
    size, allocation, dirty = m
    out = plan_incremental(allocation, dirty)
    assert_normal(out, size)
    flags = flags_per_byte(allocation, size)
    dirt = flags_per_byte(dirty, size)
    assert kinds(out, size) == [expected_kind(f) if d & STATE_DIRTY else None
                                for f, d in zip(flags, dirt)]


@PROPERTY
@given(disk_maps(), st.integers(0, 40))
def test_plan_incremental_needs_allocation_only_near_dirty_runs(m, gap):
    size, allocation, dirty = m
    near = [r for lo, hi in status_ranges(dirty, gap) for r in clip_runs(allocation, lo, hi)]
    assert plan_incremental(near, dirty) == plan_incremental(allocation, dirty)


@PROPERTY
@given(disk_maps(), st.integers(0, 40))
def test_status_ranges_cover_the_dirty_runs_and_join_close_ones(m, gap):
    size, _allocation, dirty = m
    out = status_ranges(dirty, gap)
    assert {i for r in dirty if r.flags & STATE_DIRTY for i in range(r.start, r.end)} \
        <= covered(out)
    assert all(b[0] - a[1] >= gap for a, b in zip(out, out[1:]))
    for lo, hi in out:   # every range starts and ends with dirty bytes
        assert any(r.flags & STATE_DIRTY and r.start == lo for r in dirty)
        assert any(r.flags & STATE_DIRTY and r.end == hi for r in dirty)


def test_plan_incremental_refuses_allocation_that_misses_a_dirty_byte():
    with pytest.raises(ValueError, match="does not cover dirty byte 10"):
        plan_incremental([Run(0, 10, 0), Run(12, 8, 0)], [Run(0, 20, STATE_DIRTY)])
    with pytest.raises(ValueError, match="does not cover dirty byte 15"):
        plan_incremental([Run(0, 15, 0)], [Run(5, 15, STATE_DIRTY)])


def test_plan_full_refuses_unsorted_or_overlapping_runs():
    with pytest.raises(ValueError):
        plan_full([Run(10, 5, 0), Run(0, 5, 0)])
    with pytest.raises(ValueError):
        plan_full([Run(0, 10, 0), Run(5, 10, STATE_ZERO)])


@PROPERTY
@given(disk_maps())
def test_plan_incremental_all_dirty_equals_full(m):
    size, allocation, _dirty = m
    assert plan_incremental(allocation, [Run(0, size, STATE_DIRTY)]) == plan_full(allocation)


# --- widen_data ------------------------------------------------------------------------

def test_widen_data_docstring_example():
    extents = [Extent(5, 2, DATA), Extent(7, 10, ZERO), Extent(30, 3, DATA)]
    assert widen_data(extents, 8, 36) == [Extent(0, 8, DATA), Extent(8, 9, ZERO),
                                          Extent(24, 12, DATA)]


def test_widen_data_clips_to_disk_end():
    assert widen_data([Extent(9, 1, DATA)], 8, 10) == [Extent(8, 2, DATA)]


@pytest.mark.parametrize("alignment", [0, 1])
def test_widen_data_no_alignment_is_identity(alignment):
    extents = [Extent(1, 2, DATA), Extent(3, 2, ZERO)]
    assert widen_data(extents, alignment, 10) == extents


@PROPERTY
@given(extent_maps(), st.integers(2, 32))
def test_widen_data_properties(sized, alignment):
    size, extents = sized
    out = widen_data(extents, alignment, size)
    assert_normal(out, size)
    before, after = kinds(extents, size), kinds(out, size)
    for i in range(size):
        if before[i] == DATA:
            assert after[i] == DATA, f"DATA byte {i} lost"
        if before[i] is not None:
            assert after[i] is not None, f"recorded byte {i} dropped"
        if after[i] == ZERO:
            assert before[i] == ZERO, f"byte {i} became ZERO"
        if after[i] == DATA and before[i] != DATA:
            block = range(i - i % alignment, min(size, i - i % alignment + alignment))
            assert any(before[j] == DATA for j in block), f"byte {i} widened from nothing"
    for e in out:
        if e.kind == DATA:
            assert e.start % alignment == 0
            assert e.end % alignment == 0 or e.end == size


# --- split_at_blocks, requests ---------------------------------------------------------

def test_split_at_blocks_examples():
    assert split_at_blocks(Extent(3, 20), 8) == [Extent(3, 5), Extent(8, 15)]
    assert split_at_blocks(Extent(8, 20), 8) == [Extent(8, 20)]
    assert split_at_blocks(Extent(3, 4), 8) == [Extent(3, 4)]
    assert split_at_blocks(Extent(3, 5), 8) == [Extent(3, 5)]
    assert split_at_blocks(Extent(3, 6, ZERO), 8) == [Extent(3, 5, ZERO), Extent(8, 1, ZERO)]


@PROPERTY
@given(st.integers(0, 1000), st.integers(1, 1000), st.integers(1, 64))
def test_split_at_blocks_properties(start, length, block):
    e = Extent(start, length)
    pieces = split_at_blocks(e, block)
    assert pieces[0].start == e.start
    assert pieces[-1].end == e.end
    for a, b in zip(pieces, pieces[1:]):
        assert a.end == b.start
        assert b.start % block == 0
    assert all(p.kind == e.kind for p in pieces)
    assert len(pieces) <= 2


def test_requests_examples():
    assert requests(Extent(3, 20), 8) == [(3, 5), (8, 8), (16, 7)]
    assert requests(Extent(0, 8), 8) == [(0, 8)]
    assert requests(Extent(5, 1), 8) == [(5, 1)]


@PROPERTY
@given(st.integers(0, 1000), st.integers(1, 1000), st.integers(1, 64))
def test_requests_properties(start, length, max_request):
    reqs = requests(Extent(start, length), max_request)
    assert reqs[0][0] == start
    assert sum(n for _, n in reqs) == length
    offset = start
    for i, (o, n) in enumerate(reqs):
        assert o == offset and 0 < n <= max_request
        if i:
            assert o % max_request == 0
        offset += n


# --- check_map ------------------------------------------------------------------------

def test_check_map_accepts_valid_and_empty():
    check_map([], 0)
    check_map([Extent(0, 5), Extent(5, 5, ZERO), Extent(12, 8)], 20)


@pytest.mark.parametrize("extents, size", [
    ([Extent(5, 5), Extent(0, 5)], 20),       # out of order
    ([Extent(0, 6), Extent(5, 5)], 20),       # overlap
    ([Extent(0, 5), Extent(0, 5)], 20),       # duplicate
    ([Extent(15, 6)], 20),                    # beyond the end
])
def test_check_map_rejects(extents, size):
    with pytest.raises(ValueError):
        check_map(extents, size)


def test_total():
    extents = [Extent(0, 5), Extent(5, 3, ZERO), Extent(10, 2)]
    assert (total(extents, DATA), total(extents, ZERO)) == (7, 3)


# --- max_extents: what a disk's size allows a record ---------------------------------------

def sector_runs(flags, tail):
    """Runs of a disk with one flag a sector, whose last sector is cut at byte tail of
    it (a raw file ending there) into the last flag and zeros."""
    runs = [Run(i * SECTOR, SECTOR, f) for i, f in enumerate(flags)]
    if tail:
        last = runs.pop()
        runs += [Run(last.start, tail, last.flags),
                 Run(last.start + tail, SECTOR - tail, STATE_ZERO)]
    return runs


@PROPERTY
@given(st.lists(st.sampled_from(ALLOC_FLAGS), min_size=1, max_size=40),
       st.lists(st.booleans(), min_size=40, max_size=40), st.integers(0, SECTOR - 1))
def test_records_stay_within_max_extents(flags, dirty, tail):
    """Allocation and dirty bitmaps change on sector boundaries (a raw file's end
    aside): no full or incremental lists more extents than max_extents."""
    size = len(flags) * SECTOR
    allocation = sector_runs(flags, tail)
    assert len(plan_full(allocation)) <= max_extents(size)
    bitmap = [Run(i * SECTOR, SECTOR, STATE_DIRTY if d else 0)
              for i, d in enumerate(dirty[:len(flags)])]
    assert len(plan_incremental(allocation, bitmap)) <= max_extents(size)


def test_max_extents_is_reached_by_alternating_sectors_and_a_tail():
    flags = [0, STATE_ZERO] * 4 + [0]
    extents = plan_full(sector_runs(flags, 100))
    assert len(extents) == max_extents(len(flags) * SECTOR) == 10
    assert max_extents(1) == 2 and max_extents(SECTOR) == 2 and max_extents(SECTOR + 1) == 3


# --- simulation: full + incrementals reconstruct the disk --------------------------------

def disk_content(rnd, flags):
    """Bytes a disk with these per-byte allocation flags may hold: zero where ZERO is set."""
    return bytearray(0 if f & STATE_ZERO else rnd.choice((0, rnd.randrange(1, 256)))
                     for f in flags)


def next_state(rnd, old_flags, old_content, dirty):
    """The disk after a guest wrote inside dirty bytes only: (flags, content)."""
    flags, content = list(old_flags), bytearray(old_content)
    for i, d in enumerate(dirty):
        if d:
            flags[i] = rnd.choice(ALLOC_FLAGS)
            content[i] = 0 if flags[i] & STATE_ZERO else rnd.randrange(256)
    return flags, content


def random_runs(rnd, per_byte, size):
    cuts = set(rnd.sample(range(1, size), min(size - 1, rnd.randint(0, 5)))) if size > 1 else ()
    return runs_from_bytes(per_byte, cuts)


def dirty_bytes(rnd, size, granularity):
    """A dirty bitmap at granularity: whole granules, like a QEMU bitmap."""
    out = []
    for lo in range(0, size, granularity):
        out += [rnd.random() < 0.4] * (min(size, lo + granularity) - lo)
    return out


def apply(image, extents, content, level):
    """Restore one archive onto image: DATA from the backup, ZERO zeroed (inc only:
    a fresh image of a full backup is zero already, so restore skips ZERO there)."""
    for e in extents:
        if e.kind == DATA:
            image[e.start:e.end] = content[e.start:e.end]
        elif level == "inc":
            image[e.start:e.end] = bytes(e.length)


@SIMULATION
@given(st.integers(1, MAX_DISK), st.integers(0, 3), st.integers(0, 16), st.integers(1, 9),
       st.integers(1, 16), st.randoms(use_true_random=False))
def test_full_then_incrementals_reconstruct_disk(size, incrementals, alignment, block,
                                                 granularity, rnd):
    flags = [rnd.choice(ALLOC_FLAGS) for _ in range(size)]
    content = disk_content(rnd, flags)
    extents = widen_data(plan_full(random_runs(rnd, flags, size)), alignment, size)
    check_map(extents, size)
    image = bytearray(size)   # a new image reads as zeros
    apply(image, extents, content, "full")
    assert image == content
    for _ in range(incrementals):
        dirty = dirty_bytes(rnd, size, granularity)
        flags, new = next_state(rnd, flags, content, dirty)
        assert all(d or a == b for d, a, b in zip(dirty, content, new))
        content = new
        dirty_runs = random_runs(rnd, [STATE_DIRTY if d else 0 for d in dirty], size)
        extents = plan_incremental(random_runs(rnd, flags, size), dirty_runs)
        extents = widen_data(extents, alignment, size)
        check_map(extents, size)
        # what backup streams: members split at blocks, read in requests
        members = [m for e in extents if e.kind == DATA for m in split_at_blocks(e, block)]
        streamed = [(o, n) for m in members for o, n in requests(m, block)]
        assert merge(Extent(o, n) for o, n in streamed) == [e for e in extents if e.kind == DATA]
        apply(image, extents, content, "inc")
        assert image == content


def test_dirty_range_that_became_zero_is_zeroed_on_restore():
    """The case the product exists to get right: data written, backed up, then discarded."""
    size = 16
    content = bytearray(b"\x07" * size)
    image = bytearray(size)
    apply(image, plan_full([Run(0, size, 0)]), content, "full")
    content[4:12] = bytes(8)   # guest discards; allocation reads zero there, bitmap dirty
    allocation = [Run(0, 4, 0), Run(4, 8, STATE_HOLE | STATE_ZERO), Run(12, 4, 0)]
    extents = plan_incremental(allocation, [Run(0, 4, 0), Run(4, 8, STATE_DIRTY),
                                            Run(12, 4, 0)])
    assert extents == [Extent(4, 8, ZERO)]
    apply(image, extents, content, "inc")
    assert image == content


def test_simulation_helpers_self_check():
    rnd = random.Random(1)
    flags = [0, 0, 2, 2, 1]
    assert runs_from_bytes(flags) == [Run(0, 2, 0), Run(2, 2, 2), Run(4, 1, 1)]
    assert runs_from_bytes(flags, {1}) == [Run(0, 1, 0), Run(1, 1, 0), Run(2, 2, 2),
                                           Run(4, 1, 1)]
    assert disk_content(rnd, flags)[2:4] == b"\0\0"


# --- Borg 2's input map ---------------------------------------------------------------

def test_input_map_of_a_full_is_its_extents():
    recorded = [Extent(0, 100, DATA), Extent(100, 50, ZERO), Extent(150, 50, DATA)]
    assert input_map(200, recorded, incremental=False) == [
        (0, 100, DATA), (100, 50, ZERO), (150, 50, DATA)]


def test_input_map_of_an_incremental_fills_the_gaps_with_same():
    recorded = [Extent(10, 5, DATA), Extent(15, 5, ZERO), Extent(40, 10, DATA)]
    assert input_map(60, recorded, incremental=True) == [
        (0, 10, SAME), (10, 5, DATA), (15, 5, ZERO), (20, 20, SAME), (40, 10, DATA),
        (50, 10, SAME)]
    assert input_map(60, [], incremental=True) == [(0, 60, SAME)]


def test_data_bytes_of_an_input_map_counts_only_what_borg_reads():
    assert data_bytes(input_map(60, [Extent(10, 5, DATA), Extent(15, 5, ZERO),
                                     Extent(40, 10, DATA)], incremental=True)) == 15
    assert data_bytes([(0, 60, SAME)]) == 0


@pytest.mark.parametrize("recorded", [
    [Extent(0, 10, DATA)],                          # misses the end
    [Extent(10, 50, DATA)],                         # misses the start
    [Extent(0, 10, DATA), Extent(20, 40, ZERO)],    # misses the middle
])
def test_input_map_refuses_a_full_that_misses_bytes(recorded):
    with pytest.raises(ValueError, match="records no byte"):
        input_map(60, recorded, incremental=False)


@pytest.mark.parametrize("recorded", [
    [Extent(0, 10, DATA), Extent(5, 10, DATA)],     # overlap
    [Extent(50, 20, DATA)],                         # beyond the disk
])
def test_input_map_refuses_extents_that_overlap_or_overrun(recorded):
    with pytest.raises(ValueError, match="overlaps or ends beyond"):
        input_map(60, recorded, incremental=True)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40), st.sampled_from(KINDS)),
                max_size=12))
def test_input_map_says_of_every_byte_what_was_recorded(spec):
    size, recorded, taken = 240, [], set()
    for start, length, kind in sorted(spec):
        span = set(range(start, min(start + length, size)))
        if span and not span & taken and start + length <= size:
            recorded.append(Extent(start, length, kind))
            taken |= span
    ranges = input_map(size, recorded, incremental=True)
    assert ranges[0][0] == 0 and sum(length for _, length, _ in ranges) == size
    assert all(a[0] + a[1] == b[0] and a[2] != b[2] for a, b in zip(ranges, ranges[1:]))
    said = {b: state for start, length, state in ranges for b in range(start, start + length)}
    want = {b: SAME for b in range(size)}
    want.update({b: e.kind for e in recorded for b in range(e.start, e.end)})
    assert said == want
