"""Drive a real, throw-away libvirt/QEMU domain for the end-to-end tests.

The domain never boots anything: it is started paused and "guest writes" are
injected with QEMU's ``qemu-io`` HMP command on the virtio-blk device's own
BlockBackend, i.e. they travel the same block-layer path as guest I/O (and so
mark dirty bitmaps).  Facts about QEMU 7.2 that shape this module:

* ``qemu-io`` prints its result (``wrote 4096/4096 bytes at offset 0`` or
  ``write failed: Input/output error``) on QEMU's *stdout*, which libvirt sends
  to ``/var/log/libvirt/qemu/<name>.log``; the HMP reply itself is empty unless
  the device cannot be found.  So every command is checked twice: the HMP reply
  must be empty and the expected result line must appear in the domain log.
* The device must be named by its full QOM path
  ``/machine/peripheral/<alias>/virtio-backend``; ``-d <alias>`` alone names
  the virtio-blk-pci proxy, which has no block backend.
* ``discard`` is silently ignored unless the disk has ``discard='unmap'``; on
  qcow2 it then zeroes only whole clusters (partial clusters keep their data,
  except a tail that reaches the end of the disk); on raw it punches the exact
  byte range (needs a host filesystem with FALLOC_FL_PUNCH_HOLE).
* qcow2 metadata is cached inside QEMU until a flush, so an image is only
  readable from outside (``qemu-img -U``) after ``flush``, and a SIGKILL can
  lose unflushed qcow2 writes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt
import libvirt_qemu

PREFIX = "borgvm-test-"
MIB = 1024 * 1024
# Marks domains made by this suite; the element records the creating process.
METADATA_URI = "https://borg-vm.invalid/tests/e2e"
METADATA_KEY = "borgvmtest"
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
QEMU_PID_DIR = Path("/run/libvirt/qemu")
SWTPM_LOG_DIR = Path("/var/log/swtpm/libvirt/qemu")   # <name>-swtpm.log, kept by undefine
QEMU_IO_TIMEOUT = 10.0
STATE_TIMEOUT = 30.0
POLL_INTERVAL = 0.01
FORMATS = ("qcow2", "raw")
# OVMF without Secure Boot and without SMM (Debian's ovmf package): the default
# i440fx machine runs it from pflash, no q35 needed. Each UEFI domain gets its
# own copy of the variable store template, made by libvirt on its first start.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MEMORY_MIB = 128
# With 128 MiB, OVMF takes an exception (#GP, #UD) before the real guest's
# kernel runs; 192 MiB boots it (measured), 256 leaves a margin.
UEFI_MEMORY_MIB = 256
# An emulated TPM 2.0: libvirt runs swtpm (swtpm_setup on the first start) with
# its state in /var/lib/libvirt/swtpm/<uuid>/tpm2 (see vmstate.py).
TPM_XML = """
    <tpm model='tpm-crb'>
      <backend type='emulator' version='2.0'/>
    </tpm>"""
AGENT_CHANNEL = "org.qemu.guest_agent.0"
AGENT_CHANNEL_XML = f"""
    <channel type='unix'>
      <target type='virtio' name='{AGENT_CHANNEL}'/>
    </channel>"""


@dataclass(frozen=True)
class Boot:
    """A real guest to boot by direct kernel boot (see realguest.py): its
    kernel, initramfs and command line, and the image its disk vda starts as."""

    kernel: Path
    initrd: Path
    cmdline: str
    root: Path


def poll(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Given a predicate, return its first truthy result, calling it every
    POLL_INTERVAL seconds; raise TimeoutError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def first_difference(a: bytes, b: bytes, chunk: int = 65536) -> int | None:
    """Given two byte strings, return the first offset where they differ
    (the shorter length if one is a prefix of the other), or None if equal."""
    if a == b:
        return None
    n = min(len(a), len(b))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        if a[start:stop] != b[start:stop]:
            return next(i for i in range(start, stop) if a[i] != b[i])
    return n


def kvm_usable(conn: libvirt.virConnect) -> bool:
    """Given a connection, return True if /dev/kvm is read/writable and
    libvirt's domain capabilities offer x86_64 KVM guests on this host."""
    if os.uname().machine != "x86_64":
        return False
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError:
        return False
    return True


def owner_token(pid: int | None = None) -> str | None:
    """Given a pid (default: ours), return "pid:starttime" identifying that
    process across pid reuse, or None if the process does not exist."""
    pid = os.getpid() if pid is None else pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 is starttime; split after the ")" closing the command name.
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"


def owner_alive(token: str) -> bool:
    """Given an owner token from owner_token(), return True if that very
    process still runs; a malformed token counts as alive (be conservative)."""
    pid, _, _ = token.partition(":")
    if not pid.isdigit():
        return True
    return owner_token(int(pid)) == token


def create_image(path: Path, fmt: str, size: int) -> None:
    """Given a path, a format (qcow2/raw) and a size, create the image with
    qemu-img; raise CalledProcessError if qemu-img fails."""
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), str(size)],
                   check=True, capture_output=True, text=True)


def image_info(path: Path, fmt: str) -> dict:
    """Given an image path and format, return `qemu-img info` as a dict
    (force-shared, so it works while QEMU holds the image)."""
    out = subprocess.run(["qemu-img", "info", "-U", "-f", fmt, "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def domain_xml(name: str, virt_type: str, disks: list[tuple[str, Path, str]],
               discard: str | None, owner: str,
               metadata: tuple[str, str] = (METADATA_KEY, METADATA_URI),
               boot: Boot | None = None, serial: Path | None = None,
               nvram: Path | None = None, tpm: bool = False) -> str:
    """Given a name, 'kvm' or 'qemu', (target, path, format) disks, the
    driver's discard mode (None: libvirt default), an owner token and the
    (key, namespace URI) to tag it with, return the XML of a 1 vCPU guest of
    MEMORY_MIB without network or graphics: without OS, or with `boot` the
    real guest, its serial console written to the file `serial` and a guest
    agent channel. With `nvram` its firmware is OVMF (UEFI) with its variables
    in that file (made from OVMF_VARS on the first start) and it has
    UEFI_MEMORY_MIB; with `tpm` it has an emulated TPM 2.0. bench/lab.py
    builds its domains with this too, under its own namespace."""
    key, uri = metadata
    discard_attr = f" discard='{discard}'" if discard else ""
    disk_xml = "".join(
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'{discard_attr}/>
      <source file='{_attr(path)}'/>
      <target dev='{target}' bus='virtio'/>
    </disk>"""
        for target, path, fmt in disks)
    os_xml, devices_xml, on_reboot = ("", "", "") if boot is None else (
        boot_os_xml(boot), boot_devices_xml(serial),
        "\n  <on_reboot>destroy</on_reboot>")   # a panic (panic=-1) ends the domain
    firmware_xml = "" if nvram is None else uefi_os_xml(nvram)
    # libvirt refuses UEFI on x86 without ACPI (OVMF needs its tables).
    features_xml = "" if nvram is None else "\n  <features><acpi/></features>"
    tpm_xml = TPM_XML if tpm else ""
    memory = MEMORY_MIB if nvram is None else UEFI_MEMORY_MIB
    return f"""<domain type='{virt_type}'>
  <name>{name}</name>
  <metadata>
    <{key}:owner xmlns:{key}='{uri}'>{owner}</{key}:owner>
  </metadata>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type>{firmware_xml}{os_xml}</os>{features_xml}{on_reboot}
  <devices>{disk_xml}{devices_xml}{tpm_xml}
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _attr(value: object) -> str:
    """Given a value, return it escaped for a single-quoted XML attribute."""
    return escape(str(value), {"'": "&apos;"})


def uefi_os_xml(nvram: Path) -> str:
    """Given the file for a domain's UEFI variables, return the <os> children
    that boot it with OVMF, the variables starting as a copy of OVMF_VARS."""
    return (f"<loader readonly='yes' type='pflash'>{escape(str(OVMF_CODE))}</loader>"
            f"<nvram template='{_attr(OVMF_VARS)}'>{escape(str(nvram))}</nvram>")


def boot_os_xml(boot: Boot) -> str:
    """Given a Boot, return the <os> children of its direct kernel boot."""
    return (f"<kernel>{escape(str(boot.kernel))}</kernel>"
            f"<initrd>{escape(str(boot.initrd))}</initrd>"
            f"<cmdline>{escape(boot.cmdline)}</cmdline>")


def boot_devices_xml(serial: Path) -> str:
    """Given a file for the serial console, return the <devices> children a
    real guest needs besides its disk: that serial port and the agent channel."""
    return serial_xml(serial) + AGENT_CHANNEL_XML


def serial_xml(path: Path) -> str:
    """Given a file, return a serial port <devices> child that writes to it."""
    return f"""
    <serial type='file'>
      <source path='{_attr(path)}'/>
      <target port='0'/>
    </serial>"""


def with_boot(xml: str, name: str, boot: Boot, serial: Path) -> str:
    """Given domain XML (e.g. what borg-vm restore wrote, which drops the
    kernel, initrd and serial file of the host), a new name, a Boot and a
    serial console file, return it renamed and booting `boot`'s kernel with
    that console. The metadata that marks the suite's domains is kept."""
    root = ET.fromstring(xml)
    root.find("name").text = name
    os_ = root.find("os")
    for e in [*os_.findall("kernel"), *os_.findall("initrd"), *os_.findall("cmdline")]:
        os_.remove(e)
    os_.extend(ET.fromstring(f"<os>{boot_os_xml(boot)}</os>"))
    devices = root.find("devices")
    for e in devices.findall("serial") + devices.findall("console"):
        devices.remove(e)
    devices.append(ET.fromstring(serial_xml(serial)))
    if agent_channel(root) is None:
        devices.append(ET.fromstring(AGENT_CHANNEL_XML))
    return ET.tostring(root, encoding="unicode")


def agent_channel(domain: ET.Element) -> ET.Element | None:
    """Given a parsed domain XML, return the target of its guest agent
    channel (its state attribute says if the agent is connected), or None."""
    return next((t for t in domain.iterfind("devices/channel/target")
                 if t.get("name") == AGENT_CHANNEL), None)


def domain_owner(dom: libvirt.virDomain, uri: str = METADATA_URI) -> str | None:
    """Given a domain (and the namespace URI its tag was made under), return the
    owner token stored in its metadata, or None if it has none (i.e. it was
    not made by this suite)."""
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, uri, 0)
    except libvirt.libvirtError:
        return None
    return (ET.fromstring(xml).text or "").strip() or None


class QemuLog:
    """Tail of /var/log/libvirt/qemu/<name>.log, where qemu-io output lands."""

    def __init__(self, name: str):
        self.path = QEMU_LOG_DIR / f"{name}.log"

    def mark(self) -> tuple[int, int]:
        """Return (inode, size) of the log now; raise AssertionError if the
        log is missing (then qemu-io results cannot be checked)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise AssertionError(f"QEMU log {self.path} does not exist; cannot check "
                                 "qemu-io results (non-default libvirt log location?)") from None
        return st.st_ino, st.st_size

    def since(self, mark: tuple[int, int]) -> str:
        """Given a mark(), return the text appended since, following one
        rotation by virtlogd (the old file is then <name>.log.0)."""
        ino, size = mark
        now = self.path.stat()
        if now.st_ino == ino and now.st_size >= size:
            return self._read(self.path, size)
        rotated = self.path.with_name(self.path.name + ".0")
        old = self._read(rotated, size) if rotated.exists() and rotated.stat().st_ino == ino else ""
        return old + self._read(self.path, 0)

    @staticmethod
    def _read(path: Path, offset: int) -> str:
        """Given a path and an offset, return the file's text from there."""
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


class Domain:
    """A running (or killed) test domain with its disks and a model of them.

    `model[target]` is a bytearray of the guest-visible contents that the
    helpers below have produced; it becomes None when a kill may have lost
    unflushed qcow2 writes, and is None from the start for disks filled
    before the domain started (create_domain's fill).
    """

    def __init__(self, dom: libvirt.virDomain, workdir: Path, disks: dict[str, Path],
                 formats: dict[str, str], sizes: dict[str, int], discard: str | None,
                 model: bool = True):
        self.dom = dom
        self.name = dom.name()
        self.workdir = workdir
        self.disks = disks
        self.formats = formats
        self.sizes = sizes
        self.discard_mode = discard
        self.model: dict[str, bytearray | None] = {t: bytearray(s) if model else None
                                                   for t, s in sizes.items()}
        self.cluster_sizes = {t: image_info(p, formats[t]).get("cluster-size", 1)
                              if formats[t] == "qcow2" else 1 for t, p in disks.items()}
        self._unflushed: set[str] = set()
        self._log = QemuLog(self.name)
        # target -> its images, bottom first, once snapshot() gave it overlays
        self.layers: dict[str, list[Path]] = {}
        self.serial: Path | None = None   # a real guest's serial console (realguest.py)
        self.started = 0.0                # time.monotonic() when it was last started

    # -- guest I/O -------------------------------------------------------
    def write(self, target: str, offset: int, length: int, pattern: int) -> None:
        """Given a disk, a range and a byte value, make the guest write that
        byte over the range; raise AssertionError if QEMU reports an error."""
        if not 0 <= pattern <= 255:
            raise ValueError(f"pattern {pattern} is not a byte value")
        self._check_range(target, offset, length)
        self._qemu_io(target, f"write -P {pattern:#04x} {offset} {length}",
                      f"wrote {length}/{length} bytes at offset {offset}")
        self._model_fill(target, offset, length, pattern)

    def read(self, target: str, offset: int, length: int, pattern: int) -> None:
        """Given a disk, a range and a byte value, make the guest read the range
        and check that it holds only that byte; raise AssertionError if QEMU
        reports an error (a failed read) or other bytes."""
        self._check_range(target, offset, length)
        self._qemu_io(target, f"read -P {pattern:#04x} {offset} {length}",
                      f"read {length}/{length} bytes at offset {offset}")

    def write_zeroes(self, target: str, offset: int, length: int, unmap: bool = False) -> None:
        """Given a disk and a range, make the guest write zeroes there
        (`unmap`: allow deallocation, effective only with discard='unmap');
        raise AssertionError if QEMU reports an error."""
        self._check_range(target, offset, length)
        flags = "-z -u" if unmap else "-z"
        self._qemu_io(target, f"write {flags} {offset} {length}",
                      f"wrote {length}/{length} bytes at offset {offset}")
        self._model_fill(target, offset, length, 0)

    def discard(self, target: str, offset: int, length: int) -> None:
        """Given a disk and a range, make the guest discard it; the model
        zeroes what QEMU really zeroes (see discarded_range); raise
        AssertionError if QEMU reports an error."""
        self._check_range(target, offset, length)
        self._qemu_io(target, f"discard {offset} {length}",
                      f"discard {length}/{length} bytes at offset {offset}")
        lo, hi = self.discarded_range(target, offset, length)
        if hi > lo:
            self._model_fill(target, lo, hi - lo, 0)

    def discarded_range(self, target: str, offset: int, length: int) -> tuple[int, int]:
        """Given a discard request, return the [lo, hi) byte range that then
        reads as zeros: nothing without discard='unmap', the exact range on
        raw, the whole clusters inside it on qcow2 (a tail ending at the end
        of the disk counts as whole); hi <= lo means nothing."""
        if self.discard_mode != "unmap":
            return (0, 0)
        cs = self.cluster_sizes[target]
        end = offset + length
        lo = -(-offset // cs) * cs
        hi = end if end == self.sizes[target] else end // cs * cs
        return (lo, hi)

    def flush(self, target: str) -> None:
        """Given a disk, flush QEMU's caches for it to the image file (qcow2
        metadata included); raise AssertionError if the HMP reply is an error.
        qemu-io prints nothing on flush, so a failed flush goes unnoticed."""
        self._hmp_qemu_io(target, "flush")
        self._unflushed.discard(target)

    def flush_all(self) -> None:
        """Flush every disk of the domain."""
        for target in self.disks:
            self.flush(target)

    # -- reading back -----------------------------------------------------
    def read_disk(self, target: str) -> bytes:
        """Given a disk, return its whole guest-visible contents now: flush
        it if QEMU runs, then `qemu-img convert -U` the image to raw."""
        if self.dom.isActive():
            self.flush(target)
        fd, out = tempfile.mkstemp(prefix=f"read-{target}-", suffix=".raw", dir=self.workdir)
        os.close(fd)
        try:
            subprocess.run(["qemu-img", "convert", "-U", "-f", self.formats[target], "-O", "raw",
                            str(self.disks[target]), out], check=True, capture_output=True, text=True)
            data = Path(out).read_bytes()
        finally:
            os.unlink(out)
        if len(data) != self.sizes[target]:
            raise AssertionError(f"{target}: read {len(data)} bytes, disk has {self.sizes[target]}")
        return data

    def views(self) -> dict[str, bytes]:
        """Return every disk's guest-visible contents now, by target."""
        return {t: self.read_disk(t) for t in sorted(self.disks)}

    def assert_matches_model(self, target: str) -> None:
        """Given a disk, raise AssertionError naming the first differing
        offset if read_disk(target) differs from the model."""
        expected = self.model[target]
        if expected is None:
            raise AssertionError(f"{target}: model was invalidated by kill_qemu(flush_first=False)")
        actual = self.read_disk(target)
        at = first_difference(actual, bytes(expected))
        if at is not None:
            raise AssertionError(f"{self.name} {target}: disk differs from model at offset {at}: "
                                 f"disk {actual[at:at + 16].hex()} model {expected[at:at + 16].hex()}")

    # -- lifecycle -----------------------------------------------------------
    def pid(self) -> int:
        """Return the pid of this domain's QEMU, read from libvirt's pid file
        and checked against /proc/<pid>/cmdline; raise AssertionError if the
        file is missing or the process is not this domain's QEMU."""
        pidfile = QEMU_PID_DIR / f"{self.name}.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError) as e:
            raise AssertionError(f"cannot find QEMU of {self.name} via {pidfile}: {e}") from e
        if f"guest={self.name},".encode() not in b",".join(cmdline) + b",":
            raise AssertionError(f"pid {pid} from {pidfile} is not the QEMU of {self.name}")
        return pid

    def kill_qemu(self, flush_first: bool = True) -> None:
        """SIGKILL this domain's QEMU and wait until libvirt reports it shut
        off; raise TimeoutError if that takes over STATE_TIMEOUT.  With
        flush_first=False, qcow2 writes since the last flush may be lost, so
        the model of such disks becomes None."""
        if flush_first:
            self.flush_all()
        else:
            for target in self._unflushed:
                if self.formats[target] == "qcow2":
                    self.model[target] = None
        self._unflushed.clear()
        os.kill(self.pid(), signal.SIGKILL)
        poll(lambda: self.dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, STATE_TIMEOUT,
             f"{self.name} to be shut off after SIGKILL")

    def shut_off(self) -> None:
        """Stop QEMU cleanly (`virsh destroy`: SIGTERM, which stores the
        persistent bitmaps) and wait until libvirt reports it shut off."""
        self.flush_all()
        self._unflushed.clear()
        self.dom.destroy()
        poll(lambda: self.dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, STATE_TIMEOUT,
             f"{self.name} to be shut off")

    def write_offline(self, target: str, offset: int, length: int, pattern: int) -> None:
        """Given a disk of the shut-off domain, a range and a byte, write it into
        the disk's top image with qemu-io (as a host tool would; enabled
        persistent bitmaps record it)."""
        self._check_range(target, offset, length)
        subprocess.run(["qemu-io", "-f", self.formats[target], "-c",
                        f"write -P {pattern} {offset} {length}", str(self.disks[target])],
                       check=True, capture_output=True)
        if self.model[target] is not None:
            self.model[target][offset:offset + length] = bytes([pattern]) * length

    def start_paused(self) -> None:
        """Start the (shut off) domain again, paused; raise libvirtError if
        libvirt refuses."""
        self.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)

    def start(self) -> None:
        """Start the (shut off) domain again, running, and note when in
        `started`; a real guest boots anew, its serial console file emptied
        first so that what it reports (realguest.Console) is this boot's.
        Raise libvirtError if libvirt refuses."""
        if self.serial is not None:
            self.serial.write_bytes(b"")
        self.dom.create()
        self.started = time.monotonic()

    def nvram(self) -> Path | None:
        """Return the file of UEFI variables the domain's definition names
        (<os><nvram>), or None for a domain without UEFI."""
        node = ET.fromstring(self.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("os/nvram")
        return None if node is None or not (node.text or "").strip() else Path(node.text.strip())

    # -- the disks' life: snapshots, commits, new disks, resizes ---------------
    def snapshot(self, name: str, metadata: bool = True) -> dict[str, Path]:
        """Given a snapshot name, take an external disk-only snapshot of every
        disk (new qcow2 overlays beside the images, atomically, as `virsh
        snapshot-create-as DOM NAME --disk-only --atomic [--no-metadata]`);
        make the overlays the disks' top images and return them."""
        tops = {t: self.workdir / f"{self.name}-{t}.{name}.qcow2" for t in self.disks}
        disks = "".join(f"<disk name='{t}' snapshot='external'><driver type='qcow2'/>"
                        f"<source file='{escape(str(p))}'/></disk>" for t, p in tops.items())
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
                 | (0 if metadata else libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA))
        self.dom.snapshotCreateXML(
            f"<domainsnapshot><name>{escape(name)}</name><disks>{disks}</disks>"
            "</domainsnapshot>", flags)
        for t, path in tops.items():
            self.layers.setdefault(t, [self.disks[t]]).append(path)
            self.disks[t], self.formats[t] = path, "qcow2"
        return tops

    def blockcommit(self, target: str) -> None:
        """Given a disk, commit every overlay down into the base image and pivot
        to it (`virsh blockcommit DOM TARGET --active --pivot`: with no --base,
        the base is the bottom of the chain); wait for it."""
        self.dom.blockCommit(target, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
        poll(lambda: (lambda info: info and info["cur"] == info["end"])(
            self.dom.blockJobInfo(target, 0)), STATE_TIMEOUT, f"blockcommit of {target} ready")
        self.dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
        poll(lambda: not self.dom.blockJobInfo(target, 0), STATE_TIMEOUT,
             f"blockcommit of {target} ended")
        del self.layers[target][1:]
        self.disks[target] = self.layers[target][0]

    def attach_disk(self, target: str, size: int, fmt: str = "qcow2") -> Path:
        """Given a new target, a size and a format, create an image and add it to
        the domain's definition, then restart the domain (shut down cleanly,
        which persists the bitmaps, and started paused) so it has the disk; the
        test guest has no ACPI, so no PCI hot-plug. Return the image's path."""
        path = self.workdir / f"{self.name}-{target}.{fmt}"
        create_image(path, fmt, size)
        discard = f" discard='{self.discard_mode}'" if self.discard_mode else ""
        self.dom.attachDeviceFlags(
            f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'{discard}/>"
            f"<source file='{escape(str(path))}'/><target dev='{target}' bus='virtio'/></disk>",
            libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        self.flush_all()
        self.dom.destroy()
        self.start_paused()
        self.disks[target], self.formats[target], self.sizes[target] = path, fmt, size
        self.model[target] = bytearray(size)
        self.cluster_sizes[target] = (image_info(path, fmt).get("cluster-size", 1)
                                      if fmt == "qcow2" else 1)
        return path

    def resize(self, target: str, size: int) -> None:
        """Given a disk and a bigger size, grow it while the domain runs
        (`virsh blockresize`); the new bytes read as zeros."""
        if size <= self.sizes[target]:
            raise ValueError(f"{target}: only growing is supported, not {size} bytes")
        self.dom.blockResize(target, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        if self.model[target] is not None:
            self.model[target].extend(bytes(size - self.sizes[target]))
        self.sizes[target] = size

    def xml(self) -> ET.Element:
        """Return the live domain XML, parsed."""
        return ET.fromstring(self.dom.XMLDesc(0))

    def alias(self, target: str) -> str:
        """Given a disk target, return its device alias from the live XML
        (e.g. virtio-disk0); raise AssertionError if the disk has none."""
        for disk in self.xml().iterfind("devices/disk"):
            t, a = disk.find("target"), disk.find("alias")
            if t is not None and t.get("dev") == target and a is not None:
                return a.get("name")
        raise AssertionError(f"{self.name}: no alias for disk {target} (domain not running?)")

    # -- internals ---------------------------------------------------------
    def _check_range(self, target: str, offset: int, length: int) -> None:
        """Given a disk and a range, raise ValueError unless it is a
        non-empty range inside the disk."""
        size = self.sizes[target]
        if offset < 0 or length <= 0 or offset + length > size:
            raise ValueError(f"range {offset}+{length} not inside {target} of size {size}")

    def _model_fill(self, target: str, offset: int, length: int, value: int) -> None:
        """Given a range and a byte, set it in the model (if still valid)."""
        self._unflushed.add(target)
        model = self.model[target]
        if model is not None:
            model[offset:offset + length] = bytes([value]) * length

    def _hmp_qemu_io(self, target: str, command: str) -> None:
        """Given a disk and a qemu-io command, run it through HMP on the
        disk's device backend; raise AssertionError if HMP replies anything
        (qemu-io itself prints only to QEMU's stdout)."""
        device = f"/machine/peripheral/{self.alias(target)}/virtio-backend"
        hmp = f'qemu-io -d {device} "{command}"'
        reply = libvirt_qemu.qemuMonitorCommand(
            self.dom, hmp, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        if reply.strip():
            raise AssertionError(f"{self.name}: HMP {hmp!r} replied {reply.strip()!r}")

    def _qemu_io(self, target: str, command: str, success: str) -> None:
        """Given a disk, a qemu-io command and the line qemu-io prints on
        success, run it and wait for that line in the QEMU log; raise
        AssertionError on an error line and TimeoutError if neither shows."""
        mark = self._log.mark()
        self._hmp_qemu_io(target, command)
        ok = re.compile(rf"^{re.escape(success)}$", re.M)
        bad = re.compile(r"^(?:\S+ failed: .*|Pattern verification failed .*|"
                         r"command \".*\" not found|.* -- .*)$", re.M)

        def outcome() -> str | None:
            text = self._log.since(mark)
            if ok.search(text):
                return "ok"
            m = bad.search(text)
            if m:
                raise AssertionError(f"{self.name} {target}: qemu-io {command!r}: {m.group(0)}")
            return None

        try:
            poll(outcome, QEMU_IO_TIMEOUT, f"qemu-io {command!r} result in {self._log.path}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; log since command: {self._log.since(mark)[-2000:]!r}") from None


def create_domain(conn: libvirt.virConnect, workdir: Path, virt_type: str,
                  disks: list[tuple[str, int, str]], name_suffix: str | None = None,
                  discard: str | None = "unmap", boot: Boot | None = None,
                  fill: Callable[[str, Path], None] | None = None, uefi: bool = False,
                  tpm: bool = False) -> Domain:
    """Given a connection, a private directory, 'kvm'/'qemu' and disks as
    (target, virtual size, 'qcow2'|'raw'), create the images in `workdir`,
    define a persistent domain borgvm-test-<8 hex>[-suffix] and start it
    paused; return its Domain. With `boot`, vda is a copy of boot.root (of
    that size, qcow2) and the domain boots the real guest, running, its serial
    console in workdir/<name>.serial. With fill, call fill(target, image) for
    each image before QEMU opens it, and keep no model of the disks (a big
    disk's model would be as big). With `uefi` it boots through OVMF, its
    variables in workdir/<name>_VARS.fd (libvirt copies OVMF_VARS there on the
    first start); with `tpm` it has an emulated TPM 2.0 (swtpm), its state in
    /var/lib/libvirt/swtpm/<uuid>. Raise ValueError on bad arguments; on a
    libvirt error, undo what was done and re-raise."""
    targets = [t for t, _, _ in disks]
    if not disks or len(set(targets)) != len(targets):
        raise ValueError(f"need distinct disk targets, got {targets}")
    for target, size, fmt in disks:
        if not re.fullmatch(r"vd[a-z]", target) or fmt not in FORMATS or size <= 0 or size % 512:
            raise ValueError(f"bad disk spec {(target, size, fmt)}")
    if name_suffix is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name_suffix):
        raise ValueError(f"bad name suffix {name_suffix!r}")
    if boot is not None and ("vda", image_info(boot.root, "qcow2")["virtual-size"],
                             "qcow2") not in disks:
        raise ValueError(f"vda must be a qcow2 disk the size of {boot.root}")
    name = PREFIX + secrets.token_hex(4) + (f"-{name_suffix}" if name_suffix else "")
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {t: workdir / f"{name}-{t}.{fmt}" for t, _, fmt in disks}
    for target, size, fmt in disks:
        if boot is not None and target == "vda":
            shutil.copyfile(boot.root, paths[target])
        else:
            create_image(paths[target], fmt, size)
        if fill is not None:
            fill(target, paths[target])
    serial = None if boot is None else workdir / f"{name}.serial"
    xml = domain_xml(name, virt_type, [(t, paths[t], f) for t, _, f in disks], discard,
                     owner_token(), boot=boot, serial=serial,
                     nvram=workdir / f"{name}_VARS.fd" if uefi else None, tpm=tpm)
    try:
        return define_domain(conn, xml, workdir, {t: (paths[t], f) for t, _, f in disks},
                             discard, serial, model=fill is None)
    except BaseException:
        for path in paths.values():
            path.unlink(missing_ok=True)
        raise


def define_domain(conn: libvirt.virConnect, xml: str, workdir: Path,
                  disks: dict[str, tuple[Path, str]], discard: str | None = None,
                  serial: Path | None = None, model: bool = True) -> Domain:
    """Given a connection, domain XML of this suite (named PREFIX..., with its
    owner metadata), a private directory, its disks as target -> (image,
    format), their discard mode and its serial console file (None: it has
    none, it is started paused), define and start it; return its Domain
    (without a model of the disks unless model). On a libvirt error, undefine
    it again and re-raise."""
    dom = conn.defineXML(xml)
    try:
        domain = Domain(dom, workdir, {t: p for t, (p, _) in disks.items()},
                        {t: f for t, (_, f) in disks.items()},
                        {t: image_info(p, f)["virtual-size"] for t, (p, f) in disks.items()},
                        discard, model=model)
        domain.serial = serial
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if serial is None else 0)
        domain.started = time.monotonic()
    except BaseException:
        remove_domain(dom)
        raise
    return domain


def remove_domain(dom: libvirt.virDomain) -> None:
    """Given a domain of this suite (name starts with PREFIX), destroy it if
    active and undefine it with its checkpoint/snapshot metadata, its NVRAM
    file and its TPM state (libvirt deletes /var/lib/libvirt/swtpm/<uuid>
    unless told to keep it), then remove its swtpm log; a domain that is
    already gone is fine.  Raise ValueError for a domain outside PREFIX,
    libvirtError if libvirt refuses."""
    name = dom.name()
    if not name.startswith(PREFIX):
        raise ValueError(f"refusing to remove domain {name!r}")
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # died meanwhile
            raise
    flags = 0
    for flag in ("VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA",
                 "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
                 "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
                 "VIR_DOMAIN_UNDEFINE_NVRAM"):
        flags |= getattr(libvirt, flag, 0)
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        if e.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG,
                                      libvirt.VIR_ERR_NO_SUPPORT,
                                      libvirt.VIR_ERR_CONFIG_UNSUPPORTED):
            raise
        dom.undefine()
    finally:
        (SWTPM_LOG_DIR / f"{name}-swtpm.log").unlink(missing_ok=True)


def destroy_test_domain(domain: Domain) -> None:
    """Given a Domain made by create_domain, remove the libvirt domain and
    then its images; raise the first error after trying both."""
    error = None
    try:
        remove_domain(domain.dom)
    except Exception as e:
        error = e
    for path in {*domain.disks.values(), *(p for ps in domain.layers.values() for p in ps)}:
        path.unlink(missing_ok=True)
    if error is not None:
        raise error


def stale_domains(conn: libvirt.virConnect) -> list[libvirt.virDomain]:
    """Given a connection, return domains left by crashed runs of this suite:
    name starts with PREFIX, our metadata names an owner process that no
    longer exists, and every disk image lies under the temp directory."""
    tmp = Path(tempfile.gettempdir()).resolve()
    stale = []
    for dom in conn.listAllDomains(0):
        if not dom.name().startswith(PREFIX):
            continue
        owner = domain_owner(dom)
        if owner is None or owner_alive(owner):
            continue
        try:
            sources = [s.get("file") for s in
                       ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk/source")]
        except libvirt.libvirtError:
            continue  # vanished meanwhile
        if sources and all(s and Path(s).resolve().is_relative_to(tmp) for s in sources):
            stale.append(dom)
    return stale


def allow_traverse(path: Path, top: Path) -> None:
    """Given a directory and an ancestor `top`, add o+x (search only, no
    listing) to it and every directory up to `top`, so a QEMU running as an
    unprivileged user (libvirt-qemu) can reach images in pytest's 0700 temp
    tree; raise ValueError if `top` is not an ancestor of `path`."""
    path, top = path.resolve(), top.resolve()
    if not path.is_relative_to(top):
        raise ValueError(f"{top} is not an ancestor of {path}")
    for d in [path, *path.parents]:
        mode = d.stat().st_mode
        if not mode & 0o001:
            d.chmod(mode | 0o001)
        if d == top:
            break
