"""restore of complete images (format versions 6, 7): their extracts start one
ahead; with --layers (version 7) an image above
another is written only where it differs from the one below, zeros included;
a lower image that is too short or too long is damage."""

from __future__ import annotations

import contextlib
import io
import os
import random

import pytest

from borg_vm.errors import IntegrityError
from borg_vm.progress import Progress
from borg_vm.services.restore import images
from borg_vm.services.restore.plan import DiskPlan, extract_order, image_steps

BLOCK = 64 * 1024
SIZE = 16 * BLOCK


class Images:
    """An image store serving image archives from memory, by ID, as `borg extract
    --stdout` would (a stream whose stdout is a buffered reader)."""

    def __init__(self, **by_id: bytes):
        self.by_id = by_id
        self.extracted: list[str] = []

    @contextlib.contextmanager
    def extract_image(self, archive_id):
        self.extracted.append(archive_id)
        stream = type("Stream", (), {})()
        stream.stdout = io.BufferedReader(io.BytesIO(self.by_id[archive_id]))
        yield stream

    def finish(self, action, stream):
        pass


def allocated_blocks(path) -> set[int]:
    """The blocks of a sparse raw file that hold data (SEEK_DATA/SEEK_HOLE)."""
    out, fd = set(), os.open(path, os.O_RDONLY)
    try:
        at = 0
        while True:
            try:
                at = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                return out
            end = os.lseek(fd, at, os.SEEK_HOLE)
            out |= set(range(at // BLOCK, (end + BLOCK - 1) // BLOCK))
            at = end
    finally:
        os.close(fd)


def test_an_image_above_another_is_written_where_it_differs_zeros_included(tmp_path):
    rng = random.Random(7)
    below = bytearray(rng.randbytes(SIZE))
    below[3 * BLOCK:4 * BLOCK] = bytes(BLOCK)
    above = bytearray(below)
    above[1 * BLOCK:2 * BLOCK] = rng.randbytes(BLOCK)       # rewritten
    above[5 * BLOCK:6 * BLOCK] = bytes(BLOCK)               # zeroed over data
    above[3 * BLOCK + 10:3 * BLOCK + 20] = b"x" * 10        # written over zeros
    above[9 * BLOCK:10 * BLOCK] = below[9 * BLOCK:10 * BLOCK]   # the same: not written
    store = Images(low=bytes(below), high=bytes(above))
    path = tmp_path / "top.img"
    path.touch()
    with images.ImageExtracts(store, ["high", "low"]) as extracts:
        images.apply_image(extracts, "high", images.Layer(str(path), "raw", True), SIZE, BLOCK,
                           Progress.for_terminal("", SIZE, False), "low")
    assert store.extracted == ["high", "low"]
    written = path.read_bytes()
    assert written[BLOCK:2 * BLOCK] == above[BLOCK:2 * BLOCK]
    assert written[3 * BLOCK:4 * BLOCK] == above[3 * BLOCK:4 * BLOCK]
    assert allocated_blocks(path) <= {1, 3, 5}
    assert {1, 3} <= allocated_blocks(path)
    # over the image below (here: the file holds it), the layer reads as the top
    merged = bytearray(below)
    for b in (1, 3, 5):
        merged[b * BLOCK:(b + 1) * BLOCK] = written[b * BLOCK:(b + 1) * BLOCK]
    assert merged == above


@pytest.mark.parametrize("lower", [SIZE - BLOCK, SIZE + 1])
def test_a_lower_image_of_another_size_is_damage(tmp_path, lower):
    store = Images(low=bytes(lower), high=b"\1" * SIZE)
    path = tmp_path / "top.img"
    path.touch()
    with pytest.raises(IntegrityError, match="low"), \
            images.ImageExtracts(store, ["high", "low"]) as extracts:
        images.apply_image(extracts, "high", images.Layer(str(path), "raw", True), SIZE, BLOCK,
                           Progress.for_terminal("", SIZE, False), "low")


def test_image_extracts_start_one_ahead_in_the_order_restore_takes_them():
    # three layers of one disk (the middle one left empty: its image is None) and a
    # second disk: each image, then the one below it
    plans = [DiskPlan("vda", (), ("b.qcow2", "s1.qcow2", "s2.qcow2", "t.qcow2"), ("qcow2",) * 4,
                      (), image_ids=("base", None, "s2", "top")),
             DiskPlan("vdb", (), ("o.qcow2",), ("qcow2",), (), image_ids=("other",))]
    assert image_steps(plans[0]) == [("b.qcow2", "qcow2", "base", None),
                                     ("s2.qcow2", "qcow2", "s2", "base"),
                                     ("t.qcow2", "qcow2", "top", "s2")]
    order = extract_order(plans)
    assert order == ["base", "s2", "base", "top", "s2", "other"]
    store = Images(**{i: b"" for i in order})
    with images.ImageExtracts(store, order) as extracts:
        assert store.extracted == ["base"]        # started before it is taken
        extracts.take("base")
        assert store.extracted == ["base", "s2"]
        with pytest.raises(AssertionError, match="out of order"):
            extracts.take("top")


@pytest.mark.parametrize("blocks, below, expected", [
    ("xxxx", None, [(0, 4)]),
    ("0000", None, []),
    ("x0xx0", None, [(0, 1), (2, 4)]),
    ("0x0x", None, [(1, 2), (3, 4)]),
    ("abcd", "abzd", [(2, 3)]),
    ("abcd", "zbcz", [(0, 1), (3, 4)]),
    ("ab0", "ab0", []),
], ids=["dense", "zeros", "mixed", "alternating", "one-changed", "ends-changed", "same"])
def test_changed_blocks_go_out_as_runs(blocks, below, expected):
    """Adjacent changed blocks of a span are one write; unchanged ones none."""
    def image(spec):
        return b"".join(bytes(BLOCK) if c == "0" else c.encode() * BLOCK for c in spec)
    data = memoryview(image(blocks))
    runs = list(images.changed_runs(data, None if below is None else bytearray(image(below)),
                                    BLOCK))
    assert runs == [(a * BLOCK, b * BLOCK) for a, b in expected]


def test_a_short_last_block_is_compared_alone():
    data = memoryview(bytes(BLOCK) + b"\0" * 100 + b"x")
    assert list(images.changed_runs(data, None, BLOCK)) == [(BLOCK, BLOCK + 101)]
    assert list(images.changed_runs(memoryview(bytes(BLOCK + 10)), None, BLOCK)) == []


def test_an_image_of_several_spans_with_a_short_tail_reads_back_as_written(tmp_path):
    """Blocks are read and written a span (images.IMAGE_SPAN_BLOCKS) at a time:
    runs that end at a span's edge, cross none, and a tail shorter than a block."""
    rng = random.Random(11)
    size = (2 * images.IMAGE_SPAN_BLOCKS + 8) * BLOCK + 4096
    below = bytearray(rng.randbytes(size))
    above = bytearray(below)
    for b in range(0, size // BLOCK, 3):   # every third block rewritten, some zeroed
        above[b * BLOCK:(b + 1) * BLOCK] = bytes(BLOCK) if b % 2 else rng.randbytes(BLOCK)
    above[-100:] = rng.randbytes(100)
    store = Images(low=bytes(below), high=bytes(above))
    path = tmp_path / "top.img"
    path.write_bytes(below)     # the layer below, as a file the layer lies over
    with images.ImageExtracts(store, ["high", "low"]) as extracts:
        images.apply_image(extracts, "high", images.Layer(str(path), "raw", True), size, BLOCK,
                           Progress.for_terminal("", size, False), "low")
    assert path.read_bytes() == above
