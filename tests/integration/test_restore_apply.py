"""restore's write path without libvirt: an archive's data members, exported
by a real borg, written through qemu-nbd into an overlay on older data."""

import hashlib
import os

import pytest

from borg_vm import archive, qemu_img, restore
from borg_vm.errors import BorgError, IntegrityError
from borg_vm.extent import DATA, ZERO, Extent
from borg_vm.nbd_client import open_command
from borg_vm.progress import Progress

from realstack import MiB, import_members, qemu_io, run

SIZE = 16 * MiB
OLD = 0x11
EXTENTS = (Extent(1 * MiB, 64 * 1024, DATA), Extent(2 * MiB, 1 * MiB, ZERO),
           Extent(4 * MiB, 4 * MiB + 100, DATA))


def record(data, sha256=None):
    """Return the DiskRecord of an incremental with EXTENTS holding data."""
    digest = sha256 or hashlib.sha256(b"".join(data)).hexdigest()
    return archive.DiskRecord("inc", "qcow2", "/vms/disk.qcow2", SIZE, EXTENTS, digest)


@pytest.fixture
def layer(tmp_path, make_repo):
    """Return (borg, data, overlay): an archive 'inc' holding vda's data members
    for EXTENTS (and a vdb member), and an empty overlay on a base full of OLD."""
    borg = make_repo()
    data = [os.urandom(e.length) for e in EXTENTS if e.kind == DATA]
    members = [(archive.member_name("vda", e.start), d)
               for e, d in zip([e for e in EXTENTS if e.kind == DATA], data)]
    import_members(borg, "inc", members + [(archive.member_name("vdb", 0), b"other disk")])
    base, overlay = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    qemu_img.create(base, "qcow2", SIZE)
    qemu_io(base, "qcow2", f"write -P {OLD} 0 {SIZE}")
    qemu_img.create(overlay, "qcow2", SIZE, backing=base)
    return borg, data, overlay


def apply(borg, overlay, disk_record):
    with open_command(qemu_img.nbd_server_argv(overlay, "qcow2"), where=overlay) as out:
        restore._apply(borg, "inc", "vda", disk_record, out,
                       Progress("restore", disk_record.data_bytes, False), zeros=True)
        out.flush()


def test_apply_writes_data_and_zeros_over_older_layer(tmp_path, layer):
    borg, data, overlay = layer
    apply(borg, overlay, record(data))
    expected = bytearray([OLD]) * SIZE
    expected[1 * MiB:1 * MiB + len(data[0])] = data[0]
    expected[2 * MiB:3 * MiB] = bytes(1 * MiB)
    expected[4 * MiB:4 * MiB + len(data[1])] = data[1]
    (tmp_path / "expected.raw").write_bytes(expected)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", overlay,
        str(tmp_path / "expected.raw"))


def test_apply_with_wrong_digest_raises_integrity_error(layer):
    borg, data, overlay = layer
    with pytest.raises(IntegrityError, match="sha256 differs"):
        apply(borg, overlay, record(data, sha256="0" * 64))


def test_apply_with_extents_the_members_do_not_cover_raises(layer):
    borg, data, overlay = layer
    more = EXTENTS + (Extent(12 * MiB, 4096, DATA),)
    with pytest.raises(IntegrityError, match="data extents differ"):
        apply(borg, overlay, archive.DiskRecord("inc", "qcow2", "/vms/disk.qcow2", SIZE, more,
                                                record(data).sha256))


def test_apply_of_missing_archive_raises_borg_error(layer):
    borg, data, overlay = layer
    with open_command(qemu_img.nbd_server_argv(overlay, "qcow2"), where=overlay) as out:
        with pytest.raises(BorgError, match="^borg export-tar failed: Archive gone does not exist$"):
            restore._apply(borg, "gone", "vda", record(data), out,
                           Progress("restore", 0, False), zeros=True)
