"""Raw images written by borg-vm itself (adapters/rawimage.py), on a real file
system, with O_DIRECT."""

import os
import random

from borg_vm import prefetch
from borg_vm.adapters import rawimage

BLOCK = 1024 * 1024
DEPTH = 4


def test_pipelined_direct_writes_keep_their_data_when_blocks_are_skipped(tmp_path):
    """A restore of a Borg 2 image skips zero blocks: with a ring of buffers
    reused by turn, not by write, a direct write still in flight read its buffer
    after it was refilled, and a block came out holding the data of one five
    later (each run of this test did, with 256 blocks)."""
    path = tmp_path / "disk.raw"
    path.write_bytes(b"")
    os.truncate(path, 256 * BLOCK)
    rnd = random.Random(7)
    blocks = [bytes(BLOCK) if rnd.random() < 0.3 else rnd.randbytes(BLOCK) for _ in range(256)]
    ring = prefetch.Buffers(DEPTH + 1, BLOCK)
    with rawimage.open_raw(str(path)) as out, out.pipelined_writes(DEPTH) as write:
        assert out.direct is not None, "this test needs O_DIRECT"
        for i, data in enumerate(blocks):
            view = ring.take()
            view[:] = data
            if any(data):
                ring.hold(view, write(view, i * BLOCK))
    got = path.read_bytes()
    assert [i for i in range(256) if got[i * BLOCK:(i + 1) * BLOCK] != blocks[i]] == []
