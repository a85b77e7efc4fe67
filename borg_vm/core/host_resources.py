"""Host resources in domain XML: what a domain restored or booted from an
archive must not be handed by default. Pure, no I/O.

An archive is only as trustworthy as the repository it is in, and a domain
defined on one host names that host's files and devices: restore and boot hand
libvirt the archived XML without them unless --keep-host-resources.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from borg_vm.core.domxml import parse_xml

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
# Devices that give the guest a piece of the host whatever paths they name.
PASSTHROUGH = ("hostdev", "filesystem")
# libvirt's random number backend reads one of these: they reveal nothing of the host.
ENTROPY_SOURCES = frozenset({"/dev/random", "/dev/urandom", "/dev/hwrng"})
# Top-level elements whose absolute paths are no host files: cgroup partitions, free text.
NOT_HOST_PATHS = ("resource", "metadata", "description", "title")


def strip(domain_xml: str, own: set[str]) -> tuple[str, list[str]]:
    """Return (domain XML that hands the guest nothing of this host, what was removed).

    own are the files the XML may name (the restored images). Removed, each
    named in the list: disks that are not restored but have a source (a
    cdrom's or read-only disk's image, a LUN, a network disk); <filesystem>
    and <hostdev> passthrough, interfaces of type hostdev, host smartcards;
    elements of the qemu namespace (qemu:commandline: any QEMU argument); and
    any other device, <os> element (kernel, initrd, firmware loader) or
    top-level element that names an absolute path but an own file or an
    entropy source: files and sockets of serial ports, consoles, channels,
    vhost-user, evdev input, a passed-through TPM, NVDIMM backing files.
    Removed without mention: <emulator> (libvirt fills in this host's own).
    A removed pflash <loader> leaves firmware='efi' so libvirt picks this
    host's UEFI firmware.
    """
    root = parse_xml(domain_xml)
    removed = []
    for e in list(root):
        if e.tag.startswith(QEMU_NS):
            root.remove(e)
            removed.append("qemu:" + e.tag[len(QEMU_NS):])
    devices, os_ = root.find("devices"), root.find("os")
    if devices is not None:
        removed += _strip_devices(devices, own)
    if os_ is not None:
        removed += _strip_children(os_, own, on_removed=_loader_removed)
    removed += _strip_children(root, own, skip=("devices", "os") + NOT_HOST_PATHS)
    return ET.tostring(root, encoding="unicode"), removed


def _strip_devices(devices: ET.Element, own: set[str]) -> list[str]:
    removed = []
    for dev in list(devices):
        if dev.tag == "emulator":
            devices.remove(dev)
        elif dev.tag == "disk":
            removed += _strip_disk(devices, dev, own)
        elif (dev.tag in PASSTHROUGH or (dev.tag, dev.get("type")) == ("interface", "hostdev")
              or (dev.tag, dev.get("mode")) == ("smartcard", "host")):
            devices.remove(dev)
            removed.append(_describe(dev, _host_paths(dev, own)))
    return removed + _strip_children(devices, own)


def _strip_disk(devices: ET.Element, disk: ET.Element, own: set[str]) -> list[str]:
    """Remove a disk that is not restored but has a source; from a restored one,
    remove what names a host path besides its image."""
    source = disk.find("source")
    if source is not None and source.get("file") in own:
        return _strip_children(disk, own, label=f"disk {_target(disk)}")
    paths = _host_paths(disk, own)
    if paths or (source is not None and (source.attrib or len(source))):
        devices.remove(disk)
        return [_describe(disk, paths or [" ".join(
            v for k, v in source.attrib.items() if k in ("protocol", "name", "pool", "volume"))])]
    return []


def _strip_children(parent: ET.Element, own: set[str], skip: tuple[str, ...] = (),
                    label: str = "", on_removed=None) -> list[str]:
    """Remove the children of parent (but those named in skip) that name a host path;
    return their descriptions, each prefixed with label; call on_removed(parent, child)."""
    removed = []
    for e in list(parent):
        if e.tag in skip or not (paths := _host_paths(e, own)):
            continue
        parent.remove(e)
        removed.append((label + ": " if label else "") + _describe(e, paths))
        if on_removed:
            on_removed(parent, e)
    return removed


def _loader_removed(os_: ET.Element, loader: ET.Element) -> None:
    """Let libvirt pick this host's UEFI firmware in place of a removed pflash loader."""
    if loader.get("type") != "pflash" or os_.get("firmware"):
        return
    os_.set("firmware", "efi")
    if loader.get("secure") == "yes" and os_.find("firmware") is None:
        ET.SubElement(ET.SubElement(os_, "firmware"), "feature", enabled="yes",
                      name="secure-boot")


def _host_paths(e: ET.Element, own: set[str]) -> list[str]:
    """Return the absolute paths e names in its attributes and texts, but own files
    and entropy sources."""
    values = [v for x in e.iter() for v in (*x.attrib.values(), (x.text or "").strip())]
    return [v for v in values if v.startswith("/") and v not in own
            and v not in ENTROPY_SOURCES]


def _target(disk: ET.Element) -> str:
    target = disk.find("target")
    return "" if target is None else target.get("dev", "")


def _describe(e: ET.Element, paths: list[str]) -> str:
    """Return e.g. 'disk sda (/iso/debian.iso)', 'hostdev pci', 'serial file (/tmp/log)'."""
    kind = _target(e) if e.tag == "disk" else e.get("type", "")
    return " ".join(filter(None, (e.tag, kind))) + (f" ({paths[0]})" if paths else "")
