"""Hand-made borg-vm archives, written into a real repository with 'borg
import-tar' as anyone with write access to the repository could: valid
ones to restore, and damaged or hostile variants of them.

And running the real borg-vm CLI against them (a module of its own for the
same reason as realstack.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from array import array
from dataclasses import dataclass, replace
from datetime import datetime

from realstack import CHUNKER, MTIME, TIMESTAMP, KiB, MiB, log_run

from borg_vm.core.extent import DATA, Extent
from borg_vm.core.extent_arrays import ExtentArray
from borg_vm.format import names as fmt
from borg_vm.format import packing
from borg_vm.format.manifest import DiskRecord, Manifest
from borg_vm.format.tarstream import TarWriter
from borg_vm.services import keyring

DOMAIN = "borgvm-test-handmade"
SNAPSHOT = "20261126T020000Z"
CHECKPOINT = "borgvm-20261126T020000Z"
SIZE = 4 * MiB
ZERO_PIECE = MiB


@dataclass(frozen=True)
class Zeros:
    """The data of a member too big to hold: size zero bytes, streamed."""

    size: int


def domain_xml(targets=("vda",), devices="") -> bytes:
    """Return the XML of a domain with a file disk per target and more devices."""
    disks = "".join(f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                    f"<source file='/vms/{t}.qcow2'/><target dev='{t}' bus='virtio'/></disk>"
                    for t in targets)
    return (f"<domain type='kvm'><name>{DOMAIN}</name><memory>131072</memory>"
            f"<os><type arch='x86_64'>hvm</type></os>"
            f"<devices>{disks}{devices}</devices></domain>").encode()


def checkpoint_xml(checkpoint: str = CHECKPOINT) -> bytes:
    return f"<domaincheckpoint><name>{checkpoint}</name></domaincheckpoint>".encode()


CHECKPOINT_XML = checkpoint_xml()


def manifest(disks: dict[str, bytes], size: int = SIZE, xml: bytes | Zeros | None = None,
             at: str = SNAPSHOT) -> Manifest:
    """Return the manifest of a full backup whose disks hold their data at offset 0,
    taken at the UTC stamp at (checkpoint borgvm-AT), recording the digests of xml
    (default: domain_xml of its disks) and of its checkpoint_xml."""
    records = {t: DiskRecord("full", "qcow2", f"/vms/{t}.qcow2", size,
                                     (Extent(0, len(d), DATA),) if d else (),
                                     hashlib.sha256(d).hexdigest())
               for t, d in disks.items()}
    xml = domain_xml(tuple(disks)) if xml is None else xml
    if isinstance(xml, Zeros):
        xml = bytes(xml.size)
    checkpoint = fmt.CHECKPOINT_PREFIX + at
    when = datetime.strptime(at, "%Y%m%dT%H%M%SZ").strftime("%Y-%m-%dT%H:%M:%SZ")
    return Manifest(domain=DOMAIN, uuid="0b5e0b5e-0000-4000-8000-000000000001",
                            snapshot=SNAPSHOT, checkpoint=checkpoint, level="full",
                            parent_checkpoint=None, parent_archive=None,
                            time=when, disks=records,
                            domain_xml_sha256=hashlib.sha256(xml).hexdigest(),
                            checkpoint_xml_sha256=hashlib.sha256(
                                checkpoint_xml(checkpoint)).hexdigest())


def host_key(borg) -> bytes:
    """Return the key this host signs borg's repository's archives with (its keyring,
    made if there is none): hand-made archives are this host's unless a test
    writes them unsigned, as a planter without the key would."""
    return keyring.load_or_create(borg.repository_id(), ()).signing_key


def sign(borg, m: Manifest, key: bytes | None = None) -> tuple[bytes, str]:
    """Return (manifest.json, archive comment) of m, signed with key (default:
    host_key(borg))."""
    key = host_key(borg) if key is None else key
    return m.signed(key).to_json(), m.summary().signed(key, str(m.name)).to_comment()


def write_archive(borg, disks: dict[str, bytes], *, size: int = SIZE, xml: bytes | None = None,
                  data_members=None, extra=(), manifest_json: bytes | None = None,
                  signed: bool = True, key: bytes | None = None,
                  m: Manifest | None = None) -> str:
    """Write a full borg-vm archive of DOMAIN into borg's repository; return its name.

    By default it is valid: domain.xml, checkpoint.xml, one data member per
    disk at offset 0, manifest.json, and the summary as its comment, both
    signed with key (default: host_key; not signed: neither). Replace the domain XML, the data
    members, the manifest (m, signed like the default; manifest_json, as is),
    or add extra members (before the manifest), to damage it; member data may
    be Zeros(n).
    """
    xml = domain_xml(tuple(disks)) if xml is None else xml
    m = manifest(disks, size, xml) if m is None else m
    manifest_doc, comment = (sign(borg, m, key) if signed
                             else (m.to_json(), m.summary().to_comment()))
    if data_members is None:
        data_members = [(fmt.member_name(t, 0), d) for t, d in disks.items() if d]
    members = [(fmt.DOMAIN_XML, xml), (fmt.CHECKPOINT_XML, checkpoint_xml(m.checkpoint)),
               *data_members, *extra,
               (fmt.MANIFEST, manifest_doc if manifest_json is None else manifest_json)]
    with borg.import_tar(str(m.name), comment=comment, timestamp=TIMESTAMP,
                         compression="lz4", chunker_params=CHUNKER) as proc:
        tar = TarWriter(proc.stdin, MTIME)
        for name, data in members:
            _add(tar, name, data)
        tar.close()
        borg.finish("import-tar", proc)
    return str(m.name)


# A full of vda whose three pieces travel in one pack (format 3), each filled
# with its own byte.
PACK = (Extent(64 * KiB, 4 * KiB), Extent(1 * MiB, 8 * KiB), Extent(3 * MiB + 512, 100))
PACK_FILLS = (0xAA, 0xBB, 0xCC)
PACK_NAME = fmt.member_name("vda", PACK[0].start)
PACK_MAP = fmt.map_member_name(PACK_NAME)
PACK_BYTES = sum(p.length for p in PACK)


def packed_disk() -> bytes:
    """Return the disk a packed archive holds: its pieces, zeros elsewhere."""
    disk = bytearray(SIZE)
    for p, fill in zip(PACK, PACK_FILLS):
        disk[p.start:p.end] = bytes([fill]) * p.length
    return bytes(disk)


def write_packed_archive(borg, members=None) -> str:
    """Write a full of vda holding PACK in one pack (its map, then its data); return
    its name. members replaces the map and data members (to damage them)."""
    data = b"".join(bytes([f]) * p.length for p, f in zip(PACK, PACK_FILLS))
    m = manifest({"vda": data})
    m = replace(m, disks={"vda": replace(m.disks["vda"], extents=PACK,
                                         sha256=hashlib.sha256(data).hexdigest())})
    if members is None:
        members = [(PACK_MAP, packing.map_to_json(PACK)), (PACK_NAME, data)]
    return write_archive(borg, {"vda": data}, data_members=members, m=m)


def spaced_zeros(count: int, apart: int = 1024, length: int = 512) -> ExtentArray:
    """Return count ZERO extents of length bytes, one every apart bytes from 0: what
    a hostile manifest lists by the million (issue 20), and a full restores by
    writing nothing."""
    return ExtentArray(array("Q", range(0, count * apart, apart)),
                       array("Q", [length]) * count, b"\x01" * count)


def write_zeros_archive(borg, size: int, extents: ExtentArray) -> str:
    """Write a full of vda (size bytes) whose manifest lists extents and no data;
    return its name."""
    m = manifest({"vda": b""}, size)
    m = replace(m, disks={"vda": replace(m.disks["vda"], extents=extents)})
    return write_archive(borg, {"vda": b""}, size=size, m=m)


def _add(tar: TarWriter, name: str, data) -> None:
    if not isinstance(data, Zeros):
        tar.add(name, data)
        return
    tar.begin(name, data.size)
    piece = bytes(ZERO_PIECE)
    for start in range(0, data.size, ZERO_PIECE):
        tar.write(piece[:min(ZERO_PIECE, data.size - start)])


def borg_vm(*args: str, code: int | None = 0, extract_from: int | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """Run the real CLI, `python -m borg_vm ARGS`; assert its exit code unless code is None.

    With extract_from, it reads archives with at least that many data bytes with
    list + extract --stdout (reader.EXTRACT_FROM; 0: all), so that way is tried on
    small archives whose comment tells the truth.
    """
    argv = ([sys.executable, "-m", "borg_vm"] if extract_from is None
            else [sys.executable, "-c", _MAIN, "", str(extract_from)])
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=600,
                          **kwargs)
    log_run(args, proc)
    if code is not None:
        assert proc.returncode == code, (f"borg-vm {' '.join(args)} exited {proc.returncode}, "
                                         f"expected {code}\nstderr: {proc.stderr}")
    return proc


# Runs borg-vm's main() in this process, with reader.EXTRACT_FROM set to argv[2]
# unless it is empty, and if argv[1] names a file, writes its peak RSS there on
# the way out: VmHWM, the high-water mark of this process's own memory. Not
# getrusage's ru_maxrss: Linux carries that across execve, so a child of a big
# pytest process would report pytest's peak.
_MAIN = """\
import sys
from borg_vm.cli import main
from borg_vm.format import reader
if sys.argv[2]:
    reader.EXTRACT_FROM = int(sys.argv[2])
try:
    main(sys.argv[3:])
finally:
    if sys.argv[1]:
        with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
            out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


def borg_vm_peak_rss(workdir, *args: str, code: int | None = 0,
                     extract_from: int | None = None):
    """Run the real CLI like borg_vm(); return (its CompletedProcess, the peak RSS in
    bytes of borg-vm's own process: its threads, not borg or qemu-nbd)."""
    out = os.path.join(workdir, "peak-rss")
    proc = subprocess.run([sys.executable, "-c", _MAIN, out,
                           "" if extract_from is None else str(extract_from), *args],
                          capture_output=True, text=True, timeout=600)
    log_run(args, proc)
    if code is not None:
        assert proc.returncode == code, (f"borg-vm {' '.join(args)} exited {proc.returncode}, "
                                         f"expected {code}\nstderr: {proc.stderr}")
    with open(out) as f:
        return proc, int(f.read()) * 1024


def error_line(proc: subprocess.CompletedProcess) -> str:
    """Return the one line borg-vm wrote on stderr; fail if it wrote more (a traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("borg-vm: "), proc.stderr
    return lines[0]


def image_data(path: str, workdir) -> bytes:
    """Return the guest-visible bytes of an image (following its backing chain)."""
    out = os.path.join(workdir, "read.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, out], check=True)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data
