"""borg_vm.adapters.disk_sources against a real NBD server laid out like a libvirt
pull-backup job: qemu-nbd on a unix socket, export 'vda', a persistent
bitmap named backup-vda (so its context is the job's
qemu:dirty-bitmap:backup-vda)."""

import subprocess

from realstack import KiB, MiB, qemu_io, run

from borg_vm.adapters import qemu
from borg_vm.adapters.disk_sources import ImageSource, PullBackupSource
from borg_vm.core.extent import STATE_DIRTY, STATE_ZERO

GRANULARITY = 64 * KiB


def _image(tmp_path):
    img = tmp_path / "disk.qcow2"
    qemu.create(str(img), "qcow2", 16 * MiB)
    qemu_io(img, "qcow2", "write -P 0x11 0 1M")
    run("qemu-img", "bitmap", "--add", str(img), "backup-vda")
    qemu_io(img, "qcow2", "write -P 0x22 4M 4k")
    return img


def test_full_map_has_allocation_and_no_dirty_runs(tmp_path, qemu_nbd_socket):
    source = PullBackupSource(qemu_nbd_socket(str(_image(tmp_path)), "-r", "-f", "qcow2",
                                              "-B", "backup-vda"))
    m = source.extent_map("vda", incremental=False)
    assert m.size == 16 * MiB and m.dirty is None
    assert [(r.start, r.length) for r in m.allocation if not r.flags & STATE_ZERO] == [
        (0, 1 * MiB), (4 * MiB, 4 * KiB)]


def test_incremental_map_has_the_dirty_runs(tmp_path, qemu_nbd_socket):
    source = PullBackupSource(qemu_nbd_socket(str(_image(tmp_path)), "-r", "-f", "qcow2",
                                              "-B", "backup-vda"))
    m = source.extent_map("vda", incremental=True)
    assert [(r.start, r.length) for r in m.dirty if r.flags & STATE_DIRTY] == [
        (4 * MiB, GRANULARITY)]
    # Allocation is asked for only where it is needed: the dirty cluster (its
    # 4 KiB written, the rest zero or data as the host file system says).
    assert (m.allocation[0].start, m.allocation[-1].end) == (4 * MiB, 4 * MiB + GRANULARITY)
    assert m.allocation[0].length >= 4 * KiB and not m.allocation[0].flags & STATE_ZERO


def test_reads_yield_the_requests_in_order(tmp_path, qemu_nbd_socket):
    source = PullBackupSource(qemu_nbd_socket(str(_image(tmp_path)), "-r", "-f", "qcow2"))
    requests = [(0, 512 * KiB), (4 * MiB, 4 * KiB), (512 * KiB, 512 * KiB)]
    with source.reads("vda", requests, hold=1) as reads:
        got = [(offset, bytes(data)) for offset, data in reads]
    assert [o for o, _ in got] == [0, 4 * MiB, 512 * KiB]
    assert got[0][1] == b"\x11" * (512 * KiB) and got[1][1] == b"\x22" * (4 * KiB)
    assert got[2][1] == b"\x11" * (512 * KiB)


def test_image_source_reads_merged_bitmaps_and_holds_the_lock(tmp_path):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qemu.create(str(base), "qcow2", 8 * MiB)
    qemu_io(base, "qcow2", "write -P 1 0 1M")
    qemu.bitmap_add(str(base), "cp1")
    qemu_io(base, "qcow2", "write -P 2 2M 64k")           # before the "snapshot"
    qemu.create(str(top), "qcow2", 8 * MiB, backing=str(base))
    qemu.bitmap_add(str(top), "cp1")
    qemu_io(top, "qcow2", "write -P 3 4M 64k")            # after it
    qemu.bitmap_add(str(top), "merged", disabled=True)
    for layer in (top, base):
        qemu.bitmap_merge(str(top), "merged", "cp1", str(layer), "qcow2")
    with ImageSource({"vda": (str(top), "qcow2", "merged")}) as source:
        m = source.extent_map("vda", incremental=True)
        assert [(r.start, r.length) for r in m.dirty if r.flags & STATE_DIRTY] == [
            (2 * MiB, GRANULARITY), (4 * MiB, GRANULARITY)]
        # While the source is open, nothing can open the image for writing.
        proc = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write 0 512", str(top)],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and "lock" in proc.stderr
        with source.reads("vda", [(2 * MiB, 64 * KiB), (4 * MiB, 64 * KiB)], hold=1) as reads:
            assert [bytes(data[:1]) for _, data in reads] == [b"\x02", b"\x03"]
    qemu_io(top, "qcow2", "write 0 512")                  # and afterwards it can
