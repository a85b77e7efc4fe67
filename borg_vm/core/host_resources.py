"""Host resources in domain XML: what a domain restored or booted from an
archive is not handed unless --keep-host-resources. Pure, no I/O.

An archive is only as trustworthy as the repository it is in, and a domain
defined on one host reaches into that host and may be open to its network.
Host resources are whatever reaches beyond the guest: the host's files,
devices, sockets, NICs and sound; ports listening beyond loopback;
connections to other hosts; memory shared with other processes; a security
label of the archive's choosing. strip() keeps of the archived XML only what
is known to reach none of them, rule by rule, in this order::

    element                    kept                                 otherwise
    -------------------------  -----------------------------------  ------------------------
    qemu:* (commandline, ...)  -                                    removed
    <emulator>                 -                                    removed, unmentioned:
                                                                    libvirt puts the host's
    <disk>                     restored, on its image; no source    removed
                               (an empty CD-ROM)
    <hostdev> <filesystem>     -                                    removed
    <shmem>
    <interface>                INTERFACES (direct: not in           removed
                               passthrough mode)
      <portForward>            -                                    removed
    <graphics>                 vnc, spice, rdp listening on         listen -> 127.0.0.1
                               loopback, the host's default (no
                               address), a socket or nothing
                               egl-headless; dbus without address   removed (sdl, desktop)
    <serial> <parallel>        a backend of CLOSED_CHARDEVS, or     -> pty
    <console>                  unix without a path (libvirt's)
    <channel> <redirdev>       the same                             removed
    <smartcard>                passthrough from the same            removed
    <rng>                      egd from the same; other backends    removed
    <audio>                    AUDIO                                -> none
    any device left, <os>      naming no absolute path but own      removed (a pflash
    child, top-level element   files and ENTROPY_SOURCES            <loader>: firmware='efi')
    but NOT_HOST_PATHS
    <seclabel>, anywhere       -                                    removed: the host's
                                                                    default labelling
                                                                    applies; unmentioned if
                                                                    that is what it asked
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Callable

from borg_vm.core.domxml import parse_xml, to_text

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
LOOPBACK = "127.0.0.1"
# Graphics that listen for clients (VNC, SPICE, RDP), and those that do not: rendered
# on the host's GPU for one of those, or exported on libvirt's own D-Bus.
LISTENING_GRAPHICS = frozenset({"vnc", "spice", "rdp"})
GRAPHICS = LISTENING_GRAPHICS | {"egl-headless", "dbus"}
# Character device backends that reach nothing beyond QEMU and libvirt: a pseudo-terminal
# libvirt allocates, nothing, QEMU's own console, channels to the graphics' client. A
# unix socket is one too when libvirt makes it (no path given).
CLOSED_CHARDEVS = frozenset({"pty", "null", "vc", "spicevmc", "spiceport", "qemu-vdagent",
                             "dbus"})
# What a serial, parallel or console port made a pty keeps: which port of the guest it is.
PORT_IDENTITY = ("target", "alias", "address")
# Interfaces on the host's networks: a libvirt network, a bridge, QEMU's user-mode
# networking (its port forwards removed), a tap device, macvtap (but in passthrough
# mode, which hands the guest the host's NIC).
INTERFACES = frozenset({"network", "bridge", "user", "ethernet", "direct"})
# Audio backends that play on nothing of the host: nowhere, or to the graphics' client.
AUDIO = frozenset({"none", "spice", "dbus"})
# libvirt's random number backend reads one of these: they reveal nothing of the host.
ENTROPY_SOURCES = frozenset({"/dev/random", "/dev/urandom", "/dev/hwrng"})
# Top-level elements whose absolute paths are no host files: cgroup partitions, free text.
NOT_HOST_PATHS = ("resource", "metadata", "description", "title")


def strip(domain_xml: str, own: set[str]) -> tuple[str, list[str]]:
    """Given domain XML and own, the files it may name (the restored images), return
    (the XML without host resources, by the rules in this module's docstring, and
    what was removed or changed, in that order: 'disk sda (/dev/sda)', 'graphics
    vnc listen 0.0.0.0 -> 127.0.0.1', 'serial tcp (connect 198.51.100.7:4555) -> pty').
    """
    root = parse_xml(domain_xml)
    changes = []
    for e in list(root):
        if e.tag.startswith(QEMU_NS):
            root.remove(e)
            changes.append("qemu:" + e.tag[len(QEMU_NS):])
    devices, os_ = root.find("devices"), root.find("os")
    if devices is not None:
        changes += _strip_devices(devices, own)
    changes += _strip_seclabels(root)
    if os_ is not None:
        changes += _strip_children(os_, own, on_removed=_loader_removed)
    changes += _strip_children(root, own, skip=("devices", "os") + NOT_HOST_PATHS)
    return to_text(root), changes


def _strip_devices(devices: ET.Element, own: set[str]) -> list[str]:
    changes = []
    for dev in list(devices):
        if rule := DEVICE_RULES.get(dev.tag):
            changes += rule(devices, dev, own)
    return changes + _strip_children(devices, own)


def _strip_disk(devices: ET.Element, disk: ET.Element, own: set[str]) -> list[str]:
    """Remove a disk that is not restored but has a source; from a restored one,
    remove what names a host path besides its image."""
    source = disk.find("source")
    if source is not None and source.get("file") in own:
        return _strip_children(disk, own, label=f"disk {_target(disk)}")
    paths = _host_paths(disk, own)
    if not (paths or (source is not None and (source.attrib or len(source)))):
        return []
    devices.remove(disk)
    named = [] if source is None else [v for k, v in source.attrib.items()
                                       if k in ("protocol", "name", "pool", "volume")]
    return [_describe(disk, paths or [" ".join(named)])]


# A device rule: given <devices>, one of its children and the own files, change or
# remove the child; return what it changed, as _describe says it.
DeviceRule = Callable[[ET.Element, ET.Element, set[str]], list[str]]


def _emulator(devices: ET.Element, emulator: ET.Element, own: set[str]) -> list[str]:
    """Remove <emulator>, without mention: libvirt fills in this host's own."""
    devices.remove(emulator)
    return []


def _passthrough(devices: ET.Element, dev: ET.Element, own: set[str]) -> list[str]:
    """Remove a device that hands the guest a piece of the host whatever paths it names."""
    return _remove(devices, dev, _host_paths(dev, own))


def _interface(devices: ET.Element, nic: ET.Element, own: set[str]) -> list[str]:
    """Remove an interface but of INTERFACES: the host's NIC handed to the guest
    (hostdev, vdpa, direct in passthrough mode), or a socket to other hosts or
    processes (udp, mcast, server, client, vhostuser); remove the port forwards of
    user-mode networking (they listen on the host's addresses)."""
    kind, source = nic.get("type", ""), nic.find("source")
    mode = "" if source is None else source.get("mode", "")
    if kind not in INTERFACES or (kind == "direct" and mode == "passthrough"):
        where = _where(nic, own)
        if not where and source is not None and source.get("dev"):
            where = [f"{source.get('dev')} {mode}".strip()]   # the host's NIC
        return _remove(devices, nic, where)
    changes = []
    for forward in nic.findall("portForward"):
        nic.remove(forward)
        ports = forward.find("range")
        port = "" if ports is None else "-".join(filter(None, (ports.get("start"),
                                                                ports.get("end"))))
        changes.append(f"interface {kind}: portForward {forward.get('proto', '')} "
                       f"({forward.get('address', '')}:{port})")
    return changes


def _audio(devices: ET.Element, audio: ET.Element, own: set[str]) -> list[str]:
    """Make an audio backend that plays on the host (its sound card, a sound server,
    a file) play nowhere; the sound devices that name its id keep it."""
    kind = audio.get("type", "")
    if kind in AUDIO:
        return []
    change = _describe(audio, _host_paths(audio, own) or [audio.get("serverName", "")])
    backend_id = audio.get("id")
    audio.attrib.clear()
    for child in list(audio):
        audio.remove(child)
    if backend_id is not None:
        audio.set("id", backend_id)
    audio.set("type", "none")
    return [f"{change} -> none"]


def _port(devices: ET.Element, port: ET.Element, own: set[str]) -> list[str]:
    """Make a serial, parallel or console port that reaches beyond QEMU and libvirt a
    pty: the guest keeps its port, and `virsh console` reaches it."""
    if _closed(port.get("type", ""), port, own):
        return []
    change = f"{_describe(port, _where(port, own))} -> pty"
    for child in list(port):
        if child.tag not in PORT_IDENTITY:
            port.remove(child)
    port.set("type", "pty")
    return [change]


def _chardev(devices: ET.Element, dev: ET.Element, own: set[str]) -> list[str]:
    """Remove a channel or USB redirection that reaches beyond QEMU and libvirt."""
    return [] if _closed(dev.get("type", ""), dev, own) else _remove(devices, dev,
                                                                      _where(dev, own))


def _smartcard(devices: ET.Element, card: ET.Element, own: set[str]) -> list[str]:
    """Remove a smartcard of the host (its reader, its certificates), or passed through
    from anything but the graphics' client."""
    if card.get("mode") == "passthrough" and _closed(card.get("type", ""), card, own):
        return []
    return _remove(devices, card, _where(card, own))


def _rng(devices: ET.Element, rng: ET.Element, own: set[str]) -> list[str]:
    """Remove a random number generator fed by an EGD that reaches beyond QEMU and
    libvirt (other backends read the host's entropy source: see ENTROPY_SOURCES)."""
    backend = rng.find("backend")
    if backend is None or backend.get("model") != "egd" or _closed(backend.get("type", ""),
                                                                   backend, own):
        return []
    devices.remove(rng)
    where = _where(backend, own)
    return [f"rng egd {backend.get('type', '')}" + (f" ({where[0]})" if where else "")]


def _closed(kind: str, dev: ET.Element, own: set[str]) -> bool:
    """Return whether a character device of backend type kind, given by dev, reaches
    nothing beyond QEMU and libvirt: CLOSED_CHARDEVS and unix sockets libvirt makes."""
    return kind in CLOSED_CHARDEVS | {"unix"} and not _host_paths(dev, own)


def _graphics(devices: ET.Element, graphics: ET.Element, own: set[str]) -> list[str]:
    """Remove graphics that show on the host (sdl, desktop) or join one of its D-Bus
    buses; make those that listen for clients listen on loopback only."""
    kind = graphics.get("type", "")
    if kind not in GRAPHICS or (kind == "dbus" and graphics.get("address")):
        return _remove(devices, graphics, [graphics.get("address", "")])
    if kind not in LISTENING_GRAPHICS or (exposed := _exposed_listen(graphics)) is None:
        return []
    for listen in graphics.findall("listen"):
        graphics.remove(listen)
    graphics.set("listen", LOOPBACK)
    graphics.insert(0, ET.Element("listen", type="address", address=LOOPBACK))
    return [f"graphics {kind} listen {exposed} -> {LOOPBACK}"]


def _exposed_listen(graphics: ET.Element) -> str | None:
    """Return the first listen of graphics beyond loopback (an address, 'network NAME'),
    or None if it listens on loopback, the host's default listen address (none
    given), a socket or nothing."""
    if "listen" in graphics.attrib and not _loopback(graphics.get("listen", "")):
        return graphics.get("listen") or "''"
    for listen in graphics.iterfind("listen"):
        kind, address = listen.get("type", ""), listen.get("address")
        if kind == "address" and address is not None and not _loopback(address):
            return address or "''"
        if kind not in ("address", "socket", "none"):
            return f"{kind} {listen.get(kind, '')}".strip()
    return None


def _loopback(address: str) -> bool:
    """Return whether address is an IP address of loopback; a host name is not known
    to be (it resolves on the host)."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


DEVICE_RULES: dict[str, DeviceRule] = {
    "emulator": _emulator, "disk": _strip_disk,
    "hostdev": _passthrough, "filesystem": _passthrough, "shmem": _passthrough,
    "interface": _interface, "audio": _audio,
    "graphics": _graphics, "serial": _port, "parallel": _port, "console": _port,
    "channel": _chardev, "redirdev": _chardev, "smartcard": _smartcard, "rng": _rng}


def _strip_seclabels(root: ET.Element) -> list[str]:
    """Remove the domain's <seclabel>s and those of its devices; return them but those
    that ask for the host's default labelling anyway (see _default_label)."""
    changes = []
    for label in root.findall("seclabel"):
        root.remove(label)
        if not _default_label(label):
            changes.append(_describe_label(label))
    devices = root.find("devices")
    for dev in devices if devices is not None else ():
        for parent in list(dev.iter()):
            for label in parent.findall("seclabel"):
                parent.remove(label)
                changes.append(f"{_describe(dev, [])}: {_describe_label(label)}")
    return changes


def _default_label(label: ET.Element) -> bool:
    """Return whether a domain's <seclabel> asks for what libvirt does without one: a
    dynamic label (the one it chose for a run may be shown), images relabelled, no
    base label of its own."""
    return (label.get("type", "dynamic") == "dynamic" and label.get("relabel", "yes") == "yes"
            and label.find("baselabel") is None)


def _describe_label(label: ET.Element) -> str:
    """Return e.g. 'seclabel dac static relabel=no (+0:+0)', 'seclabel none'."""
    words = ["seclabel", label.get("model", ""), label.get("type", "")]
    if label.get("relabel") == "no":
        words.append("relabel=no")
    text = (label.findtext("label") or label.findtext("baselabel") or "").strip()
    return " ".join(filter(None, words)) + (f" ({text})" if text else "")


def _strip_children(parent: ET.Element, own: set[str], skip: tuple[str, ...] = (),
                    label: str = "",
                    on_removed: Callable[[ET.Element, ET.Element], None] | None = None
                    ) -> list[str]:
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


def _remove(parent: ET.Element, e: ET.Element, where: list[str]) -> list[str]:
    """Remove e from parent; return [its description] (see _describe)."""
    parent.remove(e)
    return [_describe(e, where)]


def _where(e: ET.Element, own: set[str]) -> list[str]:
    """Return what e names beyond the guest: the host paths it names, or else
    [the network endpoints of its sources] (see _endpoints) if any."""
    return _host_paths(e, own) or _endpoints(e)


def _endpoints(e: ET.Element) -> list[str]:
    """Return ['bind 0.0.0.0:4556, connect 198.51.100.7:4557'] for the <source>s in e that
    name a host or port (as character devices and socket interfaces do), or []."""
    ends = [" ".join(filter(None, (s.get("mode"), f"{s.get('host') or s.get('address') or ''}:"
                                                  f"{s.get('service') or s.get('port') or ''}")))
            for s in e.iter("source") if {"host", "service", "address", "port"} & set(s.attrib)]
    return [", ".join(ends)] if ends else []


def _describe(e: ET.Element, where: list[str]) -> str:
    """Return e.g. 'disk sda (/iso/debian.iso)', 'hostdev pci', 'serial file (/tmp/log)':
    its tag, its kind and the first of where (what it named outside the guest), if any."""
    kind = _target(e) if e.tag == "disk" else e.get("type") or e.get("mode") or e.get("name", "")
    return " ".join(filter(None, (e.tag, kind))) + (f" ({where[0]})" if where and where[0] else "")
