"""The archive format: names, member names, manifest and summary round trips."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from borg_vm import __version__
from borg_vm.core import archive
from borg_vm.core.archive import (BLOCK_SIZE, FORMAT_VERSION, FULL, INC, PARTIAL_SUFFIX,
                             ArchiveInfo, ArchiveName, DiskRecord, DiskSummary, Manifest,
                             Summary, disk_prefix, is_own_checkpoint, is_partial_of,
                             member_name, new_checkpoint_name, parse_member, snapshot_of,
                             stamp)
from borg_vm.errors import FormatError
from borg_vm.core.extent import DATA, ZERO, Extent

WHEN = datetime(2026, 11, 26, 2, 0, 0, tzinfo=timezone.utc)
SNAP = "20261125T221800Z"
CKPT = "borgvm-20261126T020000Z"


# --- stamps and checkpoint names ------------------------------------------------

def test_stamp_is_utc():
    cet = timezone(timedelta(hours=1))
    assert stamp(datetime(2026, 11, 26, 3, 0, 0, tzinfo=cet)) == "20261126T020000Z"


def test_new_checkpoint_name_unique():
    taken: set[str] = set()
    for _ in range(12):
        name = new_checkpoint_name(WHEN, taken)
        assert name not in taken
        assert is_own_checkpoint(name)
        taken.add(name)
    assert "borgvm-20261126T020000Z" in taken
    assert "borgvm-20261126T020000Z-1" in taken
    assert "borgvm-20261126T020000Z-11" in taken


def test_new_checkpoint_name_free():
    assert new_checkpoint_name(WHEN, {"other"}) == CKPT


@pytest.mark.parametrize("name, own", [
    (CKPT, True),
    (CKPT + "-3", True),
    ("borgvm-2026112T020000Z", False),
    ("borgvm-20261126T020000", False),
    ("borgvm-20261126T020000Z-", False),
    ("x" + CKPT, False),
    (CKPT + "x", False),
    ("20261126T020000Z", False),
    ("manual-checkpoint", False),
])
def test_is_own_checkpoint(name, own):
    assert is_own_checkpoint(name) is own


def test_snapshot_of():
    assert snapshot_of(CKPT) == "20261126T020000Z"
    assert snapshot_of(CKPT + "-2") == "20261126T020000Z-2"


# --- archive names ----------------------------------------------------------------

DOMAINS = ["web01", "web01.example.com", "my vm", "wébserver-ü", "日本語", "a.b.c.d",
           "x." + SNAP + "." + CKPT, "-", "1"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_archive_name_round_trip(domain):
    name = ArchiveName(domain, SNAP, CKPT)
    assert ArchiveName.parse(str(name)) == name
    assert name.partial == str(name) + PARTIAL_SUFFIX


def test_archive_name_layout():
    assert str(ArchiveName("web01", SNAP, CKPT)) == f"web01.{SNAP}.{CKPT}"


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
               min_size=1),
       st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2999, 1, 1),
                    timezones=st.just(timezone.utc)),
       st.integers(0, 20))
def test_archive_name_round_trip_any_domain(domain, when, n):
    checkpoint = new_checkpoint_name(when, {new_checkpoint_name(when, set())} if n else set())
    name = ArchiveName(domain, snapshot_of(checkpoint), checkpoint)
    assert ArchiveName.parse(str(name)) == name


@pytest.mark.parametrize("name", [
    "web01",
    "web01-2026-11-26",
    f"web01.{SNAP}",
    f"web01.{CKPT}",
    f".{SNAP}.{CKPT}",                          # no domain
    f"web01.{SNAP}.borgvm-2026",                # bad checkpoint stamp
    f"web01.{SNAP}.other-20261126T020000Z",     # not our checkpoint prefix
    f"web01.2026.{CKPT}",                       # bad snapshot
    f"web01.{SNAP}.{CKPT}{PARTIAL_SUFFIX}",     # unfinished
    f"web01.{SNAP}.{CKPT}.checkpoint",          # borg's own checkpoint
    f"web01.{SNAP}.{CKPT}x",
])
def test_archive_name_parse_rejects_foreign(name):
    assert ArchiveName.parse(name) is None


def test_archive_name_parse_rejects_trailing_newline():
    # A regex '$' also matches before a final newline; the name must match whole.
    assert ArchiveName.parse(f"web01.{SNAP}.{CKPT}\n") is None


@pytest.mark.parametrize("suffix", ["", ".checkpoint", ".checkpoint.1", ".checkpoint.12"])
def test_is_partial_of(suffix):
    partial = ArchiveName("web.example", SNAP, CKPT).partial + suffix
    assert is_partial_of(partial, "web.example")
    assert not is_partial_of(partial, "web")
    assert not is_partial_of(partial, "example")


@pytest.mark.parametrize("name", [
    f"web.{SNAP}.{CKPT}",                           # final, not partial
    f"web.{SNAP}.{CKPT}.checkpoint",                # borg checkpoint of a final name
    f"web.{SNAP}.{CKPT}{PARTIAL_SUFFIX}.checkpointx",
    f"web.{SNAP}.{CKPT}{PARTIAL_SUFFIX}.checkpoint.",
    f"web{PARTIAL_SUFFIX}",                         # not a borg-vm name under the suffix
    f"other.{SNAP}.{CKPT}{PARTIAL_SUFFIX}",
])
def test_is_partial_of_rejects(name):
    assert not is_partial_of(name, "web")


# --- member names -------------------------------------------------------------------

@pytest.mark.parametrize("target, offset", [("vda", 0), ("sdb", 4 << 20), ("vdz", 2**63 - 1),
                                            ("hda", 0xABCDEF)])
def test_member_name_round_trip(target, offset):
    name = member_name(target, offset)
    assert name.startswith(disk_prefix(target) + "/")
    assert len(name.rsplit("/", 1)[1]) == 16
    assert parse_member(name) == (target, offset)


@pytest.mark.parametrize("name", ["domain.xml", "checkpoint.xml", "manifest.json", "disk/vda",
                                  "disk/vda/", "disk/vda/00000000000000", "disk/vda/sub/0000000000000000",
                                  "disk//0000000000000000", "disk/vda/000000000000000G",
                                  "disk/vda/0000000000000000x", "disk/vda/000000000000000A",
                                  "xdisk/vda/0000000000000000",
                                  "disk/vda/0000000000000000\n"])
def test_parse_member_other_members(name):
    assert parse_member(name) is None


# --- manifest -------------------------------------------------------------------------

def manifest(**over) -> Manifest:
    fields = dict(
        domain="web01.example.com", uuid="9b1c5a5e-3c1e-4c55-9d7e-2a1d0b9c1f00",
        snapshot=SNAP, checkpoint=CKPT, level=INC,
        parent_checkpoint="borgvm-20261125T221800Z",
        parent_archive=f"web01.example.com.{SNAP}.borgvm-20261125T221800Z",
        time="2026-11-26T02:00:00Z",
        disks={
            "vda": DiskRecord(INC, "qcow2", "/var/lib/libvirt/images/web01.qcow2", 1 << 30,
                              (Extent(0, 4096, DATA), Extent(4096, 1 << 20, ZERO),
                               Extent(8 << 20, 65536, DATA)), "ab" * 32),
            "sdb": DiskRecord(FULL, "raw", "/dev/vg/web01-data", 10 << 20, (), "cd" * 32),
        })
    fields.update(over)
    return Manifest(**fields)


def test_manifest_round_trip():
    m = manifest()
    back = Manifest.from_json(m.to_json(), "a")
    assert back == m
    assert back.name == ArchiveName("web01.example.com", SNAP, CKPT)


def test_manifest_round_trip_full_without_parent():
    m = manifest(level=FULL, parent_checkpoint=None, parent_archive=None, block_size=65536)
    assert Manifest.from_json(m.to_json(), "a") == m


def test_manifest_document():
    doc = json.loads(manifest().to_json())
    assert doc["format"] == "borg-vm"
    assert doc["version"] == FORMAT_VERSION == 1
    assert doc["block_size"] == BLOCK_SIZE
    assert doc["borg_vm_version"] == __version__
    assert list(doc["disks"]) == ["sdb", "vda"]
    vda = doc["disks"]["vda"]
    assert vda["extents"] == [[0, 4096, "data"], [4096, 1 << 20, "zero"],
                              [8 << 20, 65536, "data"]]
    assert (vda["data_bytes"], vda["zero_bytes"]) == (4096 + 65536, 1 << 20)


def test_manifest_summary():
    s = manifest().summary()
    assert s.level == INC
    assert s.parent == f"web01.example.com.{SNAP}.borgvm-20261125T221800Z"
    assert s.disks["vda"] == DiskSummary(INC, 1 << 30, "qcow2",
                                         "/var/lib/libvirt/images/web01.qcow2",
                                         4096 + 65536, 1 << 20)
    assert s.disks["sdb"].level == FULL


def _doc():
    return json.loads(manifest().to_json())


def _reject(doc_or_raw, match=None):
    raw = doc_or_raw if isinstance(doc_or_raw, bytes) else json.dumps(doc_or_raw).encode()
    with pytest.raises(FormatError, match=match) as e:
        Manifest.from_json(raw, "web01.x.y")
    assert "web01.x.y" in e.value.message
    assert e.value.exit_code == 2
    return e.value


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_manifest_rejects_unknown_version(version):
    doc = _doc()
    doc["version"] = version
    err = _reject(doc, match="version")
    assert "upgrade" in err.message


def test_manifest_rejects_missing_version():
    doc = _doc()
    del doc["version"]
    _reject(doc)


@pytest.mark.parametrize("fmt", ["virtnbdbackup", None, "Borg-VM"])
def test_manifest_rejects_other_formats(fmt):
    doc = _doc()
    doc["format"] = fmt
    _reject(doc, match="no borg-vm manifest")


@pytest.mark.parametrize("raw", [b"", b"not json", b"\xff\xfe", b"[]", b"null", b"42",
                                 b'"borg-vm"'])
def test_manifest_rejects_garbage(raw):
    _reject(raw)


def test_manifest_not_utf8_is_named_not_repeated():
    """The error names the problem; it does not carry the manifest (up to 64 MiB) along."""
    err = _reject(b'{"format": "borg-vm"' + b"\xff" * 100_000, match="not UTF-8")
    assert len(err.message) < 200


@pytest.mark.parametrize("name, inside", [("disk/vda/0000000000000000", True),
                                          ("disk/vda/junk", True), ("disk/", True),
                                          ("disk", False), ("diskette/x", False),
                                          ("manifest.json", False)])
def test_in_disk_dir(name, inside):
    assert archive.in_disk_dir(name) is inside


def test_small_members_have_limits():
    assert set(archive.SMALL_MEMBERS) == {archive.DOMAIN_XML, archive.CHECKPOINT_XML,
                                          archive.MANIFEST}
    assert archive.MAX_XML_BYTES < archive.MAX_MANIFEST_BYTES <= 64 * 1024 * 1024


def _with_extents(extents, size=None):
    doc = _doc()
    doc["disks"]["vda"]["extents"] = extents
    if size is not None:
        doc["disks"]["vda"]["virtual_size"] = size
    return doc


@pytest.mark.parametrize("extents, size", [
    ([[0, 10, "data"], [5, 10, "data"]], None),        # overlap
    ([[10, 10, "data"], [0, 10, "zero"]], None),       # out of order
    ([[0, 100, "data"]], 50),                          # beyond the disk
    ([[0, 0, "data"]], None),                          # empty
    ([[-1, 10, "data"]], None),                        # negative
    ([[0, 10, "hole"]], None),                         # unknown kind
    ([[0, 10]], None),                                 # short
    ([[0, 10, "data", 1]], None),                      # long
    ([[0, "x", "data"]], None),                        # not a number
    ("0,10,data", None),                               # not a list
    ([None], None),
])
def test_manifest_rejects_bad_extents(extents, size):
    _reject(_with_extents(extents, size))


@pytest.mark.parametrize("path, value", [
    (("level",), "differential"),
    (("disks", "vda", "level"), "partial"),
    (("block_size",), "big"),
    (("disks", "vda", "virtual_size"), None),
    (("disks",), []),
])
def test_manifest_rejects_bad_fields(path, value):
    doc = _doc()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    _reject(doc)


@pytest.mark.parametrize("key", ["domain", "uuid", "snapshot", "checkpoint", "level",
                                 "parent_checkpoint", "parent_archive", "time", "disks",
                                 "block_size"])
def test_manifest_rejects_missing_field(key):
    doc = _doc()
    del doc[key]
    _reject(doc)


def test_manifest_tolerates_missing_borg_vm_version():
    doc = _doc()
    del doc["borg_vm_version"]
    assert Manifest.from_json(json.dumps(doc).encode(), "a").borg_vm_version == "?"


# --- summary (archive comment) -------------------------------------------------------

def test_summary_round_trip():
    s = manifest().summary()
    comment = s.to_comment()
    assert "\n" not in comment
    assert Summary.from_comment(comment, "a") == s


def test_summary_round_trip_full():
    s = manifest(level=FULL, parent_archive=None, parent_checkpoint=None).summary()
    assert Summary.from_comment(s.to_comment(), "a") == s


def test_summary_round_trip_unicode_source():
    s = Summary(FULL, None, "2026-11-26T02:00:00Z", "u",
                {"vda": DiskSummary(FULL, 10, "raw", "/srv/vms/wébserver ü.img", 10, 0)})
    assert Summary.from_comment(s.to_comment(), "a") == s


@pytest.mark.parametrize("comment", [
    "", "a comment a person wrote", "null", "[]", "{}",
    json.dumps({"borg-vm": 2, "level": "full", "parent": None, "time": "t", "uuid": "u",
                "disks": {}}),
    json.dumps({"borg-vm": 1, "level": "weekly", "parent": None, "time": "t", "uuid": "u",
                "disks": {}}),
    json.dumps({"borg-vm": 1, "level": "full", "parent": None, "time": "t", "disks": {}}),
    json.dumps({"borg-vm": 1, "level": "full", "parent": None, "time": "t", "uuid": "u",
                "disks": {"vda": ["full", 10, "raw"]}}),
    json.dumps({"borg-vm": 1, "level": "full", "parent": None, "time": "t", "uuid": "u",
                "disks": {"vda": ["full", "ten", "raw", "/x", 0, 0]}}),
    json.dumps({"borg-vm": 1, "level": "full", "parent": None, "time": "t", "uuid": "u",
                "disks": {"vda": ["weekly", 10, "raw", "/x", 0, 0]}}),
    json.dumps({"borg-vm": 1, "level": "full", "parent": None, "time": "t", "uuid": "u",
                "disks": []}),
])
def test_summary_rejects(comment):
    with pytest.raises(FormatError) as e:
        Summary.from_comment(comment, "web01.x.y")
    assert "web01.x.y" in e.value.message


def test_archive_info_properties():
    s = manifest().summary()
    info = ArchiveInfo(ArchiveName("web01", SNAP, CKPT), s)
    assert info.archive == f"web01.{SNAP}.{CKPT}"
    assert (info.level, info.time) == (INC, "2026-11-26T02:00:00Z")
