"""libvirt XML documents: read disks out of domain XML, write backup and
checkpoint XML, and rewrite a domain for a restore. Pure, no I/O.

XML is parsed with defusedxml, DTDs refused: domain XML read back from an
archive is only as trustworthy as the repository, and libvirt never writes
a DTD, so no entity is ever expanded.

Formats: https://libvirt.org/formatdomain.html, formatbackup.html,
formatcheckpoint.html.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import defusedxml.ElementTree


def parse_xml(xml: str | bytes) -> ET.Element:
    """Return the root of an XML document; raise ET.ParseError if it is not well-formed,
    defusedxml's DTDForbidden (a ValueError) if it has a DTD."""
    root: ET.Element = defusedxml.ElementTree.fromstring(xml, forbid_dtd=True)
    return root


def to_text(root: ET.Element) -> str:
    """Return root as XML text indented two spaces a level, as libvirt writes it.

    Elements removed or inserted leave their neighbours' whitespace behind
    ('<source/><target', '    </devices>'): what a person reads and edits
    before `virsh define` is laid out anew.
    """
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode")


def read_domain_xml(raw: bytes) -> str:
    """Given domain XML as stored in an archive, return it as text.

    Raise ValueError saying what is wrong, as a predicate ("has no <name>"), if
    it is not UTF-8, not well-formed, has a DTD, or is not a <domain> with a <name>.
    """
    text, root = _read_archived(raw, "domain")
    if not (root.findtext("name") or "").strip():
        raise ValueError("has no <name>")
    return text


def checkpoint_to_redefine(raw: bytes, name: str) -> str:
    """Given checkpoint XML as stored in an archive and the checkpoint's name, return
    XML that redefines it in libvirt on its own: without <parent>, since borg-vm
    keeps one checkpoint per domain and the parent is long deleted.

    Raise ValueError saying what is wrong (as read_domain_xml does), also if it
    names another checkpoint.
    """
    _text, root = _read_archived(raw, "domaincheckpoint")
    if root.findtext("name") != name:
        raise ValueError(f"names checkpoint {root.findtext('name')!r}, not {name!r}")
    for parent in root.findall("parent"):
        root.remove(parent)
    return ET.tostring(root, encoding="unicode")


def _read_archived(raw: bytes, tag: str) -> tuple[str, ET.Element]:
    """Return (text, root) of an XML document from an archive whose root must be tag;
    raise ValueError saying what is wrong, as a predicate."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"is not UTF-8 ({e.reason} at byte {e.start})") from e
    try:
        root = parse_xml(text)
    except ET.ParseError as e:
        raise ValueError(f"is not well-formed XML ({e})") from e
    except defusedxml.DefusedXmlException as e:
        raise ValueError(f"has a DTD, which libvirt never writes ({e!r})") from e
    if root.tag != tag:
        raise ValueError(f"is a <{root.tag}>, not a <{tag}>")
    return text, root


@dataclass(frozen=True)
class DiskSpec:
    """A <disk> of a domain."""

    target: str
    device: str          # disk, cdrom, floppy, lun
    type: str            # file, block, network, volume
    source: str | None
    format: str | None   # driver type: qcow2, raw, ...
    readonly: bool
    shareable: bool

    def skip_reason(self) -> str | None:
        """Return why borg-vm does not back this disk up, or None if it does."""
        if self.device != "disk":
            return f"{self.device} device"
        if self.readonly:
            return "read-only"
        if self.shareable:
            return "shareable"
        if self.type not in ("file", "block"):
            return f"{self.type} disks are not supported"
        if not self.source:
            return "no source (empty drive)"
        return None


def parse_disks(domain_xml: str) -> list[DiskSpec]:
    """Given domain XML, return its disks in document order."""
    return _disks(parse_xml(domain_xml))


def _disks(root: ET.Element) -> list[DiskSpec]:
    return [_disk_spec(d) for d in root.findall("./devices/disk")]


@dataclass(frozen=True)
class LiveDomain:
    """What a backup run needs of a domain's live XML (or a shut-off domain's
    definition), read from one parse of it."""

    xml: str
    disks: tuple[DiskSpec, ...]
    agent_state: str | None              # see agent_channel
    qemu_owner: tuple[int, int] | None   # see qemu_owner

    @classmethod
    def parse(cls, xml: str) -> LiveDomain:
        root = parse_xml(xml)
        return cls(xml, tuple(_disks(root)), _agent_channel(root), _qemu_owner(root))

    @property
    def disk_targets(self) -> list[str]:
        """The targets of its disk devices (not CD-ROMs), in document order."""
        return [s.target for s in self.disks if s.device == "disk" and s.target]


def _disk_spec(d: ET.Element) -> DiskSpec:
    target = d.find("target")
    source = d.find("source")
    driver = d.find("driver")
    return DiskSpec(
        target=target.get("dev", "") if target is not None else "",
        device=d.get("device", "disk"),
        type=d.get("type", "file"),
        source=None if source is None else (source.get("file") or source.get("dev")),
        format=None if driver is None else driver.get("type"),
        readonly=d.find("readonly") is not None,
        shareable=d.find("shareable") is not None)


def domain_uuid(domain_xml: str) -> str:
    return parse_xml(domain_xml).findtext("uuid", "")


AGENT_CHANNEL = "org.qemu.guest_agent.0"


def agent_channel(live_xml: str) -> str | None:
    """Given live domain XML, return the state of its QEMU guest agent channel
    (virtio-serial port AGENT_CHANNEL): "connected", "disconnected", or "" when
    libvirt does not say; None if the domain has no such channel."""
    return _agent_channel(parse_xml(live_xml))


def _agent_channel(root: ET.Element) -> str | None:
    for target in root.iterfind("./devices/channel/target"):
        if target.get("type") == "virtio" and target.get("name") == AGENT_CHANNEL:
            return target.get("state", "")
    return None


def qemu_owner(live_xml: str) -> tuple[int, int] | None:
    """Return (uid, gid) the domain's QEMU runs as (its DAC label), or None if unknown."""
    return _qemu_owner(parse_xml(live_xml))


def _qemu_owner(root: ET.Element) -> tuple[int, int] | None:
    for label in root.findall("./seclabel[@model='dac']/label"):
        owner = dac_label(label.text or "")
        if owner is not None:
            return owner
    return None


def dac_label(text: str) -> tuple[int, int] | None:
    """Parse a DAC label '+UID:+GID' (or 'UID:GID'); None if it is not one."""
    try:
        uid, gid = (int(p.lstrip("+")) for p in text.split(":"))
    except ValueError:
        return None
    return uid, gid


def backup_xml(socket: str, disks: dict[str, tuple[str, str] | None],
               incremental: str | None) -> str:
    """Return pull-mode <domainbackup> XML exporting over a unix socket.

    disks maps every disk target to (scratch file, "full"|"incremental") to
    export it, or None to leave it out.
    """
    root = ET.Element("domainbackup", mode="pull")
    if incremental:
        ET.SubElement(root, "incremental").text = incremental
    ET.SubElement(root, "server", transport="unix", socket=socket)
    elems = ET.SubElement(root, "disks")
    for target, spec in disks.items():
        if spec is None:
            ET.SubElement(elems, "disk", name=target, backup="no")
            continue
        scratch, mode = spec
        assert mode == "full" or incremental, "an incremental export needs a checkpoint"
        disk = ET.SubElement(elems, "disk", name=target, backup="yes", type="file",
                             backupmode=mode)
        if mode == "incremental" and incremental:
            disk.set("incremental", incremental)
        ET.SubElement(disk, "scratch", file=scratch)
    return ET.tostring(root, encoding="unicode")


def backup_sockets(job_xml: str) -> list[str]:
    """Return the unix socket paths a running backup job's XML names."""
    return [s.get("socket", "") for s in parse_xml(job_xml).findall("server")]


def checkpoint_xml(name: str, description: str, bitmaps: dict[str, bool],
                   created: int | None = None) -> str:
    """Return <domaincheckpoint> XML; bitmaps maps each disk target to whether it gets a bitmap.

    With created (seconds since the epoch) it is XML to redefine a checkpoint
    whose bitmaps, named after it, already exist in the images.
    """
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "description").text = description
    if created is not None:
        ET.SubElement(root, "creationTime").text = str(created)
    elems = ET.SubElement(root, "disks")
    for target, bitmap in bitmaps.items():
        disk = ET.SubElement(elems, "disk", name=target, checkpoint="bitmap" if bitmap else "no")
        if bitmap and created is not None:
            disk.set("bitmap", name)
    return ET.tostring(root, encoding="unicode")


def restored_domain_xml(domain_xml: str, new_name: str,
                        images: dict[str, tuple[str, str]], nvram: str | None = None,
                        uuid: str | None = None) -> str:
    """Return domain XML that runs on restored images without clashing with the original.

    The name becomes new_name; the UUID (uuid if given), MAC addresses and the
    NVRAM path (nvram, a restored variable store, if given) are dropped (libvirt
    makes new ones) so the copy can run beside the original; each restored disk
    (target -> (path, format)) points at its image, and other writable disks
    are removed so the copy never writes to the original's disks.
    """
    root = parse_xml(domain_xml)
    name = name_element(root)
    name.text = new_name
    for e in root.findall("uuid"):
        root.remove(e)
    if uuid is not None:
        element = ET.Element("uuid")
        element.text = uuid
        root.insert(list(root).index(name) + 1, element)
    for parent in root.iter():
        for e in parent.findall("nvram") + parent.findall("mac"):
            parent.remove(e)
    os_ = root.find("os")
    if nvram is not None and os_ is not None:
        ET.SubElement(os_, "nvram").text = nvram
    devices = root.find("devices")
    if devices is not None:
        for d in devices.findall("disk"):
            spec = _disk_spec(d)
            if spec.target in images:
                _point_disk_at(d, *images[spec.target])
            elif spec.device == "disk" and not spec.readonly:
                devices.remove(d)
    return to_text(root)


def name_element(root: ET.Element) -> ET.Element:
    """Return the <name> of a domain's XML; raise ValueError if it has none."""
    name = root.find("name")
    if name is None:
        raise ValueError("the domain XML has no <name>")
    return name


def _point_disk_at(disk: ET.Element, path: str, fmt: str) -> None:
    disk.set("type", "file")
    for e in disk.findall("source") + disk.findall("backingStore"):
        disk.remove(e)
    source = ET.Element("source", file=path)
    disk.insert(1 if disk.find("driver") is not None else 0, source)
    driver = disk.find("driver")
    if driver is None:
        driver = ET.Element("driver", name="qemu")
        disk.insert(0, driver)
    driver.set("type", fmt)


def snapshot_images(snapshot_xmls: list[str]) -> dict[str, str]:
    """Given libvirt snapshots' XML, return {image path: snapshot name} for the
    overlays their external disk snapshots created."""
    images = {}
    for xml in snapshot_xmls:
        root = parse_xml(xml)
        for disk in root.findall("./disks/disk[@snapshot='external']"):
            source = disk.find("source")
            path = None if source is None else source.get("file") or source.get("dev")
            if path:
                images[path] = root.findtext("name", "")
    return images
