"""How restore lays the pieces it reads into its buffers (format/reader.py): back to
back, aligned, never over a piece still in use, and handed on one buffer at a time."""

from hypothesis import given, settings
from hypothesis import strategies as st

from borg_vm import prefetch
from borg_vm.adapters.rawimage import DIRECT_ALIGN
from borg_vm.core.extent import Extent
from borg_vm.format.reader import _aligned, _Room, buffer_batches

SIZE = 64 * 1024

spans = st.lists(st.tuples(st.integers(0, 8 * SIZE), st.integers(1, 3 * SIZE)), max_size=40)


def laid_out(spans_, count):
    """(span index, disk offset, piece) of every piece of the spans, laid out in count buffers."""
    room = _Room(prefetch.Buffers(count, SIZE))
    at, out = 0, []
    for i, (gap, length) in enumerate(spans_):
        at += gap
        out += [(i, o, p) for o, p in _aligned(Extent(at, length), room)]
        at += length
    return out


@settings(max_examples=300, deadline=None)
@given(spans, st.integers(1, 4))
def test_pieces_cover_each_span_and_end_on_buffer_multiples(spans_, count):
    pieces = laid_out(spans_, count)
    at = 0
    for i, (gap, length) in enumerate(spans_):
        at += gap
        mine = [(o, p) for j, o, p in pieces if j == i]
        assert [o for o, _ in mine] == [at + sum(len(p) for _, p in mine[:k])
                                        for k in range(len(mine))]
        assert sum(len(p) for _, p in mine) == length
        assert all((o + len(p)) % SIZE == 0 for o, p in mine[:-1])
        at += length


@settings(max_examples=300, deadline=None)
@given(spans, st.integers(2, 4))
def test_pieces_share_buffers_aligned_and_only_reuse_one_count_buffers_later(spans_, count):
    """A piece's room is reused only after count - 1 more buffers were started."""
    pieces = laid_out(spans_, count)
    started = []   # per piece: how many buffer starts before it
    last, starts = None, 0
    for _i, _o, p in pieces:
        if p.obj is not last or _offset(p) == 0:   # a buffer started (count 1: the same again)
            starts += 1
        last = p.obj
        started.append(starts)
        assert _offset(p) % DIRECT_ALIGN == 0 and _offset(p) + len(p) <= SIZE
    for a in range(len(pieces)):
        for b in range(a + 1, len(pieces)):
            pa, pb = pieces[a][2], pieces[b][2]
            if pa.obj is pb.obj and started[b] - started[a] < count:
                assert _overlap(pa, pb) == 0, (a, b)


def _offset(view):
    import ctypes
    base = ctypes.addressof(ctypes.c_char.from_buffer(view.obj))
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) - base


def _overlap(a, b):
    sa, sb = _offset(a), _offset(b)
    return max(0, min(sa + len(a), sb + len(b)) - max(sa, sb))


def test_small_pieces_are_packed_and_handed_on_per_buffer():
    pieces = laid_out([(SIZE, 4096)] * 20 + [(0, SIZE)], 3)
    items = [("disk/vda/x", ("vda", 0), o, p) for _i, o, p in pieces]
    items.insert(5, ("manifest.json", None, 0, b"{}"))
    batches = list(buffer_batches(items))
    # 16 x 4 KiB fill a buffer; the last span is cut where it crosses a multiple of
    # the buffer size on the disk: its first piece fits beside the last 4 small ones.
    assert [len(b) for b in batches] == [5, 1, 11, 5, 1]
    assert all(len({id(x[3].obj) for x in b}) == 1 for b in batches if b[0][1] is not None)
    assert [x for b in batches for x in b] == items
