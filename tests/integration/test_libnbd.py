"""borg_vm.adapters.libnbd against real NBD servers: qemu-nbd over qcow2 and raw
images (one with a persistent dirty bitmap, as libvirt exports it) and
nbdkit's sh plugin answering block status and reads with scripted replies.
"""

import collections
import contextlib
import os

import pytest
from realstack import KiB, MiB, allocated_data, qemu_io, run

from borg_vm.adapters import qemu
from borg_vm.adapters.libnbd import (
    BASE_ALLOCATION,
    MAX_BLOCK_STATUS,
    Export,
    _handle,
    dirty_bitmap_context,
    open_command,
    open_unix,
)
from borg_vm.core.extent import (
    DATA,
    STATE_DIRTY,
    STATE_HOLE,
    STATE_ZERO,
    ZERO,
    Extent,
    Run,
    plan_full,
    plan_incremental,
)
from borg_vm.errors import NbdError

HOLE_ZERO = STATE_HOLE | STATE_ZERO
# Bitmaps named like libvirt's, so dirty_bitmap_context names the context qemu-nbd exports.
TARGET = "vda"
BITMAP = f"backup-{TARGET}"
DIRTY = dirty_bitmap_context(TARGET)
GRANULARITY = 64 * KiB  # qcow2 cluster size, the bitmap's default granularity


def covers(runs, size):
    """Assert runs are contiguous, positive and cover [0, size) exactly."""
    assert runs and runs[0].start == 0 and runs[-1].end == size
    assert all(r.length > 0 for r in runs)
    assert all(a.end == b.start for a, b in zip(runs, runs[1:]))


def qemu_nbd_argv(image, fmt, *options):
    """Return argv of a read-only qemu-nbd for socket activation."""
    return ["qemu-nbd", "-r", "-f", fmt, *options, str(image)]


def sh_plugin(tmp_path, body, size):
    """Return nbdkit argv serving a disk of size bytes by an sh plugin whose
    case branches are body (nbdkit-sh-plugin(3): $1 method, $3 count, $4 offset)."""
    script = tmp_path / "plugin.sh"
    script.write_text(f"""#!/bin/sh
here=$(dirname "$0")
case "$1" in
  get_size) echo {size} ;;
{body}
  *) exit 2 ;;
esac
""")
    script.chmod(0o755)
    return ["nbdkit", "-s", "--exit-with-parent", "sh", str(script)]


ZERO_READS = '  pread) head -c "$3" /dev/zero ;;'


@contextlib.contextmanager
def open_stdio_command(argv, where, contexts=()):
    """Yield the Export of an NBD server speaking on its stdin/stdout (nbdkit -s),
    opened as the adapter's openers open theirs; borg_vm itself never needs one."""
    with _handle(where, contexts) as h:
        h.connect_command(list(argv))
        yield Export(h, where)


# --- block status from qemu-nbd ------------------------------------------------

def test_qcow2_allocation_covers_disk_with_data_where_written(tmp_path):
    img = tmp_path / "disk.qcow2"
    qemu.create(str(img), "qcow2", 16 * MiB)
    qemu_io(img, "qcow2", "write -P 0xab 1M 64k", "write -P 0xcd 5M 192k",
            "write -P 0xef 8M 1M", "write -z 8M 1M")
    with open_command(qemu_nbd_argv(img, "qcow2"), where="disk",
                      contexts=[BASE_ALLOCATION]) as exp:
        size = exp.size
        runs = exp.block_status(BASE_ALLOCATION)
    covers(runs, size)
    assert [(r.start, r.length) for r in runs if not r.flags & STATE_ZERO] == [
        (1 * MiB, 64 * KiB), (5 * MiB, 192 * KiB)]
    assert [e for e in plan_full(runs) if e.kind == DATA] == [
        Extent(1 * MiB, 64 * KiB, DATA), Extent(5 * MiB, 192 * KiB, DATA)]
    assert sum(e.length for e in plan_full(runs)) == size


def test_dirty_bitmap_records_dirty_data_and_dirty_zeros(tmp_path, qemu_nbd_socket):
    img = tmp_path / "disk.qcow2"
    qemu.create(str(img), "qcow2", 16 * MiB)
    qemu_io(img, "qcow2", "write -P 0x11 0 4M")  # before the bitmap: not dirty
    run("qemu-img", "bitmap", "--add", str(img), BITMAP)
    # A persistent enabled bitmap records writes made by any qemu program.
    qemu_io(img, "qcow2", "write -P 0xab 1028k 4k", "write -z 2M 64k",
            "write -P 0xcd 8M 128k")
    sock = qemu_nbd_socket(str(img), "-r", "-f", "qcow2", "-B", BITMAP)
    with open_unix(sock, TARGET, [BASE_ALLOCATION, DIRTY]) as exp:
        size = exp.size
        runs = {c: exp.block_status(c) for c in (BASE_ALLOCATION, DIRTY)}
    covers(runs[BASE_ALLOCATION], size)
    covers(runs[DIRTY], size)
    # A 4 KiB write marks its whole 64 KiB granule dirty.
    assert [(r.start, r.length) for r in runs[DIRTY] if r.flags & STATE_DIRTY] == [
        (1 * MiB, GRANULARITY), (2 * MiB, GRANULARITY), (8 * MiB, 128 * KiB)]
    assert [(r.start, r.length) for r in runs[BASE_ALLOCATION] if not r.flags & STATE_ZERO] == [
        (0, 2 * MiB), (2 * MiB + 64 * KiB, 2 * MiB - 64 * KiB), (8 * MiB, 128 * KiB)]
    assert plan_incremental(runs[BASE_ALLOCATION], runs[DIRTY]) == [
        Extent(1 * MiB, GRANULARITY, DATA),
        Extent(2 * MiB, GRANULARITY, ZERO),
        Extent(8 * MiB, 128 * KiB, DATA)]


def test_open_unix_with_unknown_export_name_raises(tmp_path, qemu_nbd_socket):
    img = tmp_path / "disk.raw"
    qemu.create(str(img), "raw", 1 * MiB)
    sock = qemu_nbd_socket(str(img), "-r", "-f", "raw")
    with pytest.raises(NbdError, match="connect failed on export 'vdb'"):
        with open_unix(sock, "vdb"):
            pass


def test_open_command_failing_to_start_raises(tmp_path):
    with pytest.raises(NbdError, match="connect failed on missing"):
        with open_command(qemu_nbd_argv(tmp_path / "missing.qcow2", "qcow2"), where="missing"):
            pass


# --- block status from a scripted nbdkit ----------------------------------------

# The true map of a 2 GiB disk; each scripted reply gives at most two of its
# extents, starting at the requested offset, whatever length was asked for:
#
#   request  0     +1G                  (MAX_BLOCK_STATUS)
#   reply    |data|zero|                short: ends at 300M
#   request             300M   +1G = 1324M
#   reply               |data.....|zero.....|  ends at 1400M, beyond the request
#   request                                 1400M  +648M (to the end)
#   reply                                   |data|hole,zero.....|
SCRIPTED_MAP = [(0, 100 * MiB, 0), (100 * MiB, 200 * MiB, STATE_ZERO),
                (300 * MiB, 700 * MiB, 0), (1000 * MiB, 400 * MiB, HOLE_ZERO),
                (1400 * MiB, 100 * MiB, 0), (1500 * MiB, 548 * MiB, HOLE_ZERO)]
SCRIPTED_SIZE = 2048 * MiB

SCRIPTED_EXTENTS = """\
  can_extents) exit 0 ;;
  extents)
    echo "$4 $3" >> "$here/calls"
    n=0
    while read start length flags; do
      end=$((start + length))
      if [ "$end" -le "$4" ]; then continue; fi
      if [ "$start" -lt "$4" ]; then start=$4; fi
      echo "$start $((end - start)) $flags"
      n=$((n + 1))
      if [ "$n" -eq 2 ]; then break; fi
    done < "$here/map" ;;
"""


def scripted_server(tmp_path):
    (tmp_path / "map").write_text("".join(f"{s} {n} {f}\n" for s, n, f in SCRIPTED_MAP))
    return sh_plugin(tmp_path, SCRIPTED_EXTENTS + ZERO_READS, SCRIPTED_SIZE)


def scripted_calls(tmp_path):
    return sorted(tuple(map(int, line.split()))
                  for line in (tmp_path / "calls").read_text().splitlines())


def test_block_status_loops_over_short_and_overlong_replies(tmp_path):
    assert SCRIPTED_SIZE > MAX_BLOCK_STATUS, "the first request must not reach the end"
    with open_stdio_command(scripted_server(tmp_path), where="nbdkit",
                            contexts=[BASE_ALLOCATION]) as exp:
        runs = exp.block_status(BASE_ALLOCATION)
    # Cut where requests end, joined again where the flags agree.
    assert runs == [Run(*e) for e in SCRIPTED_MAP]
    # Requests of at most MAX_BLOCK_STATUS (1024M); a short reply is followed by a
    # request for the rest, an overlong one (the 1000M-1400M run) is cut.
    assert scripted_calls(tmp_path) == [(0, MAX_BLOCK_STATUS), (300 * MiB, 724 * MiB),
                                        (1024 * MiB, MAX_BLOCK_STATUS),
                                        (1500 * MiB, 548 * MiB)]


def test_block_status_of_ranges_asks_for_those_only(tmp_path):
    with open_stdio_command(scripted_server(tmp_path), where="nbdkit",
                            contexts=[BASE_ALLOCATION]) as exp:
        runs = exp.block_status(BASE_ALLOCATION, [(50 * MiB, 150 * MiB), (1450 * MiB, 1600 * MiB)])
    assert runs == [Run(50 * MiB, 50 * MiB, 0), Run(100 * MiB, 50 * MiB, STATE_ZERO),
                    Run(1450 * MiB, 50 * MiB, 0), Run(1500 * MiB, 100 * MiB, HOLE_ZERO)]
    assert scripted_calls(tmp_path) == [(50 * MiB, 100 * MiB), (1450 * MiB, 150 * MiB)]


def test_block_status_of_context_the_server_lacks_raises(tmp_path):
    with open_stdio_command(scripted_server(tmp_path), where="nbdkit",
                            contexts=[BASE_ALLOCATION, DIRTY]) as exp:
        assert exp.can_meta_context(BASE_ALLOCATION)
        assert not exp.can_meta_context(DIRTY)
        with pytest.raises(NbdError, match=f"server did not report {DIRTY}"):
            exp.block_status(DIRTY)


def test_block_status_without_any_context_raises(tmp_path):
    with open_stdio_command(scripted_server(tmp_path), where="nbdkit",
                            contexts=[DIRTY]) as exp:
        with pytest.raises(NbdError, match="NBD block status failed on nbdkit"):
            exp.block_status(DIRTY)


# --- pipelined reads -------------------------------------------------------------

MIXED_REQUESTS = [(0, 4096), (4096, 1), (4097, 65535), (1 * MiB + 3, 3 * MiB),
                  (7 * MiB, 1 * MiB), (0, 512), (5, 100_000)] + [
                  (i * 128 * KiB + i, 128 * KiB - 2 * i) for i in range(20)]


@pytest.mark.parametrize("depth, hold", [(1, 1), (8, 1), (8, 3)])
def test_read_pipelined_yields_exact_bytes_in_order(tmp_path, depth, hold):
    data = os.urandom(8 * MiB)
    img = tmp_path / "disk.raw"
    img.write_bytes(data)
    got, held = [], collections.deque(maxlen=hold)
    with open_command(qemu_nbd_argv(img, "raw"), where="disk") as exp:
        for offset, view in exp.read_pipelined(MIXED_REQUESTS, depth, hold):
            assert exp.h.aio_in_flight() <= depth
            held.append((offset, view))
            # buffers are recycled, but never one of the last `hold` yielded
            assert all(v == data[o:o + len(v)] for o, v in held)
            got.append((offset, bytes(view)))
    assert got == [(o, data[o:o + n]) for o, n in MIXED_REQUESTS]


BAD_SECTOR_READS = """\
  pread)
    if [ "$4" -ge 1048576 ]; then echo "EIO bad sector at $4" >&2; exit 1; fi
    head -c "$3" /dev/zero ;;
"""


@pytest.mark.parametrize("depth", [1, 8])
def test_read_error_raises_after_the_good_reads(tmp_path, depth):
    argv = sh_plugin(tmp_path, BAD_SECTOR_READS, 2 * MiB)
    got = []
    with open_stdio_command(argv, where="nbdkit") as exp:
        with pytest.raises(NbdError, match="NBD read failed on nbdkit"):
            for offset, buf in exp.read_pipelined(
                    [(0, 4096), (4096, 4096), (1 * MiB, 4096), (0, 4096)], depth, 1):
                got.append((offset, bytes(buf)))
    assert got == [(0, bytes(4096)), (4096, bytes(4096))]


def rss() -> int:
    """Resident memory of this process now, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * KiB


def test_read_pipelined_costs_no_memory_per_read(tmp_path):
    """libnbd 1.14 keeps every buffer object a read was given: ~300 bytes a read,
    30 MiB for these 100,000 reads if each had its own."""
    img = tmp_path / "disk.raw"
    qemu.create(str(img), "raw", 16 * MiB)
    with open_command(qemu_nbd_argv(img, "raw"), where="disk") as exp:
        before = rss()
        for _ in exp.read_pipelined(((i % 4096 * 4 * KiB, 4 * KiB) for i in range(100_000)),
                                    8, 2):
            pass
        assert rss() - before < 8 * MiB


# --- writing images ----------------------------------------------------------------

def test_pipelined_writes_keep_nothing_they_wrote(tmp_path):
    """libnbd 1.14 keeps every buffer object a write was given, and with it the data:
    a restore held all it wrote."""
    img = str(tmp_path / "disk.qcow2")
    qemu.create(img, "qcow2", 512 * MiB)
    piece = os.urandom(64 * KiB)
    with open_command(qemu.nbd_server_argv(img, "qcow2"), where=img) as exp:
        before = rss()
        with exp.pipelined_writes(4) as write:
            for i in range(4096):   # 256 MiB in fresh bytearrays, as restore hands them over
                write(bytearray(piece), i * 64 * KiB)
        assert rss() - before < 32 * MiB
        exp.flush()
    assert allocated_data(img, "qcow2") == [(0, 256 * MiB)]


@pytest.mark.parametrize("direct", [False, True], ids=["page-cache", "o-direct"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_pwrite_zero_flush_into_image(tmp_path, fmt, direct):
    """Also unaligned writes with O_DIRECT (qemu-nbd reads, modifies, writes)."""
    img = str(tmp_path / f"disk.{fmt}")
    qemu.create(img, fmt, 16 * MiB)
    expected = bytearray(16 * MiB)
    writes = [(1 * MiB, b"\xab" * (2 * MiB)), (5 * MiB + 512, os.urandom(100_000)),
              (12 * MiB, b"\xcd" * (1 * MiB))]
    with open_command(qemu.nbd_server_argv(img, fmt, direct), where=img) as exp:
        for offset, data in writes:
            exp.pwrite(data, offset)
            expected[offset:offset + len(data)] = data
        exp.zero(2 * MiB, 1 * MiB)
        exp.zero(12 * MiB, 1 * MiB)
        exp.flush()
    expected[2 * MiB:3 * MiB] = bytes(1 * MiB)
    expected[12 * MiB:13 * MiB] = bytes(1 * MiB)
    want = tmp_path / "expected.raw"
    want.write_bytes(expected)
    run("qemu-img", "compare", "-f", fmt, "-F", "raw", img, str(want))
    for start, length in allocated_data(img, fmt):
        for zs in (2 * MiB, 12 * MiB):
            assert start + length <= zs or start >= zs + 1 * MiB, "zeroed range still allocated"


def test_zero_beyond_one_request_unmaps_everything(tmp_path):
    img = str(tmp_path / "disk.raw")
    size = 5 * 1024 * MiB  # NBD write-zeroes lengths are 32-bit: several requests
    qemu.create(img, "raw", size)
    with open_command(qemu.nbd_server_argv(img, "raw"), where=img) as exp:
        exp.pwrite(b"\xab" * 4096, 0)
        exp.pwrite(b"\xab" * 4096, size - 4096)
        exp.zero(0, size)
        exp.flush()
    assert allocated_data(img, "raw") == []


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_zero_ranges_keeps_requests_in_flight_and_zeroes_each_range(tmp_path, fmt):
    """Many small ranges, some in flight at once, and one of several requests."""
    img = str(tmp_path / f"disk.{fmt}")
    size = 2 * 1024 * MiB + 8 * MiB
    qemu.create(img, fmt, size)
    ranges = [(i * 4096 + 512, 512) for i in range(2000)] + [(8 * MiB, size - 8 * MiB)]
    with open_command(qemu.nbd_server_argv(img, fmt), where=img) as exp:
        exp.pwrite(b"\xab" * (8 * MiB), 0)
        exp.pwrite(b"\xcd" * 4096, size - 4096)
        exp.zero_ranges(iter(ranges), 16)
        exp.flush()
    expected = bytearray(b"\xab" * (8 * MiB))
    for offset, length in ranges[:-1]:
        expected[offset:offset + length] = bytes(length)
    assert all(start + length <= 8 * MiB for start, length in allocated_data(img, fmt))
    head = tmp_path / "head.raw"
    run("qemu-img", "dd", "-f", fmt, "-O", "raw", f"if={img}", f"of={head}", "bs=1M",
        "count=8")
    assert head.read_bytes() == expected


def test_server_has_released_the_image_when_the_block_ends(tmp_path):
    img = str(tmp_path / "disk.qcow2")
    qemu.create(img, "qcow2", 64 * MiB)
    # A flatten restore opens the same image again for each layer, and a chain
    # restore reads it next: qemu-nbd (which writes back its cache as it
    # exits) must be gone, and its image lock with it, when the block ends.
    for i in range(1, 6):
        with open_command(qemu.nbd_server_argv(img, "qcow2"), where=img) as exp:
            for mib in range(16):
                exp.pwrite(bytes([i]) * MiB, mib * MiB)
        qemu_io(img, "qcow2", f"read -P {i} 0 16M")
