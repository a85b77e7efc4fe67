"""Names in the archive format (format/__init__.py describes it): its versions
and limits, archive names, checkpoint names, member names, levels."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from borg_vm.core import layers as layers_
from borg_vm.core import vmstate

if TYPE_CHECKING:
    from borg_vm.format.summary import Summary

FORMAT_NAME = "borg-vm"
# Borg 1 repositories get version 5 (chains); Borg 2 repositories version 7
# (IMAGES_VERSION: a complete image archive per disk, from version 6, and of the
# disks' sealed snapshot layers, from version 7).
FORMAT_VERSION = 5
IMAGES_FROM = 6         # the first version of complete images (Borg 2 repositories)
LAYER_IMAGES_FROM = 7   # the first whose records name images of sealed layers
IMAGES_VERSION = 7
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
AUTHENTICATED_FROM = 4  # the first version whose comment and manifest carry codes
STATE_FROM = 5          # the first version that holds the domain's state
# Between a record's name and a disk target in the name of its image archive
# (version 6): neither part of a record's name holds it.
IMAGE_SEPARATOR = "~"
# Default chunk size, by the rule of bench/RESULTS.md section 4 (deduplication
# across domains, and the chunk size; bench/NOTES.md "Chunk size (item 4)"):
# against 4 MiB, 256 KiB chunks made the full backup no slower and a clone with
# scattered changes add far less; 64 KiB would add less still, but Borg's index
# memory grows with the number of chunks beyond the rule's bound.
BLOCK_SIZE = 256 * 1024
# A Borg 2 image's chunks (format version 6). borg create --map re-reads and
# stores again every chunk of the reference image that a changed range touches:
# with 64 KiB chunks (QEMU's dirty-bitmap granularity) an incremental of
# scattered 64 KiB changes read what changed and no more, with 256 KiB 3.95
# times that and the repository grew 50 times as much (bench/BORG2.md). The
# price is Borg's index memory: about 1.3 GiB per TiB of unique data, against
# 340 MiB with 256 KiB chunks (docs/usage.md, --chunk-size).
IMAGE_BLOCK_SIZE = 64 * 1024
CHECKPOINT_PREFIX = "borgvm-"
PARTIAL_SUFFIX = ".borgvm-partial"

DOMAIN_XML = "domain.xml"
CHECKPOINT_XML = "checkpoint.xml"
MANIFEST = "manifest.json"
DISK_DIR = "disk"
SEALED_DIR = "frozen"   # its name in archives since version 2
# Readers hold these members whole, so they refuse bigger ones unread. A
# manifest lists ~28 bytes per extent (written compact; version 2 indented
# them, ~57 bytes): 64 MiB is ~2,000,000 extents. libvirt's domain XML is a
# few KiB.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_XML_BYTES = 4 * 1024 * 1024
# The domain's state beyond its disks (version 5), by name (core/vmstate.py):
# the UEFI variable store and the emulated TPM's permanent state. Held whole, so capped: OVMF's
# variable stores are 128 KiB to 4 MiB (AAVMF's on arm64 64 MiB); swtpm's
# permanent state is tens of KiB (its NV memory is at most a few hundred).
STATE = {vmstate.NVRAM: 64 * 1024 * 1024, vmstate.TPM: 4 * 1024 * 1024}
STATE_DIR = "state"
SMALL_MEMBERS = {DOMAIN_XML: MAX_XML_BYTES, CHECKPOINT_XML: MAX_XML_BYTES,
                 MANIFEST: MAX_MANIFEST_BYTES,
                 **{f"{STATE_DIR}/{n}": size for n, size in STATE.items()}}

# The largest virtual disk size an archive may record: far beyond any disk a
# libvirt guest runs on (qcow2 with 64 KiB clusters tops out at 256 TiB, ext4
# files at 16 TiB); a larger size is damage or an attack, and would make a
# restore create an absurd image.
MAX_VIRTUAL_SIZE = 64 << 40

_STAMP = r"\d{8}T\d{6}Z(?:-\d+)?"
_ESCAPED = r"(?:[A-Za-z0-9_+-]|%[0-9A-F]{2})+"  # layers.escape(); version 1's stamps match too
_NAME_RE = re.compile(rf"^(?P<domain>.+)\.(?P<snapshot>{_ESCAPED})"
                      rf"\.(?P<checkpoint>{CHECKPOINT_PREFIX}{_STAMP})$")
_BORG_CHECKPOINT_RE = re.compile(r"\.checkpoint(\.\d+)?$")
_MEMBER_RE = re.compile(rf"^{DISK_DIR}/(?P<target>[^/]+)/(?P<offset>[0-9a-f]{{16}})$")
_SEALED_RE = re.compile(rf"^{SEALED_DIR}/(?P<target>[^/]+)/(?P<layer>[1-9][0-9]{{0,3}})/"
                        rf"(?P<offset>[0-9a-f]{{16}})$")
TARGET_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")   # what a record's disk target may be
MAP_SUFFIX = ".map"
MAX_LAYERS = 1000  # deeper backing chains are damage (QEMU itself stops far earlier)


class Level(StrEnum):
    """How much of a disk (or of a sealed layer) an archive holds: every byte, or
    what changed since its parent archive. A str: manifests and comments write
    its value."""

    FULL = "full"
    INC = "inc"


def stamp(when: datetime) -> str:
    """Return the UTC time stamp used in checkpoint and snapshot names."""
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def new_checkpoint_name(when: datetime, taken: set[str]) -> str:
    """Return a borg-vm checkpoint name for `when` that is not in `taken`."""
    base = CHECKPOINT_PREFIX + stamp(when)
    name, n = base, 1
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def is_own_checkpoint(name: str) -> bool:
    """Return True if a libvirt checkpoint name is one borg-vm made."""
    return re.fullmatch(CHECKPOINT_PREFIX + _STAMP, name) is not None


@dataclass(frozen=True)
class ArchiveName:
    domain: str
    snapshot: str
    checkpoint: str

    def __str__(self) -> str:
        return f"{self.domain}.{self.snapshot}.{self.checkpoint}"

    @property
    def snapshot_name(self) -> str:
        """The layer's name as people know it (the snapshot part unescaped)."""
        return layers_.unescape(self.snapshot)

    @classmethod
    def for_layer(cls, domain: str, layer: str, checkpoint: str) -> ArchiveName:
        """Return the name of an archive of domain taken on layer (a raw name)."""
        return cls(domain, layers_.escape(layer), checkpoint)

    @classmethod
    def parse(cls, name: str) -> ArchiveName | None:
        """Return the parsed final archive name, or None if it is not one of borg-vm's."""
        m = _NAME_RE.fullmatch(name)
        return cls(**m.groupdict()) if m else None


def is_partial_of(name: str, domain: str) -> bool:
    """Return True if archive `name` is what an unfinished run of `domain` left: a
    borg checkpoint archive of one of its names, or an older borg-vm's partial name."""
    base = _BORG_CHECKPOINT_RE.sub("", name)
    old = base.endswith(PARTIAL_SUFFIX)
    if base == name and not old:
        return False
    parsed = ArchiveName.parse(base.removesuffix(PARTIAL_SUFFIX))
    return parsed is not None and parsed.domain == domain


def image_archive_name(record: ArchiveName, target: str, layer: str | None = None) -> str:
    """Return the name of the image archive of disk target of a record (version
    6), or of the disk's sealed snapshot layer named layer the record read
    (version 7: core/layers.py's name, escaped here)."""
    tail = target if layer is None else f"{target}.{layers_.escape(layer)}"
    return f"{record}{IMAGE_SEPARATOR}{tail}"


_IMAGE_TAIL_RE = re.compile(rf"({TARGET_RE.pattern})(?:\.[A-Za-z0-9_+%-]+)?")


def parse_image_archive_name(name: str) -> tuple[ArchiveName, str] | None:
    """Return (record name, target) of an image archive's name (a disk's or one
    of its sealed layers'), or None if it is not one."""
    record, sep, tail = name.rpartition(IMAGE_SEPARATOR)
    m = _IMAGE_TAIL_RE.fullmatch(tail) if sep else None
    parsed = ArchiveName.parse(record) if m else None
    return (parsed, m.group(1)) if parsed is not None and m else None


def member_name(target: str, offset: int) -> str:
    return f"{DISK_DIR}/{target}/{offset:016x}"


def parse_member(name: str) -> tuple[str, int] | None:
    """Return (target, offset) of a data member name, or None for other members."""
    m = _MEMBER_RE.fullmatch(name)
    return (m["target"], int(m["offset"], 16)) if m else None


def map_member_name(data_member: str) -> str:
    """Return the name of the map member that announces a pack (version 3)."""
    return data_member + MAP_SUFFIX


def parse_map_member(name: str) -> str | None:
    """Return the name of the data member a map member announces, or None if name
    is not a map member's."""
    if not name.endswith(MAP_SUFFIX):
        return None
    data = name[: -len(MAP_SUFFIX)]
    return data if parse_member(data) or parse_sealed_member(data) else None


def disk_prefix(target: str) -> str:
    return f"{DISK_DIR}/{target}"


def state_member(name: str) -> str:
    """Return the member that holds state name (one of STATE)."""
    return f"{STATE_DIR}/{name}"


def state_members(summary: Summary) -> tuple[str, ...]:
    """Return the state members an archive with this summary holds."""
    return tuple(state_member(n) for n in summary.state)


def small_members(summary: Summary) -> tuple[str, ...]:
    """Return the small members an archive with this summary holds: all of them
    are there in an archive that is not damaged (see reader.check_archive)."""
    return (DOMAIN_XML, CHECKPOINT_XML, MANIFEST, *state_members(summary))


def in_disk_dir(name: str) -> bool:
    """Return True if member name lies under disk/ or frozen/, where only data members
    belong."""
    return name.startswith((DISK_DIR + "/", SEALED_DIR + "/"))


def sealed_member_name(target: str, layer: int, offset: int) -> str:
    return f"{SEALED_DIR}/{target}/{layer}/{offset:016x}"


def parse_sealed_member(name: str) -> tuple[str, int, int] | None:
    """Return (target, layer, offset) of a sealed-layer data member name, or None."""
    m = _SEALED_RE.fullmatch(name)
    return (m["target"], int(m["layer"]), int(m["offset"], 16)) if m else None


def sealed_prefix(target: str, layer: int) -> str:
    return f"{SEALED_DIR}/{target}/{layer}"

