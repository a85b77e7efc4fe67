"""borg-vm restore against damaged or hostile archives, as anyone with write
access to the repository could make them ('borg import-tar' of a hand-made
tar, named and commented like a borg-vm archive): one clear line and exit 2,
before any image is written, with bounded memory."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from handmade import (
    DOMAIN,
    PACK,
    PACK_BYTES,
    PACK_MAP,
    PACK_NAME,
    SIZE,
    Zeros,
    borg_vm,
    borg_vm_peak_rss,
    error_line,
    image_data,
    packed_disk,
    write_archive,
    write_packed_archive,
)
from realstack import KiB, MiB

from borg_vm.core.extent import Extent
from borg_vm.errors import FormatError
from borg_vm.format import names as fmt
from borg_vm.format import packing
from borg_vm.format.summary import ArchiveInfo, DiskSummary, Summary
from borg_vm.services.restore import plan as restore_plan

DATA = b"\x5a" * 65536
GiB = 1024 * MiB
# borg-vm holds at most a few 4 MiB pieces in flight; a member read whole shows as GiBs.
PEAK_RSS_LIMIT = 300 * MiB
BILLION_LAUGHS = (b"<?xml version='1.0'?><!DOCTYPE domain ["
                  b"<!ENTITY a 'aaaaaaaaaa'>"
                  + b"".join(b"<!ENTITY %c '%s'>" % (c, (b"&%c;" % (c - 1)) * 10)
                             for c in range(ord("b"), ord("k")))
                  + b"]><domain><name>&j;</name></domain>")


# An archive is read back with export-tar, or with list + extract --stdout when its
# comment claims much data (reader.EXTRACT_FROM, set to 0 here to take that way):
# hostile members are refused both ways. way -> (disk size, EXTRACT_FROM).
WAYS = {"export-tar": (SIZE, None), "extract": (GiB, 0)}


def restore(repo, to, *extra, code=0, extract_from=None):
    return borg_vm("restore", DOMAIN, "--repo", repo, "--to", str(to), "--no-progress",
                   *extra, code=code, extract_from=extract_from)


# --- B3: a malformed domain.xml is found before any data is written --------------------

@pytest.mark.parametrize("xml, why", [
    (b"<domain type='kvm'><name>x</name><devices>", "not well-formed"),
    (b"<domain type='kvm'><devices/></domain>", "no <name>"),
    (b"<domain><name>caf\xe9</name></domain>", "not UTF-8"),
    (BILLION_LAUGHS, "DTD"),
    (b"<!DOCTYPE domain SYSTEM 'file:///etc/passwd'><domain><name>x</name></domain>", "DTD"),
    (b"<network><name>x</name></network>", "not a <domain>"),
], ids=["invalid", "no-name", "not-utf8", "billion-laughs", "external-dtd", "not-domain"])
def test_malformed_domain_xml_fails_first_with_exit_2(make_repo, tmp_path, xml, why):
    borg = make_repo()
    name = write_archive(borg, {"vda": DATA}, xml=xml)
    line = error_line(restore(borg.repo, tmp_path / "out", code=2))  # no "restoring vda" line
    assert f"Archive {name} " in line and "domain.xml" in line and why in line, line
    assert not (tmp_path / "out").exists()


# --- B5: no member is held in memory unless it is small by definition ------------------

@pytest.mark.parametrize("way", WAYS)
def test_non_data_member_under_disk_is_rejected_with_bounded_memory(make_repo, tmp_path, way):
    borg = make_repo()
    size, extract_from = WAYS[way]
    name = write_archive(borg, {"vda": DATA}, extra=[("disk/vda/junk", Zeros(GiB))],
                         size=size)
    proc, rss = borg_vm_peak_rss(tmp_path, "restore", DOMAIN, "--repo", borg.repo, "--to",
                                 str(tmp_path / "out"), "--no-progress", code=2,
                                 extract_from=extract_from)
    line = proc.stderr.splitlines()[-1]
    assert f"Archive {name} " in line and "'disk/vda/junk'" in line, proc.stderr
    assert rss < PEAK_RSS_LIMIT
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("way", WAYS)
def test_unknown_member_is_skipped_with_bounded_memory(make_repo, tmp_path, way):
    """'manifest.json/x' is exported with manifest.json (a path prefix), then skipped."""
    borg = make_repo()
    size, extract_from = WAYS[way]
    write_archive(borg, {"vda": DATA}, extra=[("manifest.json/x", Zeros(GiB))], size=size)
    proc, rss = borg_vm_peak_rss(tmp_path, "restore", DOMAIN, "--repo", borg.repo, "--to",
                                 str(tmp_path / "out"), "--no-progress",
                                 extract_from=extract_from)
    assert rss < PEAK_RSS_LIMIT
    assert len(list((tmp_path / "out").glob("*.qcow2"))) == 1


@pytest.mark.parametrize("member, limit", [(fmt.MANIFEST, fmt.MAX_MANIFEST_BYTES),
                                           (fmt.DOMAIN_XML, fmt.MAX_XML_BYTES)])
def test_oversized_small_member_is_refused_unread(make_repo, tmp_path, member, limit):
    borg = make_repo()
    big = {"manifest_json" if member == fmt.MANIFEST else "xml": Zeros(limit + 1)}
    name = write_archive(borg, {"vda": DATA}, **big)
    line = error_line(restore(borg.repo, tmp_path / "out", code=2))
    assert f"Archive {name} " in line and f"{member} is {limit + 1} bytes" in line, line


# --- R10: data beyond the end of its disk is a damaged archive, found before writing ---

@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("end, length", [(-4096, 65536), (0, 4096), (None, 1)])
def test_data_member_beyond_the_disk_end_is_damage(make_repo, tmp_path, end, length, way):
    """A member starting just before the disk's end, at it, or at twice the size."""
    borg = make_repo()
    size, extract_from = WAYS[way]
    offset = 2 * size if end is None else size + end
    name = write_archive(borg, {"vda": DATA}, extra=[
        (fmt.member_name("vda", offset), b"\x01" * length)], size=size)
    proc = restore(borg.repo, tmp_path / "out", code=2, extract_from=extract_from)
    line = proc.stderr.splitlines()[-1]
    assert (f"Data of disk vda in archive {name} " in line
            and f"ends at byte {offset + length}, beyond the disk's {size} bytes)" in line
            and line.count("damaged") == 1
            and line.endswith("the archive is damaged; nothing was restored.")), proc.stderr
    assert not (tmp_path / "out").exists()


# --- format 3: a pack of pieces, announced by its map ------------------------------------

def test_a_pack_restores_its_pieces_at_their_offsets(make_repo, tmp_path):
    borg = make_repo()
    write_packed_archive(borg)
    to = tmp_path / "out"
    restore(borg.repo, to)
    (image,) = to.glob("*.qcow2")
    assert image_data(str(image), tmp_path) == packed_disk()
    assert "ok " in borg_vm("verify", DOMAIN, "--repo", borg.repo).stdout


MAP, DATA_NAME, PACKED = PACK_MAP, PACK_NAME, PACK_BYTES


@pytest.mark.parametrize("members, error", [
    ([(MAP, packing.map_to_json(PACK)), (fmt.member_name("vda", 0), b"x" * PACKED)],
     f"map of {DATA_NAME} is followed by '{fmt.member_name('vda', 0)}'"),
    ([(MAP, packing.map_to_json(PACK))], f"map of {DATA_NAME} is followed by 'manifest.json'"),
    ([(MAP, packing.map_to_json(PACK)), (DATA_NAME, b"x" * (PACKED - 1))],
     f"the map of {DATA_NAME} does not describe its {PACKED - 1} bytes"),
    ([(MAP, packing.map_to_json(PACK[1:])), (DATA_NAME, b"x" * PACKED)],
     f"the map of {DATA_NAME} does not describe"),
    ([(MAP, b"[[65536, 4096], [1048576"), (DATA_NAME, b"x" * PACKED)], f"{MAP}: "),
    ([(MAP, b"[[65536, 4096], [1048576, -3]]"), (DATA_NAME, b"x" * PACKED)], "out of order"),
    ([(MAP, Zeros(packing.MAX_MAP_BYTES + 1)), (DATA_NAME, b"x" * PACKED)],
     f"{MAP} is {packing.MAX_MAP_BYTES + 1} bytes, more than the {packing.MAX_MAP_BYTES}"),
    ([(MAP, packing.map_to_json((PACK[0], Extent(SIZE - 100, PACKED - 4 * KiB)))),
      (DATA_NAME, b"x" * PACKED)],
     f"ends at byte {SIZE - 100 + PACKED - 4 * KiB}, beyond the disk's {SIZE} bytes"),
], ids=["other-member", "at-the-end", "short-data", "short-map", "not-json", "bad-entry",
        "oversized", "beyond-the-disk"])
def test_damaged_packs_are_refused(make_repo, tmp_path, members, error):
    borg = make_repo()
    name = write_packed_archive(borg, members)
    proc = restore(borg.repo, tmp_path / "out", code=2)
    line = proc.stderr.splitlines()[-1]
    assert name in line and error in line, proc.stderr
    assert not (tmp_path / "out").exists()


def chain_of_sizes(*sizes):
    """Return the archives of a chain of vda (a full, then incrementals) of sizes."""
    arcs = []
    for n, size in enumerate(sizes, 1):
        level = "inc" if arcs else "full"
        arcs.append(ArchiveInfo(
            fmt.ArchiveName(DOMAIN, "S", f"borgvm-{n}"),
            Summary(level, arcs[-1].archive if arcs else None, f"t{n}", "u",
                            {"vda": DiskSummary(level, size, "qcow2", "/v", 0, 0)})))
    return arcs


@pytest.mark.parametrize("mode", ["chain", "flatten", "layers"])
def test_a_chain_whose_size_changes_is_refused_before_writing(mode):
    """Each image was made as big as its archive's comment said; flatten found a
    bigger incremental only after writing the full, chain and layers never, while
    mount and verify refuse such a chain."""
    arcs = chain_of_sizes(MiB, 2 * MiB)
    with pytest.raises(FormatError, match=f"disk vda changes size along its chain "
                                          rf"\(\[{MiB}, {2 * MiB}\]\)"):
        if mode == "layers":   # the chain is refused before any manifest is read
            restore_plan.layer_plans(None, arcs, arcs[-1], ("vda",), "qcow2")
        else:
            restore_plan.chain_plans(arcs, arcs[-1], ("vda",), "qcow2", flatten=mode == "flatten")


# --- R3: the restored domain XML names no host resource unless asked -------------------

HOST_RESOURCES_XML = f"""\
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{DOMAIN}</name><memory>131072</memory><os><type arch='x86_64'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/vms/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='lun'><driver name='qemu' type='raw'/>
      <source dev='/dev/sda'/><target dev='sda' bus='scsi'/></disk>
    <disk type='file' device='cdrom'><source file='/etc/shadow'/>
      <target dev='sdb' bus='sata'/><readonly/></disk>
    <filesystem type='mount' accessmode='passthrough'><source dir='/'/>
      <target dir='hostroot'/></filesystem>
    <hostdev mode='subsystem' type='pci' managed='yes'><source>
      <address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>
    <graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'/>
  </devices>
  <qemu:commandline><qemu:arg value='-fw_cfg'/><qemu:arg value='name=opt/x,file=/etc/shadow'/>
  </qemu:commandline>
</domain>
""".encode()
CHANGED = ("qemu:commandline, disk sda (/dev/sda), disk sdb (/etc/shadow), filesystem mount (/), "
           "hostdev pci, graphics vnc listen 0.0.0.0 -> 127.0.0.1")


def restored_xml(to: Path) -> ET.Element:
    (path,) = to.glob("*.xml")
    text = path.read_text()
    assert text.endswith("</domain>\n"), "a text file ends with a newline"
    return ET.fromstring(text)


def named_paths(root: ET.Element) -> set[str]:
    return {v for e in root.iter() for v in (*e.attrib.values(), (e.text or "").strip())
            if v.startswith("/")}


def test_host_resources_are_removed_with_one_warning(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA}, xml=HOST_RESOURCES_XML)
    to = tmp_path / "out"
    proc = restore(borg.repo, to, code=1)   # a warning: exit 1
    warnings = [line for line in proc.stderr.splitlines() if "removed" in line]
    assert warnings == ["borg-vm: removed or changed host resources in the restored domain XML "
                        f"(--keep-host-resources keeps them as archived): {CHANGED}"], proc.stderr
    root = restored_xml(to)
    assert named_paths(root) == {str(p) for p in to.glob("*.qcow2")}
    assert [d.find("target").get("dev") for d in root.iter("disk")] == ["vda"]
    assert root.find("devices/graphics").get("listen") == "127.0.0.1"


def test_keep_host_resources_keeps_them(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA}, xml=HOST_RESOURCES_XML)
    to = tmp_path / "out"
    proc = restore(borg.repo, to, "--keep-host-resources")
    assert "removed" not in proc.stderr
    root = restored_xml(to)
    assert {"/dev/sda", "/etc/shadow", "/", "/usr/bin/qemu-system-x86_64"} <= named_paths(root)
    assert root.find("devices/hostdev") is not None
    assert root.find("devices/graphics").get("listen") == "0.0.0.0"
    assert "name=opt/x,file=/etc/shadow" in ET.tostring(root, encoding="unicode")
