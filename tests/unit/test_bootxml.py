"""Domain XML of a domain booted from the repository: overlays backed by NBD
exports, the boot record, and QEMU's user from the host capabilities."""

import xml.etree.ElementTree as ET

import pytest
from test_domxml import DOMAIN_XML

from borg_vm.core.bootxml import (
    BOOT_NS,
    BootRecord,
    boot_domain_xml,
    boot_record,
    dac_base_label,
    domain_type,
    nbd_backings,
)
from borg_vm.core.domxml import parse_disks, restored_domain_xml

# The domain of test_domxml: vda (qcow2 on a backing file), vdb (a raw block
# device), CD-ROMs, a read-only disk, disks restore leaves out, a MAC address.
ARCHIVED = DOMAIN_XML
RECORD = BootRecord("/srv/borg/repo", "web01", "borgvm-20261127T020000Z",
                    "/run/borg-vm/boot-0f0e")
UUID = "0f0e0d0c-0b0a-4908-8706-050403020100"
SOCKETS = {"vda": "/run/borg-vm/boot-0f0e/vda.sock", "vdb": "/run/borg-vm/boot-0f0e/vdb.sock"}


def booted_xml() -> str:
    restored = restored_domain_xml(ARCHIVED, "web01-restored", {
        "vda": ("/srv/boot/web01-restored.vda.qcow2", "qcow2"),
        "vdb": ("/srv/boot/web01-restored.vdb.qcow2", "qcow2")})
    return boot_domain_xml(restored, UUID, SOCKETS, RECORD)


def test_the_booted_domain_has_a_new_name_and_uuid_and_no_mac():
    root = ET.fromstring(booted_xml())
    assert root.findtext("name") == "web01-restored"
    assert [e.text for e in root.findall("uuid")] == [UUID]
    assert [e.tag for e in root][:2] == ["name", "uuid"]
    assert root.find("./devices/interface/mac") is None


def test_each_overlay_is_backed_by_its_export_and_pauses_on_errors():
    root = ET.fromstring(booted_xml())
    for target in SOCKETS:
        disk = root.find(f"./devices/disk/target[@dev='{target}']/..")
        assert [e.tag for e in disk][:3] == ["driver", "source", "backingStore"]
        driver = disk.find("driver")
        assert (driver.get("type"), driver.get("error_policy"), driver.get("rerror_policy")) \
            == ("qcow2", "stop", "stop")
        backing = disk.find("backingStore")
        assert backing.get("type") == "network"
        assert backing.find("format").get("type") == "raw"
        assert backing.find("source").get("protocol") == "nbd"
        assert backing.find("source/host").attrib == {"transport": "unix",
                                                      "socket": SOCKETS[target]}
        assert backing.find("backingStore") is not None and len(backing.find("backingStore")) == 0
    assert root.find("./devices/disk/driver").get("discard") == "unmap"   # kept
    # Disks that are not restored stay as restore leaves them: no NBD backing.
    assert [d.find("target").get("dev") for d in root.iterfind("./devices/disk")
            if d.find("backingStore") is not None] == ["vda", "vdb"]


def test_nbd_backings_reads_back_the_sockets_and_ignores_other_disks():
    assert nbd_backings(booted_xml()) == SOCKETS
    assert nbd_backings(ARCHIVED) == {}
    # A file backing (a restored chain) is none of boot's.
    chained = ARCHIVED.replace(
        "<target dev='vda' bus='virtio'/>",
        "<backingStore type='file'><format type='qcow2'/><source file='/b.qcow2'/>"
        "</backingStore><target dev='vda' bus='virtio'/>")
    assert nbd_backings(chained) == {}


def test_the_record_round_trips_beside_other_metadata():
    assert boot_record(booted_xml()) == RECORD
    with_metadata = ARCHIVED.replace("<memory", "<metadata><app:info xmlns:app="
                                     "'https://example.com/app'>kept</app:info></metadata>"
                                     "<memory")
    restored = restored_domain_xml(with_metadata, "web01-restored", {})
    root = ET.fromstring(boot_domain_xml(restored, UUID, {}, RECORD))
    assert root.find("./metadata/{https://example.com/app}info").text == "kept"
    assert boot_record(ET.tostring(root, encoding="unicode")) == RECORD
    assert boot_record(ARCHIVED) is None


def test_a_record_missing_a_field_is_no_record():
    root = ET.fromstring(booted_xml())
    record = root.find(f"./metadata/{{{BOOT_NS}}}boot")
    record.remove(record.find(f"{{{BOOT_NS}}}checkpoint"))
    assert boot_record(ET.tostring(root, encoding="unicode")) is None


def test_the_xml_still_reads_as_the_same_disks():
    disks = {d.target: d for d in parse_disks(booted_xml())}
    assert disks["vda"].source == "/srv/boot/web01-restored.vda.qcow2"
    assert disks["vdb"].format == "qcow2"


def test_an_unknown_target_is_refused():
    with pytest.raises(ValueError, match="no disk vdz"):
        boot_domain_xml(ARCHIVED, UUID, {"vdz": "/x.sock"}, RECORD)


CAPS = """\
<capabilities>
  <host>
    <secmodel><model>none</model><doi>0</doi></secmodel>
    <secmodel>
      <model>dac</model><doi>0</doi>
      <baselabel type='kvm'>+64055:+994</baselabel>
      <baselabel type='qemu'>+64055:+995</baselabel>
    </secmodel>
  </host>
</capabilities>
"""


def test_qemus_user_comes_from_the_dac_base_label_of_the_domain_type():
    assert dac_base_label(CAPS, "kvm") == (64055, 994)
    assert dac_base_label(CAPS, "qemu") == (64055, 995)
    assert dac_base_label(CAPS, "xen") is None
    assert dac_base_label("<capabilities><host/></capabilities>", "kvm") is None
    assert domain_type(ARCHIVED) == "kvm"
