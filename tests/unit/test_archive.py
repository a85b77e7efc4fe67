"""The archive format: names, member names, manifest and summary round trips."""

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_vm import __version__
from borg_vm.core.extent import DATA, SECTOR, ZERO, Extent, max_extents
from borg_vm.errors import FormatError
from borg_vm.format import names as fmt
from borg_vm.format.manifest import DiskRecord, LayerRecord, Manifest, SealedRecord
from borg_vm.format.names import (
    BLOCK_SIZE,
    FORMAT_VERSION,
    MAX_VIRTUAL_SIZE,
    PARTIAL_SUFFIX,
    ArchiveName,
    Level,
    disk_prefix,
    is_own_checkpoint,
    is_partial_of,
    member_name,
    new_checkpoint_name,
    parse_member,
    parse_sealed_member,
    sealed_member_name,
    sealed_prefix,
    stamp,
)
from borg_vm.format.summary import ArchiveInfo, DiskSummary, Summary

WHEN = datetime(2026, 11, 26, 2, 0, 0, tzinfo=UTC)
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


def test_archive_name_for_a_layer_escapes_its_name():
    name = ArchiveName.for_layer("web01.example.com", "pre-upgrade.1 (db)", CKPT)
    assert str(name) == f"web01.example.com.pre-upgrade%2E1%20%28db%29.{CKPT}"
    assert ArchiveName.parse(str(name)) == name
    assert name.snapshot_name == "pre-upgrade.1 (db)"
    # version 1 wrote the chain's start time there: still a name, read as is
    assert ArchiveName.parse(f"web01.{SNAP}.{CKPT}").snapshot_name == SNAP


# --- archive names ----------------------------------------------------------------

DOMAINS = ["web01", "web01.example.com", "my vm", "wébserver-ü", "日本語", "a.b.c.d",
           "x." + SNAP + "." + CKPT, "-", "1"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_archive_name_round_trip(domain):
    name = ArchiveName(domain, SNAP, CKPT)
    assert ArchiveName.parse(str(name)) == name


def test_archive_name_layout():
    assert str(ArchiveName("web01", SNAP, CKPT)) == f"web01.{SNAP}.{CKPT}"


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
               min_size=1),
       st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2999, 1, 1),
                    timezones=st.just(UTC)),
       st.integers(0, 20), st.text(min_size=1))
def test_archive_name_round_trip_any_domain(domain, when, n, layer):
    checkpoint = new_checkpoint_name(when, {new_checkpoint_name(when, set())} if n else set())
    name = ArchiveName.for_layer(domain, layer, checkpoint)
    assert ArchiveName.parse(str(name)) == name
    assert name.snapshot_name == layer


@pytest.mark.parametrize("name", [
    "web01",
    "web01-2026-11-26",
    f"web01.{SNAP}",
    f"web01.{CKPT}",
    f".{SNAP}.{CKPT}",                          # no domain
    f"web01.{SNAP}.borgvm-2026",                # bad checkpoint stamp
    f"web01.{SNAP}.other-20261126T020000Z",     # not our checkpoint prefix
    f"web01.a%zz.{CKPT}",                       # bad escape in the snapshot
    f"web01.a b.{CKPT}",                        # a snapshot name not escaped
    f"web01.%2e.{CKPT}",                        # lower-case escape: not what escape() writes
    f"web01.{SNAP}.{CKPT}{PARTIAL_SUFFIX}",     # unfinished
    f"web01.{SNAP}.{CKPT}.checkpoint",          # borg's own checkpoint
    f"web01.{SNAP}.{CKPT}x",
])
def test_archive_name_parse_rejects_foreign(name):
    assert ArchiveName.parse(name) is None


def test_archive_name_parse_rejects_trailing_newline():
    # A regex '$' also matches before a final newline; the name must match whole.
    assert ArchiveName.parse(f"web01.{SNAP}.{CKPT}\n") is None


@pytest.mark.parametrize("suffix", [PARTIAL_SUFFIX, ".checkpoint", ".checkpoint.1", ".checkpoint.12",
                                    f"{PARTIAL_SUFFIX}.checkpoint", f"{PARTIAL_SUFFIX}.checkpoint.3"])
def test_is_partial_of(suffix):
    """Borg's checkpoints of a run's name, and older borg-vm's partial names and theirs."""
    partial = str(ArchiveName("web.example", SNAP, CKPT)) + suffix
    assert is_partial_of(partial, "web.example")
    assert not is_partial_of(partial, "web")
    assert not is_partial_of(partial, "example")


@pytest.mark.parametrize("name", [
    f"web.{SNAP}.{CKPT}",                           # final, not partial
    f"web.{SNAP}.{CKPT}.checkpointx",
    f"web.{SNAP}.{CKPT}.checkpoint.",
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
        snapshot=SNAP, checkpoint=CKPT, level=Level.INC,
        parent_checkpoint="borgvm-20261125T221800Z",
        parent_archive=f"web01.example.com.{SNAP}.borgvm-20261125T221800Z",
        time="2026-11-26T02:00:00Z", parent_id="12" * 32,
        domain_xml_sha256="34" * 32, checkpoint_xml_sha256="56" * 32,
        disks={
            "vda": DiskRecord(Level.INC, "qcow2", "/var/lib/libvirt/images/web01.S2.qcow2", 1 << 30,
                              (Extent(0, 4096, DATA), Extent(4096, 1 << 20, ZERO),
                               Extent(8 << 20, 65536, DATA)), "ab" * 32,
                              layers=(LayerRecord("S2", "/var/lib/libvirt/images/web01.S2.qcow2",
                                                  "qcow2"),
                                      LayerRecord("base", "/var/lib/libvirt/images/web01.qcow2",
                                                  "qcow2")),
                              sealed=(SealedRecord(1, Level.INC, (Extent(0, 65536, DATA),
                                                            Extent(1 << 20, 65536, ZERO)),
                                                   "ef" * 32),)),
            "sdb": DiskRecord(Level.FULL, "raw", "/dev/vg/web01-data", 10 << 20, (), "cd" * 32,
                              layers=(LayerRecord("base", "/dev/vg/web01-data", "raw"),)),
        })
    fields.update(over)
    return Manifest(**fields)


def test_manifest_round_trip():
    m = manifest()
    back = Manifest.from_json(m.to_json(), "a")
    assert back == m
    assert back.name == ArchiveName("web01.example.com", SNAP, CKPT)


def test_manifest_round_trip_full_without_parent():
    m = manifest(level=Level.FULL, parent_checkpoint=None, parent_archive=None, block_size=65536)
    assert Manifest.from_json(m.to_json(), "a") == m


def test_manifest_document():
    doc = json.loads(manifest().to_json())
    assert doc["format"] == "borg-vm"
    assert doc["version"] == FORMAT_VERSION == 5
    assert doc["parent_id"] == "12" * 32 and doc["auth"] is None
    assert doc["block_size"] == BLOCK_SIZE
    assert doc["borg_vm_version"] == __version__
    assert list(doc["disks"]) == ["sdb", "vda"]
    vda = doc["disks"]["vda"]
    assert vda["extents"] == [[0, 4096, "data"], [4096, 1 << 20, "zero"],
                              [8 << 20, 65536, "data"]]
    assert (vda["data_bytes"], vda["zero_bytes"]) == (4096 + 65536, 1 << 20)


def test_manifest_summary():
    s = manifest().summary()
    assert s.level == Level.INC
    assert s.parent == f"web01.example.com.{SNAP}.borgvm-20261125T221800Z"
    assert s.disks["vda"] == DiskSummary(Level.INC, 1 << 30, "qcow2",
                                         "/var/lib/libvirt/images/web01.S2.qcow2",
                                         4096 + 65536, 1 << 20)
    assert s.disks["sdb"].level == Level.FULL


def _doc():
    return json.loads(manifest().to_json())


def _reject(doc_or_raw, match=None):
    raw = doc_or_raw if isinstance(doc_or_raw, bytes) else json.dumps(doc_or_raw).encode()
    with pytest.raises(FormatError, match=match) as e:
        Manifest.from_json(raw, "web01.x.y")
    assert "web01.x.y" in e.value.message
    assert e.value.exit_code == 2
    return e.value


@pytest.mark.parametrize("version", [0, 8, "1", None, True])
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
    err = _reject(b'{"format": "borg-vm"' + b"\xff" * 100_000, match="can't decode byte 0xff")
    assert len(err.message) < 200


@pytest.mark.parametrize("name, inside", [("disk/vda/0000000000000000", True),
                                          ("disk/vda/junk", True), ("disk/", True),
                                          ("disk", False), ("diskette/x", False),
                                          ("manifest.json", False)])
def test_in_disk_dir(name, inside):
    assert fmt.in_disk_dir(name) is inside


def test_small_members_have_limits():
    assert set(fmt.SMALL_MEMBERS) == {fmt.DOMAIN_XML, fmt.CHECKPOINT_XML,
                                          fmt.MANIFEST, "state/nvram", "state/tpm"}
    assert fmt.MAX_XML_BYTES < fmt.MAX_MANIFEST_BYTES <= 64 * 1024 * 1024
    assert fmt.SMALL_MEMBERS["state/tpm"] < fmt.SMALL_MEMBERS["state/nvram"] \
        <= 64 * 1024 * 1024


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


@pytest.mark.parametrize("size", [SECTOR, 100 * SECTOR, 100 * SECTOR + 7])
def test_manifest_lists_at_most_one_extent_a_sector_and_a_tail(size):
    """Issue 20: a hostile manifest's millions of extents are refused unless the
    disk's size allows them (extent.max_extents)."""
    most = max_extents(size)
    extents = [[i, 1, "zero"] for i in range(most)]
    doc = _with_extents(extents, size)
    doc["disks"]["vda"]["frozen"] = []
    m = Manifest.from_json(json.dumps(doc).encode(), "a")
    assert len(m.disks["vda"].extents) == most
    doc["disks"]["vda"]["extents"].append([most, 1, "data"])
    _reject(doc, match=f"{most + 1} extents on a disk of {size} bytes")


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


# --- authentication codes (version 4) ---------------------------------------------

KEY = b"k" * 32
OTHER = b"o" * 32


def test_a_signed_manifest_carries_a_code_only_its_key_and_name_make():
    m = manifest().signed(KEY)
    back = Manifest.from_json(m.to_json(), "a")
    assert back.code_problem(KEY) is None
    assert back.code_problem(OTHER) == "its manifest's authentication code is wrong"
    moved = replace(back, checkpoint="borgvm-20261126T020000Z-1")
    assert moved.code_problem(KEY) == "its manifest's authentication code is wrong"


@pytest.mark.parametrize("change", [
    {"parent_id": "99" * 32}, {"time": "2099-01-01T00:00:00Z"}, {"domain_xml_sha256": "00" * 32},
    {"level": Level.FULL}, {"uuid": "x"}])
def test_a_manifest_changed_after_signing_fails(change):
    m = replace(manifest().signed(KEY), **change)
    assert m.code_problem(KEY) == "its manifest's authentication code is wrong"


def test_an_unsigned_or_older_manifest_has_no_code():
    assert manifest().code_problem(KEY) == "its manifest carries no authentication code"
    assert replace(manifest().signed(KEY), version=3).code_problem(KEY) is not None


def test_a_manifest_records_the_digests_of_its_xml_members():
    xml = b"<domain/>"
    m = manifest(domain_xml_sha256=hashlib.sha256(xml).hexdigest())
    assert m.file_problem("domain.xml", xml) is None
    assert "differs" in m.file_problem("domain.xml", b"<domain><x/></domain>")
    assert replace(m, version=3).file_problem("domain.xml", b"anything") is None


def test_a_signed_summary_is_valid_for_its_archive_only():
    s = manifest().summary().signed(KEY, "web01.base.borgvm-20261126T020000Z")
    back = Summary.from_comment(s.to_comment(), "a")
    assert back.auth == s.auth and back.parent_id == "12" * 32
    assert back.code_valid(KEY, "web01.base.borgvm-20261126T020000Z")
    assert not back.code_valid(OTHER, "web01.base.borgvm-20261126T020000Z")
    assert not back.code_valid(KEY, "web01.base.borgvm-20261127T020000Z")
    assert not replace(back, time="2099-01-01T00:00:00Z").code_valid(
        KEY, "web01.base.borgvm-20261126T020000Z")


@pytest.mark.parametrize("bad", [["x", "y"], ["ab" * 8], "ab", ["AB" * 8, "cd" * 32]])
def test_a_malformed_code_is_refused(bad):
    doc = json.loads(manifest().summary().to_comment())
    doc["auth"] = bad
    with pytest.raises(FormatError, match="auth"):
        Summary.from_comment(json.dumps(doc), "a")


def test_a_malformed_parent_id_is_refused():
    doc = json.loads(manifest().summary().to_comment())
    doc["parent_id"] = "web01.base.borgvm-20261125T020000Z"
    with pytest.raises(FormatError, match="parent_id"):
        Summary.from_comment(json.dumps(doc), "a")


# --- summary (archive comment) -------------------------------------------------------

def test_summary_round_trip():
    s = manifest().summary()
    comment = s.to_comment()
    assert "\n" not in comment
    assert Summary.from_comment(comment, "a") == s


def test_summary_round_trip_full():
    s = manifest(level=Level.FULL, parent_archive=None, parent_checkpoint=None).summary()
    assert Summary.from_comment(s.to_comment(), "a") == s


def test_summary_round_trip_unicode_source():
    s = Summary(Level.FULL, None, "2026-11-26T02:00:00Z", "u",
                {"vda": DiskSummary(Level.FULL, 10, "raw", "/srv/vms/wébserver ü.img", 10, 0)})
    assert Summary.from_comment(s.to_comment(), "a") == s


@pytest.mark.parametrize("comment", [
    "", "a comment a person wrote", "null", "[]", "{}",
    json.dumps({"borg-vm": 3, "level": "full", "parent": None, "time": "t", "uuid": "u",
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
    assert (info.level, info.time) == (Level.INC, "2026-11-26T02:00:00Z")


# --- hostile documents: every field typed (issue #13 B1, R5) -------------------------

def _comment(**over):
    doc = json.loads(manifest().summary().to_comment())
    doc.update(over)
    return json.dumps(doc)


@pytest.mark.parametrize("over", [
    {"time": 5}, {"time": None}, {"time": "yesterday"}, {"time": "2026-11-26T02:00:00Z\x1b[2J"},
    {"parent": 123}, {"parent": [1]}, {"parent": {"a": 1}}, {"level": 1}, {"level": None},
    {"uuid": 7}, {"uuid": None}, {"borg-vm": True}, {"borg-vm": "1"}, {"disks": None},
    {"disks": {"vda": ["full", True, "raw", "/x", 0, 0]}},
    {"disks": {"vda": ["full", 10.0, "raw", "/x", 0, 0]}},
    {"disks": {"vda": ["full", -1, "raw", "/x", 0, 0]}},
    {"disks": {"vda": ["full", 0, "raw", "/x", 0, 0]}},
    {"disks": {"vda": ["full", 1 << 50, "qcow2", "/x", 0, 0]}},          # 1 PiB
    {"disks": {"vda": ["full", 10, 5, "/x", 0, 0]}},
    {"disks": {"vda": ["full", 10, "raw", None, 0, 0]}},
    {"disks": {"vda": ["full", 10, "raw", "/x", -1, 0]}},
    {"disks": {"vda": ["full", 10, "raw", "/x", 0, 11]}},
    {"disks": {"vda": "full"}}, {"disks": {"../x": ["full", 10, "raw", "/x", 0, 0]}},
])
def test_summary_rejects_badly_typed_fields(over):
    with pytest.raises(FormatError, match="bad archive comment") as e:
        Summary.from_comment(_comment(**over), "web01.x.y")
    assert "web01.x.y" in e.value.message


@pytest.mark.parametrize("path, value", [
    (("time",), 5), (("time",), "noon"), (("domain",), 1), (("uuid",), None),
    (("snapshot",), []), (("checkpoint",), 3), (("parent_archive",), 123),
    (("parent_archive",), [1]), (("parent_checkpoint",), {}), (("level",), True),
    (("block_size",), True), (("block_size",), 65536.0), (("block_size",), 3000),
    (("block_size",), 0), (("block_size",), -65536), (("borg_vm_version",), 1),
    (("disks", "vda", "virtual_size"), -1), (("disks", "vda", "virtual_size"), 1 << 50),
    (("disks", "vda", "virtual_size"), True), (("disks", "vda", "virtual_size"), "1073741824"),
    (("disks", "vda", "format"), 2), (("disks", "vda", "source"), None),
    (("disks", "vda", "sha256"), "xyz"), (("disks", "vda", "sha256"), None),
    (("disks", "vda", "sha256"), "AB" * 32), (("disks", "vda"), []),
    (("disks", "vda", "extents"), [[0, True, "data"]]),
    (("disks", "vda", "extents"), [[0.0, 10, "data"]]),
    (("disks", "vda", "extents"), [[0, 10, 1]]),
])
def test_manifest_rejects_badly_typed_fields(path, value):
    doc = _doc()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    _reject(doc)


def test_largest_virtual_size_is_accepted():
    from borg_vm.format.summary import Summary
    assert Summary.from_comment(_comment(disks={"vda": ["full", MAX_VIRTUAL_SIZE, "qcow2",
                                                        "/x", 0, 0]}), "a")
    with pytest.raises(FormatError):
        Summary.from_comment(_comment(disks={"vda": ["full", MAX_VIRTUAL_SIZE + 1, "qcow2",
                                                     "/x", 0, 0]}), "a")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=6)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=6), max_leaves=30)


def _mutations(doc):
    """Strategy: doc with one value somewhere replaced by arbitrary JSON."""
    paths = []

    def walk(node, path):
        paths.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) \
            if isinstance(node, list) else ()
        for k, v in items:
            walk(v, path + (k,))
    walk(doc, ())

    def mutate(args):
        path, value = args
        if not path:
            return value
        copy = json.loads(json.dumps(doc))
        node = copy
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return copy
    return st.tuples(st.sampled_from(paths), JSON).map(mutate)


@settings(max_examples=400, deadline=None)
@given(_mutations(json.loads(manifest().summary().to_comment())))
def test_fuzzed_comment_parses_or_raises_format_error(doc):
    try:
        s = Summary.from_comment(json.dumps(doc), "a")
    except FormatError:
        return
    # What parses is well typed: sorting archives by it cannot fail.
    assert isinstance(s.time, str) and (s.parent is None or isinstance(s.parent, str))
    assert all(type(d.virtual_size) is int for d in s.disks.values())


@settings(max_examples=400, deadline=None)
@given(_mutations(json.loads(manifest().to_json())))
def test_fuzzed_manifest_parses_or_raises_format_error(doc):
    try:
        m = Manifest.from_json(json.dumps(doc).encode(), "a")
    except FormatError:
        return
    assert isinstance(m.time, str) and type(m.block_size) is int
    assert all(type(e.start) is int for d in m.disks.values() for e in d.extents)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | JSON.map(lambda d: json.dumps(d).encode()))
def test_arbitrary_bytes_never_crash_the_parsers(raw):
    for parse in (lambda: Manifest.from_json(raw, "a"),
                  lambda: Summary.from_comment(raw.decode("utf-8", "replace"), "a")):
        try:
            parse()
        except FormatError:
            pass


# --- version 2: layers and frozen data; version 1 still read ---------------------------

def test_manifest_v2_records_layers_and_frozen_data():
    vda = json.loads(manifest().to_json())["disks"]["vda"]
    assert vda["layers"] == [
        {"name": "S2", "path": "/var/lib/libvirt/images/web01.S2.qcow2", "format": "qcow2"},
        {"name": "base", "path": "/var/lib/libvirt/images/web01.qcow2", "format": "qcow2"}]
    assert vda["frozen"] == [{"layer": 1, "level": "inc",
                              "extents": [[0, 65536, "data"], [1 << 20, 65536, "zero"]],
                              "data_bytes": 65536, "zero_bytes": 65536, "sha256": "ef" * 32}]


def test_version_1_manifest_reads_as_one_layer():
    doc = _doc()
    doc["version"] = 1
    for d in doc["disks"].values():
        del d["layers"], d["frozen"]
    m = Manifest.from_json(json.dumps(doc).encode(), "a")
    assert m.version == 1
    vda = m.disks["vda"]
    assert vda.sealed == () and vda.chain == (
        LayerRecord("base", "/var/lib/libvirt/images/web01.S2.qcow2", "qcow2"),)


@pytest.mark.parametrize("change", [
    lambda d: d.pop("layers"), lambda d: d.pop("frozen"),
    lambda d: d.__setitem__("layers", []),
    lambda d: d["layers"].reverse(),                                # source not first
    lambda d: d["layers"][0].__setitem__("path", None),
    lambda d: d["frozen"][0].__setitem__("layer", 0),               # the top is not frozen
    lambda d: d["frozen"][0].__setitem__("layer", 2),               # no such layer
    lambda d: d["frozen"][0].__setitem__("layer", True),
    lambda d: d["frozen"].append(dict(d["frozen"][0])),             # twice
    lambda d: d["frozen"][0].__setitem__("extents", [[0, 2 << 30, "data"]]),
    lambda d: d["frozen"][0].__setitem__("sha256", "x"),
    lambda d: d["frozen"][0].__setitem__("level", "partial"),
])
def test_manifest_v2_rejects_bad_layers(change):
    doc = _doc()
    change(doc["disks"]["vda"])
    _reject(doc)


def test_sealed_member_names():
    from borg_vm.format.names import (
        parse_member,
    )
    name = sealed_member_name("vda", 2, 1 << 20)
    assert name == "frozen/vda/2/0000000000100000"
    assert name.startswith(sealed_prefix("vda", 2) + "/")
    assert parse_sealed_member(name) == ("vda", 2, 1 << 20)
    assert parse_member(name) is None                     # never taken for top data
    for bad in ("frozen/vda/0/0000000000100000", "frozen/vda/x/0000000000100000",
                "frozen/vda/2/100000", "frozen/../2/0000000000100000/x"):
        assert parse_sealed_member(bad) is None


# --- the domain's state (version 5) --------------------------------------------

NVRAM_SHA = hashlib.sha256(b"vars").hexdigest()
TPM_SHA = hashlib.sha256(b"permall").hexdigest()


def test_state_round_trips_through_manifest_and_comment():
    m = manifest(state={"nvram": NVRAM_SHA, "tpm": TPM_SHA})
    assert Manifest.from_json(m.to_json(), "a") == m
    assert json.loads(m.to_json())["state"] == {"nvram": NVRAM_SHA, "tpm": TPM_SHA}
    s = m.summary()
    assert s.state == ("nvram", "tpm")
    assert json.loads(s.to_comment())["state"] == ["nvram", "tpm"]
    assert Summary.from_comment(s.to_comment(), "a") == s
    assert fmt.small_members(s) == (fmt.DOMAIN_XML, fmt.CHECKPOINT_XML,
                                        fmt.MANIFEST, "state/nvram", "state/tpm")


def test_no_state_is_an_empty_map_and_list():
    m = manifest()
    assert json.loads(m.to_json())["state"] == {}
    assert json.loads(m.summary().to_comment())["state"] == []
    assert fmt.small_members(m.summary())[-1] == fmt.MANIFEST


def test_state_differs_between_manifest_and_comment():
    """A comment that lists no state under a manifest that holds some disagrees."""
    m = manifest(state={"nvram": NVRAM_SHA})
    assert m.summary() != manifest().summary()


@pytest.mark.parametrize("state", [{"bios": NVRAM_SHA}, {"nvram": "ab"}, {"nvram": None},
                                   [], None])
def test_manifest_rejects_bad_state(state):
    doc = json.loads(manifest().to_json())
    doc["state"] = state
    _reject(doc)


def test_manifest_v5_needs_state():
    doc = json.loads(manifest().to_json())
    del doc["state"]
    _reject(doc, match="state")


@pytest.mark.parametrize("names", [["tpm", "nvram"], ["nvram", "nvram"], ["bios"], [1], {}])
def test_comment_rejects_bad_state(names):
    doc = json.loads(manifest().summary().to_comment())
    doc["state"] = names
    with pytest.raises(FormatError, match="bad archive comment"):
        Summary.from_comment(json.dumps(doc), "a")


def test_version_4_manifest_holds_no_state():
    """An archive of version 4 reads with no state, and its comment compares equal."""
    m = manifest(version=4)
    doc = json.loads(m.to_json())
    assert "state" not in doc
    back = Manifest.from_json(m.to_json(), "a")
    assert back.state == {} and back.version == 4
    assert "state" not in json.loads(m.summary().to_comment())


def test_state_member_against_its_digest():
    m = manifest(state={"nvram": NVRAM_SHA})
    assert m.file_problem("state/nvram", b"vars") is None
    assert "differs from the digest" in m.file_problem("state/nvram", b"other")
    assert "does not list" in m.file_problem("state/tpm", b"permall")
