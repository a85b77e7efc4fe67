"""restore's write path without libvirt: an archive's data members, read back
from a real borg both ways (export-tar; list + extract --stdout), written through
qemu-nbd into an overlay on older data, or straight into a raw image."""

import hashlib
import io
import os
import subprocess
import time

import pytest
from realstack import MiB, import_members, qemu_io, qemu_map, run

from borg_vm.adapters import qemu
from borg_vm.adapters.borg import BRIEF_LOCK_WAIT, Item
from borg_vm.core.extent import DATA, ZERO, Extent
from borg_vm.errors import BorgError, FormatError, IntegrityError
from borg_vm.format import names as fmt
from borg_vm.format import reader as members
from borg_vm.format.manifest import DiskRecord, Manifest
from borg_vm.format.summary import ArchiveInfo
from borg_vm.format.tarstream import TarFormatError
from borg_vm.progress import Progress
from borg_vm.services.restore import images as apply_action

SIZE = 16 * MiB
OLD = 0x11
EXTENTS = (Extent(1 * MiB, 64 * 1024, DATA), Extent(2 * MiB, 1 * MiB, ZERO),
           Extent(4 * MiB, 4 * MiB + 100, DATA))


def record(data, sha256=None, extents=EXTENTS):
    """Return the DiskRecord of an incremental with extents holding data."""
    digest = sha256 or hashlib.sha256(b"".join(data)).hexdigest()
    return DiskRecord("inc", "qcow2", "/vms/disk.qcow2", SIZE, extents, digest)


NO_XML = hashlib.sha256(b"").hexdigest()   # the archives hold no XML members


def manifest(vda):
    """Return a manifest naming vda's record (and vdb's, which the test leaves alone)."""
    vdb = DiskRecord("inc", "qcow2", "/vms/b.qcow2", SIZE, (Extent(0, 10, DATA),),
                             hashlib.sha256(b"other disk").hexdigest())
    return Manifest(domain="dom", uuid="u", snapshot="S", checkpoint="borgvm-C",
                            level="inc", parent_checkpoint="borgvm-B", parent_archive="x",
                            time="2026-11-25T00:00:00Z", disks={"vda": vda, "vdb": vdb},
                            domain_xml_sha256=NO_XML, checkpoint_xml_sha256=NO_XML)


@pytest.fixture(params=["export-tar", "extract"])
def way(request, monkeypatch):
    """Read archives back with export-tar, or with list + extract --stdout whatever
    their size."""
    if request.param == "extract":
        monkeypatch.setattr(members, "EXTRACT_FROM", 0)
    return request.param


@pytest.fixture
def layer(tmp_path, make_repo, way):
    """Return (make_archive, data, overlay): make_archive(vda_record) writes an archive
    holding vda's data members for EXTENTS, a vdb member and a manifest with
    that record; overlay is an empty overlay on a base full of OLD."""
    borg = make_repo()
    data = [os.urandom(e.length) for e in EXTENTS if e.kind == DATA]
    members = [(fmt.member_name("vda", e.start), d)
               for e, d in zip([e for e in EXTENTS if e.kind == DATA], data)]

    def make_archive(vda):
        m = manifest(vda)
        import_members(borg, str(m.name),
                       members + [(fmt.member_name("vdb", 0), b"other disk"),
                                  (fmt.MANIFEST, m.to_json())],
                       comment=m.summary().to_comment())
        return borg, ArchiveInfo(m.name, m.summary())

    base, overlay = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    qemu.create(base, "qcow2", SIZE)
    qemu_io(base, "qcow2", f"write -P {OLD} 0 {SIZE}")
    qemu.create(overlay, "qcow2", SIZE, backing=base)
    return make_archive, data, overlay


def apply_one(borg, info, layers, progress):
    """Read one archive back (as restore does) and apply it to layers."""
    with members.read_ahead(borg, [apply_action.read_for(info, layers)]) as found:
        return apply_action.apply_archive(next(found), info, layers, progress)


def apply(make_archive, overlay, disk_record):
    borg, info = make_archive(disk_record)
    apply_one(borg, info, {("vda", 0): apply_action.Layer(overlay, "qcow2", zeros=True)},
              Progress("restore", disk_record.data_bytes, False))


def test_apply_writes_data_and_zeros_over_older_layer(tmp_path, layer):
    make_archive, data, overlay = layer
    apply(make_archive, overlay, record(data))
    expected = bytearray([OLD]) * SIZE
    expected[1 * MiB:1 * MiB + len(data[0])] = data[0]
    expected[2 * MiB:3 * MiB] = bytes(1 * MiB)
    expected[4 * MiB:4 * MiB + len(data[1])] = data[1]
    (tmp_path / "expected.raw").write_bytes(expected)
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", overlay,
        str(tmp_path / "expected.raw"))


def test_apply_with_wrong_digest_raises_integrity_error(layer):
    make_archive, data, overlay = layer
    with pytest.raises(IntegrityError, match="sha256 differs"):
        apply(make_archive, overlay, record(data, sha256="0" * 64))


def test_apply_with_extents_the_members_do_not_cover_raises(layer):
    make_archive, data, overlay = layer
    more = EXTENTS + (Extent(12 * MiB, 4096, DATA),)
    with pytest.raises(IntegrityError, match="data extents differ"):
        apply(make_archive, overlay, record(data, record(data).sha256, more))


def test_apply_of_missing_archive_raises_borg_error(layer, way):
    make_archive, data, overlay = layer
    borg, info = make_archive(record(data))
    gone = ArchiveInfo(fmt.ArchiveName("gone", "S", "borgvm-C"), info.summary)
    command = "export-tar" if way == "export-tar" else "extract"
    with pytest.raises(BorgError,
                       match=f"^borg {command} of gone.S.borgvm-C failed: Archive gone.S.borgvm-C does not exist$"):
        apply_one(borg, gone, {("vda", 0): apply_action.Layer(overlay, "qcow2", zeros=True)},
                  Progress("restore", 0, False))


def expected_over_old(data):
    expected = bytearray([OLD]) * SIZE
    expected[1 * MiB:1 * MiB + len(data[0])] = data[0]
    expected[2 * MiB:3 * MiB] = bytes(1 * MiB)
    expected[4 * MiB:4 * MiB + len(data[1])] = data[1]
    return bytes(expected)


def test_apply_into_raw_image_writes_data_and_punches_zeros(tmp_path, layer):
    """A raw image is written in place (O_DIRECT for the aligned 4 MiB head of the
    second extent; through the page cache for the 64 KiB one and the 100-byte
    tail), its zero extent becomes a hole."""
    make_archive, data, _overlay = layer
    raw = str(tmp_path / "img.raw")
    qemu.create(raw, "raw", SIZE)
    qemu_io(raw, "raw", f"write -P {OLD} 0 {SIZE}")
    borg, info = make_archive(record(data))
    apply_one(borg, info, {("vda", 0): apply_action.Layer(raw, "raw", True)},
              Progress("restore", 0, False))
    with open(raw, "rb") as f:
        assert f.read() == expected_over_old(data)
    holes = [(e["start"], e["length"]) for e in qemu_map(raw, "raw") if not e["data"]]
    assert (2 * MiB, 1 * MiB) in holes


def test_apply_into_fresh_raw_image_leaves_unwritten_ranges_unallocated(tmp_path, layer):
    make_archive, data, _overlay = layer
    raw = str(tmp_path / "img.raw")
    qemu.create(raw, "raw", SIZE)
    borg, info = make_archive(record(data))
    apply_one(borg, info, {("vda", 0): apply_action.Layer(raw, "raw", False)},
              Progress("restore", 0, False))
    allocated = [(e["start"], e["length"]) for e in qemu_map(raw, "raw") if e["data"]]
    # the 100-byte tail allocates its whole page
    assert allocated == [(1 * MiB, 64 * 1024), (4 * MiB, 4 * MiB + 4096)]


def test_raw_image_with_wrong_digest_raises_integrity_error(tmp_path, layer):
    make_archive, data, _overlay = layer
    raw = str(tmp_path / "img.raw")
    qemu.create(raw, "raw", SIZE)
    borg, info = make_archive(record(data, sha256="0" * 64))
    with pytest.raises(IntegrityError, match="sha256 differs"):
        apply_one(borg, info, {("vda", 0): apply_action.Layer(raw, "raw", True)},
                  Progress("restore", 0, False))


# --- list + extract --stdout: the stream is cut by the listed sizes ---------------------

def listed(*items):
    return [Item(path, kind, size) for path, kind, size in items]


def test_listed_members_cut_the_stream_by_their_sizes():
    """Items that are not regular files come out too (pieces() refuses them under
    the format's names, as from a tar stream), without contents (a symbolic link's
    size is its target's length)."""
    src = io.BytesIO(b"abcdefgh")
    got = [(m.name, m.regular, m.read()) for m in members._listed(
        src, listed(("d", "d", 0), ("a", "-", 3), ("link", "l", 11), ("b", "-", 5)), "A")]
    assert got == [("d", False, b""), ("a", True, b"abc"), ("link", False, b""),
                   ("b", True, b"defgh")]


def test_listed_members_skip_what_is_not_read():
    items = listed(("a", "-", 3), ("b", "-", 5))
    assert [m.name for m in members._listed(io.BytesIO(b"abcdefgh"), items, "A")] == ["a", "b"]


@pytest.mark.parametrize("stream, items, why", [
    (b"abcdefghi", [("a", "-", 3), ("b", "-", 5)], "wrote more than its members"),
    (b"abcdefg", [("a", "-", 3), ("b", "-", 5)], "ended 1 bytes early"),
    (b"abcdefgh", [("a", "-", 3), ("b", "h", 5)], "'b' of type 'h' and size 5"),
    (b"abc", [("a", "-", -3)], "'a' of type '-' and size -3"),
])
def test_listed_members_that_do_not_match_the_stream_are_damage(stream, items, why):
    with pytest.raises((FormatError, TarFormatError), match=why):
        for m in members._listed(io.BytesIO(stream), listed(*items), "A"):
            m.read()


# --- read_ahead: the next archive's borg starts while one is read ------------------------

def borg_children() -> set[int]:
    """Return the pids of this process's child processes (borg: no other children here)."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def test_read_ahead_starts_each_borg_one_read_early_and_stops_them_when_left(make_repo):
    borg = make_repo()
    for i in range(3):
        import_members(borg, f"a{i}", [("x", b"%d" % i)])
    before = borg_children()
    with pytest.raises(RuntimeError, match="stop"):
        with members.read_ahead(borg, [members.Read(f"a{i}", ()) for i in range(3)]) as found:
            assert len(borg_children() - before) == 1          # a0's borg, at once
            with next(found) as a0:
                assert len(borg_children() - before) == 2      # and a1's
                assert [(m.name, m.read()) for m in a0] == [("x", b"0")]
            assert len(borg_children() - before) == 1          # a0's is done
            next(found)
            assert len(borg_children() - before) == 2          # a1's and a2's
            raise RuntimeError("stop")
    assert borg_children() == before


LOCK_TAKEN_SECONDS = 30


def test_read_ahead_waits_for_a_repository_locked_longer_than_the_brief_wait(make_repo):
    """Borgs started beside each other wait only BRIEF_LOCK_WAIT; one that finds the
    repository locked longer (another run's borg) runs again with the full wait."""
    borg = make_repo()
    import_members(borg, "a0", [("x", b"0")])
    borg.lock_wait = 30   # polled every 3 s (borg polls every tenth of the wait)
    env = dict(os.environ, BORG_PASSPHRASE="")
    holder = subprocess.Popen([borg.executable, "with-lock", borg.repo, "sleep",
                               str(3 * BRIEF_LOCK_WAIT)], env=env)
    try:
        deadline = time.monotonic() + LOCK_TAKEN_SECONDS
        while not os.path.exists(os.path.join(borg.repo, "lock.exclusive")):
            assert holder.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.01)
        started = time.monotonic()
        with members.read_ahead(borg, [members.Read("a0", ())]) as found, next(found) as a0:
            assert [(m.name, m.read()) for m in a0] == [("x", b"0")]
        assert holder.poll() == 0   # it waited for the lock, past the brief wait
        assert time.monotonic() - started > BRIEF_LOCK_WAIT
    finally:
        holder.wait()
