"""Domain XML of a domain booted straight from the repository (borg-vm boot).
Pure, no I/O.

Each disk of the booted domain is a local qcow2 overlay whose backing is the
disk's read-only NBD export, served by ``borg-vm mount`` on a unix socket::

    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' error_policy='stop' rerror_policy='stop'/>
      <source file='DIR/NEW.vda.qcow2'/>              guest writes land here
      <backingStore type='network'>                   unwritten ranges read from here
        <format type='raw'/>
        <source protocol='nbd'>
          <host transport='unix' socket='/run/borg-vm/boot-UUID/vda.sock'/>
        </source>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>

``virsh blockpull`` (borg-vm boot --finish) copies what the overlay lacks
from the backing and drops it; libvirt then removes the ``<backingStore>``
from the live and the persistent XML. The error policies make QEMU pause the
guest when a read fails (the server is gone) instead of handing it an I/O
error. What borg-vm needs to resume or finish the boot is recorded in the
domain's own metadata (BootRecord), so it survives borg-vm and a reboot of
the host.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from borg_vm.core.domxml import dac_label, name_element, parse_xml

# The namespace of borg-vm's element in <metadata>; the version is part of it.
BOOT_NS = "urn:borg-vm:boot:1"
ERROR_POLICY = "stop"
_FIELDS = ("repository", "domain", "checkpoint", "run")


@dataclass(frozen=True)
class BootRecord:
    """Where a booted domain's disks come from: the repository, the domain and
    checkpoint of the archives served, and the run directory of their server."""

    repository: str
    domain: str
    checkpoint: str
    run: str

    def to_element(self) -> ET.Element:
        root = ET.Element(f"{{{BOOT_NS}}}boot")
        for tag in _FIELDS:
            ET.SubElement(root, f"{{{BOOT_NS}}}{tag}").text = getattr(self, tag)
        return root


def boot_domain_xml(restored_xml: str, uuid: str, sockets: dict[str, str],
                    record: BootRecord) -> str:
    """Given domain XML whose disks point at their overlays (restored_domain_xml),
    a new UUID, each overlay's NBD socket by disk target and the boot record,
    return the XML to define: the UUID set, each of those disks backed by its
    export with the error policies 'stop', the record in <metadata>.

    Raise ValueError if a target in sockets is not a disk of the XML.
    """
    root = parse_xml(restored_xml)
    for old in root.findall("uuid"):
        root.remove(old)
    uuid_element = ET.Element("uuid")
    uuid_element.text = uuid
    root.insert(list(root).index(name_element(root)) + 1, uuid_element)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    metadata.append(record.to_element())
    disks = {_target(d): d for d in root.iterfind("./devices/disk")}
    for target, socket in sockets.items():
        if target not in disks:
            raise ValueError(f"the domain has no disk {target}")
        _back_with_nbd(disks[target], socket)
    return ET.tostring(root, encoding="unicode")


def _back_with_nbd(disk: ET.Element, socket: str) -> None:
    """Give a disk's image the NBD export on socket as its backing, and the error
    policies that pause the guest rather than fail its I/O."""
    driver = disk.find("driver")
    if driver is None:
        driver = ET.Element("driver", name="qemu", type="qcow2")
        disk.insert(0, driver)
    driver.set("error_policy", ERROR_POLICY)
    driver.set("rerror_policy", ERROR_POLICY)
    for old in disk.findall("backingStore"):
        disk.remove(old)
    backing = ET.Element("backingStore", type="network")
    ET.SubElement(backing, "format", type="raw")
    source = ET.SubElement(backing, "source", protocol="nbd")
    ET.SubElement(source, "host", transport="unix", socket=socket)
    ET.SubElement(backing, "backingStore")
    image = disk.find("source")
    if image is None:
        raise ValueError(f"disk {_target(disk)} has no <source>")
    disk.insert(list(disk).index(image) + 1, backing)


def boot_record(domain_xml: str) -> BootRecord | None:
    """Return the boot record in a domain's XML, or None if it has none (it was not
    booted by borg-vm, or its boot was finished)."""
    e = parse_xml(domain_xml).find(f"./metadata/{{{BOOT_NS}}}boot")
    if e is None:
        return None
    fields = {tag: (e.findtext(f"{{{BOOT_NS}}}{tag}") or "").strip() for tag in _FIELDS}
    return BootRecord(**fields) if all(fields.values()) else None


def nbd_backings(domain_xml: str) -> dict[str, str]:
    """Return {disk target: unix socket} of the disks whose image is backed by an NBD
    export on a unix socket (what blockpull has not yet pulled)."""
    out = {}
    for disk in parse_xml(domain_xml).iterfind("./devices/disk"):
        host = disk.find("./backingStore[@type='network']/source[@protocol='nbd']/"
                         "host[@transport='unix']")
        socket = None if host is None else host.get("socket")
        if socket:
            out[_target(disk)] = socket
    return out


def domain_type(domain_xml: str) -> str:
    """Return the domain's type: kvm, qemu, ..."""
    return parse_xml(domain_xml).get("type", "")


def dac_base_label(capabilities_xml: str, virt_type: str) -> tuple[int, int] | None:
    """Given libvirt's host capabilities, return the (uid, gid) QEMU runs as for
    domains of virt_type (the DAC security model's base label), or None if unknown."""
    for model in parse_xml(capabilities_xml).iterfind("./host/secmodel"):
        if model.findtext("model") != "dac":
            continue
        for label in model.iterfind("baselabel"):
            if label.get("type") == virt_type:
                return dac_label(label.text or "")
    return None


def _target(disk: ET.Element) -> str:
    target = disk.find("target")
    return "" if target is None else target.get("dev", "")
