"""borg_vm.adapters.sources against a real NBD server laid out like a libvirt
pull-backup job: qemu-nbd on a unix socket, export 'vda', a persistent
bitmap named backup-vda (so its context is the job's
qemu:dirty-bitmap:backup-vda)."""

from borg_vm.adapters import qemu
from borg_vm.adapters.sources import PullBackupSource
from borg_vm.core.extent import STATE_DIRTY, STATE_ZERO

from realstack import KiB, MiB, qemu_io, run

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


def test_reads_yield_the_requests_in_order(tmp_path, qemu_nbd_socket):
    source = PullBackupSource(qemu_nbd_socket(str(_image(tmp_path)), "-r", "-f", "qcow2"))
    requests = [(0, 512 * KiB), (4 * MiB, 4 * KiB), (512 * KiB, 512 * KiB)]
    with source.reads("vda", requests, hold=1) as reads:
        got = [(offset, bytes(data)) for offset, data in reads]
    assert [o for o, _ in got] == [0, 4 * MiB, 512 * KiB]
    assert got[0][1] == b"\x11" * (512 * KiB) and got[1][1] == b"\x22" * (4 * KiB)
    assert got[2][1] == b"\x11" * (512 * KiB)
