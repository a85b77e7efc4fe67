"""Extents held compactly: an ExtentArray reads as the tuple of Extents it holds."""

from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from borg_vm.core.extent import DATA, ZERO, Extent, check_map, covers_data, spans, total
from borg_vm.core.extent_arrays import ExtentArray, Joiner

EXTENTS = st.lists(st.builds(Extent, st.integers(0, 1 << 40), st.integers(1, 1 << 30),
                             st.sampled_from([DATA, ZERO])), max_size=20)


@given(EXTENTS)
def test_an_extent_array_reads_as_its_extents(extents):
    held = ExtentArray.of(extents)
    assert len(held) == len(extents)
    assert list(held) == extents and held == tuple(extents) and held == extents
    assert all(held[i] == e for i, e in enumerate(extents))
    assert held[1:3] == extents[1:3] and isinstance(held[1:3], ExtentArray)
    assert held[-1:] == extents[-1:]
    assert list(spans(held)) == [(e.start, e.length) for e in extents]
    for kind in (DATA, ZERO):
        assert list(spans(held, kind)) == list(spans(extents, kind))
        assert held.total(kind) == total(held, kind) == total(extents, kind)
    assert ExtentArray.of(held) is held
    assert hash(held) == hash(ExtentArray.of(list(held)))


def test_an_extent_array_differs_from_other_extents():
    held = ExtentArray.of([Extent(0, 5), Extent(5, 5, ZERO)])
    assert held != (Extent(0, 5), Extent(5, 5))
    assert held != (Extent(0, 5),)
    assert held != ExtentArray.of([Extent(0, 5)])
    assert held != "x" and held != 3
    assert "2 extents" in repr(held)


def test_an_extent_array_out_of_range_is_an_index_error():
    with pytest.raises(IndexError):
        ExtentArray.of([])[0]


@pytest.mark.parametrize("kinds", [b"\x02", b"\x00\x00"])
def test_an_extent_array_refuses_unknown_kinds_and_uneven_arrays(kinds):
    with pytest.raises(ValueError):
        ExtentArray(array("Q", [0]), array("Q", [1]), kinds)


def test_check_map_refuses_an_empty_extent_of_an_array():
    """Extent() refuses a zero length; the arrays do not, so check_map does."""
    with pytest.raises(ValueError, match="empty"):
        check_map(ExtentArray(array("Q", [0, 5]), array("Q", [5, 0]), b"\x00\x01"), 10)
    check_map(ExtentArray(array("Q", [0, 5]), array("Q", [5, 5]), b"\x00\x01"), 10)


def test_a_joiner_joins_touching_extents_of_a_kind():
    j = Joiner()
    for start, length, kind in [(0, 4, DATA), (4, 4, DATA), (8, 2, ZERO), (10, 2, ZERO),
                                (20, 1, DATA), (21, 1, ZERO)]:
        j.add(start, length, kind)
    first = j.extents()
    assert first == (Extent(0, 8), Extent(8, 4, ZERO), Extent(20, 1), Extent(21, 1, ZERO))
    j.add(22, 1, ZERO)
    assert first[-1] == Extent(21, 1, ZERO) and j.extents()[-1] == Extent(21, 2, ZERO)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 5)), max_size=12), st.randoms())
def test_pieces_held_as_runs_cover_what_the_pieces_cover(layout, rnd):
    """Data cut into pieces anywhere, collected by a Joiner, covers the same extents."""
    extents, at = [], 0
    for gap, length in layout:
        at += gap
        extents.append(Extent(at, length))
        at += length
    j = Joiner()
    for e in extents:
        cut = rnd.randint(e.start, e.end)
        for lo, hi in ((e.start, cut), (cut, e.end)):
            if lo < hi:
                j.add(lo, hi - lo)
    assert covers_data(j.extents(), ExtentArray.of(extents))
    assert covers_data(extents, j.extents())
