"""The domain XML restore writes, as real libvirt takes it: host resources the
archived domain named are gone or made safe, and the rest defines and starts
as a new domain."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import guest
import libvirt
from borgvm import init_repo, run
from guest import MIB

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def add_host_resources(conn: libvirt.virConnect, dom: libvirt.virDomain, tmp_path: Path) -> None:
    """Redefine dom's persistent config with a cdrom on a host file, a host
    directory passed through, a VNC server and a serial port open to the network,
    shared memory, a static DAC label and a QEMU argument (the running domain is
    untouched)."""
    (tmp_path / "host.iso").write_bytes(bytes(MIB))
    (tmp_path / "share").mkdir()
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    devices = root.find("devices")
    devices.append(ET.fromstring(
        f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        f"<source file='{tmp_path / 'host.iso'}'/><target dev='sdb' bus='sata'/><readonly/>"
        f"</disk>"))
    devices.append(ET.fromstring(
        f"<filesystem type='mount' accessmode='mapped'><source dir='{tmp_path / 'share'}'/>"
        f"<target dir='hostshare'/></filesystem>"))
    for device in ("<graphics type='vnc' autoport='yes' listen='0.0.0.0'/>",
                   "<serial type='tcp'><source mode='bind' host='0.0.0.0' service='4555'/>"
                   "<target port='0'/></serial>",
                   "<shmem name='borgvm-test'><model type='ivshmem-plain'/>"
                   "<size unit='M'>1</size></shmem>"):
        devices.append(ET.fromstring(device))
    root.append(ET.fromstring("<seclabel type='static' model='dac' relabel='no'>"
                              "<label>+0:+0</label></seclabel>"))
    cmdline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for value in ("-fw_cfg", "name=opt/borgvm-test,string=x"):
        ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=value)
    conn.defineXML(ET.tostring(root, encoding="unicode"))


def test_restored_xml_without_host_resources_defines_in_libvirt(libvirt_conn, make_domain,
                                                                tmp_path):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    add_host_resources(libvirt_conn, d.dom, tmp_path)
    repo = init_repo(tmp_path / "repo")
    run("backup", d.name, "--repo", repo)

    result = run("restore", d.name, "--repo", repo, "--to", str(tmp_path / "r"), "--json",
                 code=1)   # the warning naming what was removed: exit 1
    assert (f"removed or changed host resources in the restored domain XML "
            f"(--keep-host-resources keeps them as archived): qemu:commandline, disk sdb "
            f"({tmp_path / 'host.iso'}), filesystem mount ({tmp_path / 'share'}), "
            f"serial tcp (bind 0.0.0.0:4555) -> pty, console tcp (bind 0.0.0.0:4555) -> pty, "
            f"graphics vnc listen 0.0.0.0 -> 127.0.0.1, shmem borgvm-test, "
            f"seclabel dac static relabel=no (+0:+0)\n") in result.stderr, result.stderr
    doc = result.json()
    copy = libvirt_conn.defineXML(Path(doc["domain_xml"]).read_text())
    try:
        assert copy.name() == f"{d.name}-restored"
        defined = ET.fromstring(copy.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        copy.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        live = ET.fromstring(copy.XMLDesc(0))
    finally:
        guest.remove_domain(copy)
    assert [s.get("file") for s in defined.iterfind("devices/disk/source")] == [
        doc["disks"]["vda"]["image"]]
    assert defined.find("devices/filesystem") is None
    assert defined.find(f"{{{QEMU_NS}}}commandline") is None
    assert defined.findtext("devices/emulator")          # libvirt's own, filled in
    assert defined.find("devices/shmem") is None
    # As QEMU ran: VNC on loopback, the serial port a pty, the host's own DAC label.
    assert [g.get("listen") for g in live.iterfind("devices/graphics")] == ["127.0.0.1"]
    assert [p.get("type") for p in live.iterfind("devices/serial")] == ["pty"]
    assert [(e.get("model"), e.get("type")) for e in live.iterfind("seclabel")] == [
        ("dac", "dynamic")]

    kept = run("restore", d.name, "--repo", repo, "--to", str(tmp_path / "k"),
               "--keep-host-resources", "--json")
    assert "removed" not in kept.stderr
    text = Path(kept.json()["domain_xml"]).read_text()
    assert str(tmp_path / "host.iso") in text and "hostshare" in text and "opt/borgvm-test" in text
    assert 'listen="0.0.0.0"' in text and "<shmem" in text and "+0:+0" in text
