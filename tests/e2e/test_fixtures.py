"""Fast checks that the e2e helpers themselves tell the truth."""

import pytest

libvirt = pytest.importorskip("libvirt")

from guest import MIB, PREFIX, first_difference  # noqa: E402  (needs libvirt)

DISK = 16 * MIB


def test_first_difference():
    assert first_difference(b"abc", b"abc") is None
    assert first_difference(b"abc", b"abd") == 2
    assert first_difference(b"ab", b"abc") == 2
    assert first_difference(bytes(200000) + b"x", bytes(200001)) == 200000


def test_domain_is_ours_and_paused(make_domain, virt_type):
    d = make_domain([("vda", DISK, "qcow2")], name_suffix="x")
    assert d.name.startswith(PREFIX) and d.name.endswith("-x")
    assert d.dom.isPersistent()
    assert d.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert d.xml().get("type") == virt_type
    assert d.alias("vda") == "virtio-disk0"
    assert d.sizes == {"vda": DISK}
    assert d.disks["vda"].is_file()


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_write_reads_back_at_offset(make_domain, fmt):
    d = make_domain([("vda", DISK, fmt)])
    d.write("vda", 3 * MIB + 123, 5000, 0xAB)  # unaligned on purpose
    d.write("vda", DISK - 512, 512, 0x01)  # last sector
    data = d.read_disk("vda")
    assert data[3 * MIB + 123:3 * MIB + 5123] == b"\xab" * 5000
    assert data[3 * MIB + 122] == 0 and data[3 * MIB + 5123] == 0
    assert data[-512:] == b"\x01" * 512
    assert data.count(0) == DISK - 5512
    assert data == bytes(d.model["vda"])


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_write_zeroes_reads_zeros(make_domain, fmt):
    d = make_domain([("vda", DISK, fmt)])
    d.write("vda", 0, 4 * MIB, 0x5A)
    d.write_zeroes("vda", 1 * MIB + 100, 70000)  # partial clusters
    d.write_zeroes("vda", 2 * MIB, MIB, unmap=True)
    data = d.read_disk("vda")
    assert data[MIB + 100:MIB + 70100] == bytes(70000)
    assert data[2 * MIB:3 * MIB] == bytes(MIB)
    assert data[MIB + 99] == 0x5A and data[MIB + 70100] == 0x5A
    d.assert_matches_model("vda")


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_discard_reads_zeros(make_domain, fmt):
    d = make_domain([("vda", DISK, fmt)])
    d.write("vda", 0, 4 * MIB, 0x77)
    d.flush("vda")
    d.discard("vda", MIB, MIB)  # cluster aligned
    assert d.read_disk("vda")[MIB:2 * MIB] == bytes(MIB)
    d.assert_matches_model("vda")


def test_qcow2_discard_zeroes_only_whole_clusters(make_domain):
    d = make_domain([("vda", DISK, "qcow2")])
    cs = d.cluster_sizes["vda"]
    d.write("vda", 0, 4 * MIB, 0x66)
    d.discard("vda", MIB + 100, 3 * cs)  # covers 2 whole clusters, 2 partial ones
    assert d.discarded_range("vda", MIB + 100, 3 * cs) == (MIB + cs, MIB + 3 * cs)
    data = d.read_disk("vda")
    assert data[MIB:MIB + cs] == b"\x66" * cs
    assert data[MIB + cs:MIB + 3 * cs] == bytes(2 * cs)
    assert data[MIB + 3 * cs] == 0x66
    d.write("vda", DISK - 4 * cs, 4 * cs, 0x67)
    d.discard("vda", DISK - cs - 1000, cs + 1000)  # tail to the end counts as whole
    d.assert_matches_model("vda")
    assert d.read_disk("vda")[-cs - 1000:] == b"\x67" * 1000 + bytes(cs)


def test_discard_without_unmap_is_ignored(make_domain):
    d = make_domain([("vda", DISK, "qcow2")], discard=None)
    d.write("vda", 0, MIB, 0x55)
    d.discard("vda", 0, MIB)
    assert d.read_disk("vda")[:MIB] == b"\x55" * MIB
    d.assert_matches_model("vda")


def test_two_disks_are_independent(make_domain):
    d = make_domain([("vda", DISK, "qcow2"), ("vdb", 8 * MIB, "raw")])
    assert d.alias("vdb") == "virtio-disk1"
    d.write("vda", MIB, 4096, 0x0A)
    d.write("vdb", MIB, 4096, 0x0B)
    d.write_zeroes("vda", MIB, 1024)
    a, b = d.read_disk("vda"), d.read_disk("vdb")
    assert a[MIB:MIB + 4096] == bytes(1024) + b"\x0a" * 3072
    assert b[MIB:MIB + 4096] == b"\x0b" * 4096
    assert len(b) == 8 * MIB
    d.assert_matches_model("vda")
    d.assert_matches_model("vdb")


def test_kill_qemu_and_restart(make_domain):
    d = make_domain([("vda", DISK, "qcow2")])
    d.write("vda", 0, MIB, 0x31)
    old_pid = d.pid()
    d.kill_qemu()
    assert d.dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    d.assert_matches_model("vda")  # readable while shut off
    d.start_paused()
    assert d.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED and d.pid() != old_pid
    d.write("vda", MIB, MIB, 0x32)
    d.assert_matches_model("vda")


def test_kill_without_flush_drops_qcow2_model(make_domain):
    d = make_domain([("vda", DISK, "qcow2"), ("vdb", DISK, "raw")])
    d.write("vda", 0, MIB, 0x41)
    d.write("vdb", 0, MIB, 0x42)
    d.kill_qemu(flush_first=False)
    assert d.model["vda"] is None
    d.assert_matches_model("vdb")  # raw has no metadata to lose


def test_range_and_qemu_io_errors_are_reported(make_domain):
    d = make_domain([("vda", DISK, "qcow2")])
    with pytest.raises(ValueError):
        d.write("vda", DISK - 1, 2, 0)
    with pytest.raises(ValueError):
        d.write("vda", 0, 1, 256)
    with pytest.raises(AssertionError, match='command "bogus" not found'):
        d._qemu_io("vda", "bogus", "never printed")
