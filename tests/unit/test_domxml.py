"""libvirt XML: reading disks, writing backup/checkpoint XML, rewriting for restore."""

import xml.etree.ElementTree as ET

import pytest

from borg_vm.core.domxml import (
    DiskSpec,
    agent_channel,
    backup_sockets,
    backup_xml,
    checkpoint_xml,
    domain_uuid,
    parse_disks,
    qemu_owner,
    read_domain_xml,
    restored_domain_xml,
    snapshot_images,
)

# Shaped like `virsh dumpxml` of a running domain (trimmed).
DOMAIN_XML = """\
<domain type='kvm' id='7'>
  <name>web01.example.com</name>
  <uuid>9b1c5a5e-3c1e-4c55-9d7e-2a1d0b9c1f00</uuid>
  <memory unit='KiB'>1048576</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web01.qcow2' index='2'/>
      <backingStore type='file' index='3'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/base.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/vg0/web01-data' index='1'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/iso/debian-12.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/tools.qcow2'/>
      <target dev='vdc' bus='virtio'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='/var/lib/libvirt/images/cluster.img'/>
      <target dev='vdd' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/web01-ceph'>
        <host name='ceph1' port='6789'/>
      </source>
      <target dev='vde' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/nodriver.img'/>
      <target dev='vdf' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
    </interface>
  </devices>
  <seclabel type='dynamic' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c1,c2</label>
  </seclabel>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+107:+108</label>
    <imagelabel>+107:+108</imagelabel>
  </seclabel>
</domain>
"""


def disks_by_target(xml=DOMAIN_XML):
    return {d.target: d for d in parse_disks(xml)}


# --- parse_disks, skip_reason --------------------------------------------------------

def test_parse_disks_in_document_order():
    assert [d.target for d in parse_disks(DOMAIN_XML)] == ["vda", "vdb", "sda", "sdb", "vdc",
                                                          "vdd", "vde", "vdf"]


def test_parse_file_disk():
    assert disks_by_target()["vda"] == DiskSpec(
        "vda", "disk", "file", "/var/lib/libvirt/images/web01.qcow2", "qcow2", False, False)


def test_parse_block_disk():
    assert disks_by_target()["vdb"] == DiskSpec(
        "vdb", "disk", "block", "/dev/vg0/web01-data", "raw", False, False)


def test_parse_other_disks():
    d = disks_by_target()
    assert (d["sda"].device, d["sda"].readonly, d["sda"].source) == ("cdrom", True,
                                                                    "/iso/debian-12.iso")
    assert d["sdb"].source is None
    assert d["vdc"].readonly and not d["vdc"].shareable
    assert d["vdd"].shareable and not d["vdd"].readonly
    assert (d["vde"].type, d["vde"].source) == ("network", None)
    assert (d["vdf"].format, d["vdf"].source) == (None, "/var/lib/libvirt/images/nodriver.img")


def test_skip_reasons():
    reasons = {t: d.skip_reason() for t, d in disks_by_target().items()}
    assert reasons["vda"] is None
    assert reasons["vdb"] is None
    assert reasons["vdf"] is None
    assert reasons["sda"] == "cdrom device"
    assert reasons["sdb"] == "cdrom device"
    assert reasons["vdc"] == "read-only"
    assert reasons["vdd"] == "shareable"
    assert "network" in reasons["vde"]


def test_skip_empty_drive():
    spec = DiskSpec("vdx", "disk", "file", None, "raw", False, False)
    assert spec.skip_reason() == "no source (empty drive)"


def test_skip_volume_disk():
    assert DiskSpec("vdx", "disk", "volume", None, "raw", False, False).skip_reason() \
        == "volume disks are not supported"


def test_parse_disks_without_devices():
    assert parse_disks("<domain type='kvm'><name>x</name></domain>") == []


def test_domain_uuid():
    assert domain_uuid(DOMAIN_XML) == "9b1c5a5e-3c1e-4c55-9d7e-2a1d0b9c1f00"
    assert domain_uuid("<domain><name>x</name></domain>") == ""


# --- qemu_owner -----------------------------------------------------------------------

def test_qemu_owner_from_dac_label():
    assert qemu_owner(DOMAIN_XML) == (107, 108)


def test_qemu_owner_plain_numbers():
    xml = ("<domain><seclabel type='static' model='dac' relabel='no'>"
           "<label>0:0</label></seclabel></domain>")
    assert qemu_owner(xml) == (0, 0)


@pytest.mark.parametrize("xml", [
    "<domain><name>x</name></domain>",
    "<domain><seclabel type='dynamic' model='selinux'><label>a:b:c:d</label></seclabel>"
    "</domain>",
    "<domain><seclabel type='none' model='dac'/></domain>",
    "<domain><seclabel type='dynamic' model='dac'><label/></seclabel></domain>",
    "<domain><seclabel type='static' model='dac'><label>qemu:kvm</label></seclabel></domain>",
])
def test_qemu_owner_unknown(xml):
    assert qemu_owner(xml) is None


def test_qemu_owner_skips_bad_label_for_good_one():
    xml = ("<domain><seclabel model='dac'><label>qemu:kvm</label><label>+5:+6</label>"
           "</seclabel></domain>")
    assert qemu_owner(xml) == (5, 6)


# --- agent_channel ----------------------------------------------------------------------

def channel(target: str) -> str:
    return (f"<domain><devices><channel type='unix'><source mode='bind'/>{target}"
            "</channel></devices></domain>")


@pytest.mark.parametrize("xml, state", [
    (channel("<target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>"),
     "connected"),
    (channel("<target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>"),
     "disconnected"),
    (channel("<target type='virtio' name='org.qemu.guest_agent.0'/>"), ""),  # not running
    (channel("<target type='virtio' name='org.qemu.spice.0'/>"), None),
    (channel("<target type='guestfwd' name='org.qemu.guest_agent.0'/>"), None),
    ("<domain><devices><serial type='pty'/></devices></domain>", None),
    (DOMAIN_XML, None),
])
def test_agent_channel(xml, state):
    assert agent_channel(xml) == state


# --- backup_xml --------------------------------------------------------------------------

def test_backup_xml_incremental():
    root = ET.fromstring(backup_xml(
        "/run/borg-vm/x/nbd.sock",
        {"vda": ("/scratch/vda.s", "incremental"), "vdb": ("/scratch/vdb.s", "full"),
         "vdc": None},
        "borgvm-20261126T020000Z"))
    assert root.tag == "domainbackup"
    assert root.get("mode") == "pull"
    assert root.findtext("incremental") == "borgvm-20261126T020000Z"
    server = root.find("server")
    assert (server.get("transport"), server.get("socket")) == ("unix", "/run/borg-vm/x/nbd.sock")
    disks = {d.get("name"): d for d in root.findall("disks/disk")}
    assert list(disks) == ["vda", "vdb", "vdc"]
    vda, vdb, vdc = disks["vda"], disks["vdb"], disks["vdc"]
    assert (vda.get("backup"), vda.get("type"), vda.get("backupmode"), vda.get("incremental")) \
        == ("yes", "file", "incremental", "borgvm-20261126T020000Z")
    assert vda.find("scratch").get("file") == "/scratch/vda.s"
    assert (vdb.get("backup"), vdb.get("backupmode"), vdb.get("incremental")) \
        == ("yes", "full", None)
    assert vdb.find("scratch").get("file") == "/scratch/vdb.s"
    assert vdc.get("backup") == "no"
    assert vdc.find("scratch") is None and vdc.get("backupmode") is None


def test_backup_xml_full_has_no_incremental():
    root = ET.fromstring(backup_xml("/s.sock", {"vda": ("/s/vda", "full")}, None))
    assert root.find("incremental") is None
    assert root.find("disks/disk").get("incremental") is None
    assert root.find("disks/disk").get("backupmode") == "full"


def test_backup_sockets_round_trip():
    xml = backup_xml("/run/a b/nbd.sock", {"vda": ("/s", "full")}, None)
    assert backup_sockets(xml) == ["/run/a b/nbd.sock"]


def test_backup_sockets_of_a_foreign_job():
    job = ("<domainbackup mode='pull'><server transport='tcp' name='localhost' port='10809'/>"
           "<disks/></domainbackup>")
    assert backup_sockets(job) == [""]
    assert backup_sockets("<domainbackup mode='push'><disks/></domainbackup>") == []


def test_backup_xml_escapes_paths():
    xml = backup_xml("/tmp/a&b'<c>\".sock", {"vda": ("/s/x&y", "full")}, None)
    root = ET.fromstring(xml)
    assert root.find("server").get("socket") == "/tmp/a&b'<c>\".sock"
    assert root.find("disks/disk/scratch").get("file") == "/s/x&y"


# --- checkpoint_xml ----------------------------------------------------------------------

def test_checkpoint_xml():
    root = ET.fromstring(checkpoint_xml("borgvm-20261126T020000Z", "borg-vm backup of web01",
                                        {"vda": True, "vdb": False}))
    assert root.tag == "domaincheckpoint"
    assert root.findtext("name") == "borgvm-20261126T020000Z"
    assert root.findtext("description") == "borg-vm backup of web01"
    assert [(d.get("name"), d.get("checkpoint")) for d in root.findall("disks/disk")] == [
        ("vda", "bitmap"), ("vdb", "no")]


# --- restored_domain_xml ---------------------------------------------------------------

def restored(images=None):
    images = images or {"vda": ("/restore/web01.vda.qcow2", "qcow2"),
                        "vdb": ("/restore/web01.vdb.img", "raw")}
    return ET.fromstring(restored_domain_xml(DOMAIN_XML, "web01-restored", images))


def test_restored_name_and_uuid():
    root = restored()
    assert root.findtext("name") == "web01-restored"
    assert root.find("uuid") is None


def test_restored_disks_point_at_new_images():
    disks = {d.find("target").get("dev"): d for d in restored().findall("devices/disk")}
    vda, vdb = disks["vda"], disks["vdb"]
    assert vda.get("type") == "file"
    assert [s.get("file") for s in vda.findall("source")] == ["/restore/web01.vda.qcow2"]
    assert vda.find("backingStore") is None
    assert vda.find("driver").get("type") == "qcow2"
    assert vda.find("driver").get("discard") == "unmap"       # other settings kept
    assert vdb.get("type") == "file"                            # was a block device
    assert [(s.get("file"), s.get("dev")) for s in vdb.findall("source")] == [
        ("/restore/web01.vdb.img", None)]
    assert vdb.find("backingStore") is None
    assert vdb.find("driver").get("type") == "raw"
    assert vdb.find("target").get("bus") == "virtio"


def test_restored_keeps_cdrom_and_readonly_drops_other_writable():
    disks = {d.find("target").get("dev") for d in restored().findall("devices/disk")}
    # vdd (shareable, writable), vde (network), vdf (writable) would touch the
    # original's storage; cdroms and the read-only disk are safe to share.
    assert disks == {"vda", "vdb", "sda", "sdb", "vdc"}


def test_restored_only_some_disks():
    root = restored({"vdb": ("/r/vdb.qcow2", "qcow2")})
    disks = {d.find("target").get("dev") for d in root.findall("devices/disk")}
    assert disks == {"vdb", "sda", "sdb", "vdc"}


def test_restored_disk_without_driver_gets_one():
    root = restored({"vdf": ("/r/vdf.qcow2", "qcow2")})
    (vdf,) = [d for d in root.findall("devices/disk") if d.find("target").get("dev") == "vdf"]
    assert (vdf.find("driver").get("name"), vdf.find("driver").get("type")) == ("qemu", "qcow2")
    assert vdf.find("source").get("file") == "/r/vdf.qcow2"


def test_restored_result_parses_back_with_parse_disks():
    xml = restored_domain_xml(DOMAIN_XML, "copy", {"vda": ("/r/a.qcow2", "qcow2")})
    d = {s.target: s for s in parse_disks(xml)}
    assert d["vda"] == DiskSpec("vda", "disk", "file", "/r/a.qcow2", "qcow2", False, False)
    assert domain_uuid(xml) == ""


def test_restored_keeps_other_devices():
    root = restored()
    assert root.find("devices/interface/source").get("network") == "default"
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"


def test_snapshot_images_maps_overlays_to_snapshot_names():
    from borg_vm.core.domxml import snapshot_images
    xml = """<domainsnapshot><name>pre-upgrade.1</name><state>disk-snapshot</state>
      <disks><disk name='vda' snapshot='external' type='file'>
               <driver type='qcow2'/><source file='/i/vm.pre.qcow2'/></disk>
             <disk name='vdb' snapshot='no'/>
             <disk name='vdc' snapshot='internal'/></disks>
      <domain><name>web01</name></domain></domainsnapshot>"""
    internal = "<domainsnapshot><name>s0</name><disks><disk name='vda' snapshot='internal'/>" \
               "</disks></domainsnapshot>"
    assert snapshot_images([xml, internal]) == {"/i/vm.pre.qcow2": "pre-upgrade.1"}


# --- read_domain_xml: domain XML from an archive -------------------------------------------

LAUGHS = ("<!DOCTYPE domain [<!ENTITY a 'aaaaaaaaaa'>"
          + "".join(f"<!ENTITY {c} '{('&' + chr(ord(c) - 1) + ';') * 10}'>" for c in "bcdefghij")
          + "]><domain><name>&j;</name></domain>")


def test_read_domain_xml_returns_the_text():
    assert read_domain_xml(DOMAIN_XML.encode()) == DOMAIN_XML
    assert read_domain_xml("<domain><name>café</name></domain>".encode()) \
        == "<domain><name>café</name></domain>"


@pytest.mark.parametrize("raw, why", [
    (b"<domain><name>x</name>", "is not well-formed XML"),
    (b"", "is not well-formed XML"),
    (b"<domain><name>caf\xe9</name></domain>", "is not UTF-8"),
    (b"<domain><name> </name></domain>", "has no <name>"),
    (b"<domain type='kvm'/>", "has no <name>"),
    (b"<domainsnapshot><name>x</name></domainsnapshot>", "is a <domainsnapshot>, not a <domain>"),
    (LAUGHS.encode(), "has a DTD"),
    (b"<!DOCTYPE d SYSTEM 'file:///etc/passwd'><domain><name>x</name></domain>", "has a DTD"),
    (b"<!DOCTYPE d><domain><name>x</name></domain>", "has a DTD"),
])
def test_read_domain_xml_rejects(raw, why):
    with pytest.raises(ValueError, match=f"^{why}"):
        read_domain_xml(raw)


def test_no_entity_is_expanded_anywhere():
    """libvirt never writes a DTD: every parser of the module refuses one."""
    for parse in (parse_disks, domain_uuid, qemu_owner, backup_sockets):
        with pytest.raises(ValueError, match="DTD"):
            parse(LAUGHS)
    with pytest.raises(ValueError, match="DTD"):
        restored_domain_xml(LAUGHS, "x", {})
    with pytest.raises(ValueError, match="DTD"):
        snapshot_images([LAUGHS])


def test_checkpoint_to_redefine_drops_the_parent_and_checks_the_name():
    from borg_vm.core.domxml import checkpoint_to_redefine
    raw = (b"<domaincheckpoint><name>borgvm-20261126T020000Z</name>"
           b"<parent><name>borgvm-20261125T020000Z</name></parent>"
           b"<creationTime>1795658400</creationTime><disks><disk name='vda' "
           b"checkpoint='bitmap' bitmap='borgvm-20261126T020000Z'/></disks>"
           b"<domain><name>web01</name></domain></domaincheckpoint>")
    xml = checkpoint_to_redefine(raw, "borgvm-20261126T020000Z")
    assert "<parent>" not in xml and "borgvm-20261125T020000Z" not in xml
    assert "<creationTime>1795658400</creationTime>" in xml and "<domain>" in xml
    with pytest.raises(ValueError, match="names checkpoint"):
        checkpoint_to_redefine(raw, "borgvm-20261127T020000Z")
    for bad, why in [(b"<domain><name>x</name></domain>", "not a <domaincheckpoint>"),
                     (b"\xff", "not UTF-8"), (b"<domaincheckpoint>", "not well-formed"),
                     (b'<!DOCTYPE x [<!ENTITY a "b">]><domaincheckpoint/>', "DTD")]:
        with pytest.raises(ValueError, match=why):
            checkpoint_to_redefine(bad, "borgvm-20261126T020000Z")
