"""The borg-vm archive format, version 1: the one place that defines it.

Archive names
-------------
One Borg archive per domain per backup run, named::

    {domain}.{snapshot}.{checkpoint}
    e.g.  web01.20261125T221800Z.borgvm-20261126T020000Z

- ``checkpoint`` is the libvirt checkpoint the run created, always
  ``borgvm-<UTC time YYYYmmddTHHMMSSZ>`` (plus ``-N`` if that name was taken).
  borg-vm creates and deletes only checkpoints with the ``borgvm-`` prefix.
- ``snapshot`` names the chain: a full backup starts a chain whose snapshot is
  the time part of its own checkpoint; every incremental on top of it keeps it.
  A new full backup (first run, ``--level full``, a disk added, removed,
  resized or moved to a new layer such as an external snapshot, a lost or
  broken checkpoint) starts a new snapshot, so archives of one chain sort
  together and a chain is restorable on its own.
- Neither part contains a dot, so ``name.rsplit('.', 2)`` parses back even
  when the domain name has dots.
- While a run writes, the archive is called ``{final}.borgvm-partial``; it is
  renamed to its final name only when every disk streamed completely and borg
  exited 0. Leftovers of crashed runs (with borg's own ``.checkpoint``
  suffixes) are deleted by the next run of that domain.

Archive contents (a tar stream fed to ``borg import-tar``)
----------------------------------------------------------
In this order::

    domain.xml                      the domain XML at backup time (inactive + live paths)
    checkpoint.xml                  the libvirt checkpoint XML this run created
    disk/{target}/{offset:016x}     data: bytes [offset, offset+size) of disk {target}
    ...                             (ascending offset, disks in target order)
    manifest.json                   last, when digests and counts are known

Readers hold only domain.xml, checkpoint.xml and manifest.json whole, and
refuse them unread when bigger than ``MAX_XML_BYTES`` / ``MAX_MANIFEST_BYTES``;
any other member under ``disk/`` means a damaged archive; members they do
not know are skipped unread.

Data members start on ``block_size`` boundaries where possible (see
``extent.split_at_blocks``) and Borg is run with a fixed chunker of
``block_size``, so identical disk blocks become identical chunks across runs
and across domains. Ranges that read as zeros are not stored: the manifest
lists them as zero extents and restore zeroes them.

manifest.json
-------------
::

    {"format": "borg-vm", "version": 1,
     "domain": NAME, "uuid": UUID,
     "snapshot": S, "checkpoint": C, "level": "full"|"inc",
     "parent_checkpoint": C0|null, "parent_archive": A0|null,
     "time": "2026-11-26T02:00:00Z",          # when the backup job started
     "block_size": 262144, "borg_vm_version": "0.1.0",
     "disks": {TARGET: {
         "level": "full"|"inc",               # raw disks are always full
         "format": "qcow2"|"raw", "source": PATH, "virtual_size": BYTES,
         "extents": [[START, LENGTH, "data"|"zero"], ...],  # sorted, disjoint
         "data_bytes": N, "zero_bytes": N,
         "sha256": HEX}}}                     # of the data bytes in offset order

A disk at level ``full`` holds every byte of the disk (unlisted ranges are
zero); at level ``inc`` it holds what changed since the parent archive, and
unlisted ranges are as in the parent.

The archive comment carries a summary (``Summary``) so ``borg list --json``
alone can group and chain archives without extracting manifests.

Readers reject a ``version`` they do not know.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import __version__
from ..errors import FormatError
from .extent import Extent, check_map, total, DATA, ZERO

FORMAT_NAME = "borg-vm"
FORMAT_VERSION = 1
# Default chunk size, from bench/RESULTS.md: against 4 MiB, 256 KiB chunks made
# the full backup no slower and cut what a 5%-different clone adds from 96% to
# 18% (scattered changes); 64 KiB would reach 5% but costs Borg ~1.3 GiB of
# index memory per TiB of unique data (256 KiB: ~340 MiB, 4 MiB: ~21 MiB).
BLOCK_SIZE = 256 * 1024
CHECKPOINT_PREFIX = "borgvm-"
PARTIAL_SUFFIX = ".borgvm-partial"
FULL = "full"
INC = "inc"
LEVELS = (FULL, INC)

DOMAIN_XML = "domain.xml"
CHECKPOINT_XML = "checkpoint.xml"
MANIFEST = "manifest.json"
DISK_DIR = "disk"
# Readers hold these members whole, so they refuse bigger ones unread. A
# manifest lists ~70 bytes per extent: 64 MiB is ~900,000 extents (a 1 TiB
# disk in ~1 MiB pieces). libvirt's domain XML is a few KiB.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_XML_BYTES = 4 * 1024 * 1024
SMALL_MEMBERS = {DOMAIN_XML: MAX_XML_BYTES, CHECKPOINT_XML: MAX_XML_BYTES,
                 MANIFEST: MAX_MANIFEST_BYTES}

_STAMP = r"\d{8}T\d{6}Z(?:-\d+)?"
_NAME_RE = re.compile(rf"^(?P<domain>.+)\.(?P<snapshot>{_STAMP})\.(?P<checkpoint>{CHECKPOINT_PREFIX}{_STAMP})$")
_BORG_CHECKPOINT_RE = re.compile(r"\.checkpoint(\.\d+)?$")
# Disk targets become file and member names: libvirt's are like vda, sdb, hdc.
_TARGET_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MEMBER_RE = re.compile(rf"^{DISK_DIR}/(?P<target>[^/]+)/(?P<offset>[0-9a-f]{{16}})$")


def stamp(when: datetime) -> str:
    """Return the UTC time stamp used in checkpoint and snapshot names."""
    return when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


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


def snapshot_of(checkpoint: str) -> str:
    """Return the snapshot (chain) name a full backup with this checkpoint starts."""
    return checkpoint[len(CHECKPOINT_PREFIX):]


@dataclass(frozen=True)
class ArchiveName:
    domain: str
    snapshot: str
    checkpoint: str

    def __str__(self) -> str:
        return f"{self.domain}.{self.snapshot}.{self.checkpoint}"

    @property
    def partial(self) -> str:
        return str(self) + PARTIAL_SUFFIX

    @classmethod
    def parse(cls, name: str) -> "ArchiveName | None":
        """Return the parsed final archive name, or None if it is not one of borg-vm's."""
        m = _NAME_RE.fullmatch(name)
        return cls(**m.groupdict()) if m else None


def is_partial_of(name: str, domain: str) -> bool:
    """Return True if archive `name` is an unfinished borg-vm archive of `domain`."""
    base = _BORG_CHECKPOINT_RE.sub("", name)
    if not base.endswith(PARTIAL_SUFFIX):
        return False
    parsed = ArchiveName.parse(base[: -len(PARTIAL_SUFFIX)])
    return parsed is not None and parsed.domain == domain


def member_name(target: str, offset: int) -> str:
    return f"{DISK_DIR}/{target}/{offset:016x}"


def parse_member(name: str) -> tuple[str, int] | None:
    """Return (target, offset) of a data member name, or None for other members."""
    m = _MEMBER_RE.fullmatch(name)
    return (m["target"], int(m["offset"], 16)) if m else None


def disk_prefix(target: str) -> str:
    return f"{DISK_DIR}/{target}"


def in_disk_dir(name: str) -> bool:
    """Return True if member name lies under disk/, where only data members belong."""
    return name.startswith(DISK_DIR + "/")


@dataclass(frozen=True)
class DiskRecord:
    level: str
    format: str
    source: str
    virtual_size: int
    extents: tuple[Extent, ...]
    sha256: str = ""

    @property
    def data_bytes(self) -> int:
        return total(self.extents, DATA)

    @property
    def zero_bytes(self) -> int:
        return total(self.extents, ZERO)


@dataclass(frozen=True)
class Manifest:
    domain: str
    uuid: str
    snapshot: str
    checkpoint: str
    level: str
    parent_checkpoint: str | None
    parent_archive: str | None
    time: str
    disks: dict[str, DiskRecord]
    block_size: int = BLOCK_SIZE
    borg_vm_version: str = __version__

    @property
    def name(self) -> ArchiveName:
        return ArchiveName(self.domain, self.snapshot, self.checkpoint)

    def to_json(self) -> bytes:
        doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
               "domain": self.domain, "uuid": self.uuid, "snapshot": self.snapshot,
               "checkpoint": self.checkpoint, "level": self.level,
               "parent_checkpoint": self.parent_checkpoint,
               "parent_archive": self.parent_archive, "time": self.time,
               "block_size": self.block_size, "borg_vm_version": self.borg_vm_version,
               "disks": {t: _disk_to_doc(d) for t, d in sorted(self.disks.items())}}
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, archive: str) -> "Manifest":
        """Parse manifest.json; raise FormatError if it is not a valid version-1 manifest."""
        try:
            doc = json.loads(raw.decode("utf-8"))
            _check_version(doc, archive)
            disks = {check_target(t): _disk_from_doc(d) for t, d in doc["disks"].items()}
            m = cls(domain=doc["domain"], uuid=doc["uuid"], snapshot=doc["snapshot"],
                    checkpoint=doc["checkpoint"], level=_level(doc["level"]),
                    parent_checkpoint=doc["parent_checkpoint"],
                    parent_archive=doc["parent_archive"], time=doc["time"],
                    disks=disks, block_size=int(doc["block_size"]),
                    borg_vm_version=doc.get("borg_vm_version", "?"))
        except FormatError:
            raise
        except UnicodeDecodeError as e:  # its repr would hold the whole manifest
            raise FormatError(archive=archive, detail=f"bad manifest: not UTF-8 ({e.reason} "
                                                      f"at byte {e.start})") from e
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(archive=archive, detail=f"bad manifest: {e!r}") from e
        return m

    def summary(self) -> "Summary":
        return Summary(level=self.level, parent=self.parent_archive, time=self.time,
                       uuid=self.uuid,
                       disks={t: DiskSummary(d.level, d.virtual_size, d.format, d.source,
                                             d.data_bytes, d.zero_bytes)
                              for t, d in self.disks.items()})


def _disk_to_doc(d: DiskRecord) -> dict:
    return {"level": d.level, "format": d.format, "source": d.source,
            "virtual_size": d.virtual_size,
            "extents": [[e.start, e.length, e.kind] for e in d.extents],
            "data_bytes": d.data_bytes, "zero_bytes": d.zero_bytes, "sha256": d.sha256}


def _disk_from_doc(doc: dict) -> DiskRecord:
    extents = tuple(Extent(int(s), int(n), k) for s, n, k in doc["extents"])
    size = int(doc["virtual_size"])
    check_map(extents, size)
    return DiskRecord(level=_level(doc["level"]), format=doc["format"], source=doc["source"],
                      virtual_size=size, extents=extents, sha256=doc["sha256"])


def check_target(target: str) -> str:
    """Return target if it is a plain disk target name; raise ValueError otherwise."""
    if not _TARGET_RE.fullmatch(target):
        raise ValueError(f"bad disk target {target!r}")
    return target


def _level(value: str) -> str:
    if value not in LEVELS:
        raise ValueError(f"unknown level {value!r}")
    return value


def _check_version(doc: dict, archive: str) -> None:
    if doc.get("format") != FORMAT_NAME:
        raise FormatError(archive=archive, detail="no borg-vm manifest")
    if type(doc.get("version")) is not int or doc["version"] != FORMAT_VERSION:
        raise FormatError(archive=archive,
                          detail=f"format version {doc.get('version')!r}, this borg-vm "
                                 f"reads version {FORMAT_VERSION}; upgrade borg-vm")


@dataclass(frozen=True)
class DiskSummary:
    level: str
    virtual_size: int
    format: str
    source: str
    data_bytes: int
    zero_bytes: int


@dataclass(frozen=True)
class Summary:
    """What the archive comment says: enough to plan and chain without extracting."""

    level: str
    parent: str | None
    time: str
    uuid: str
    disks: dict[str, DiskSummary] = field(default_factory=dict)

    def to_comment(self) -> str:
        return json.dumps({"borg-vm": FORMAT_VERSION, "level": self.level,
                           "parent": self.parent, "time": self.time, "uuid": self.uuid,
                           "disks": {t: [d.level, d.virtual_size, d.format, d.source,
                                         d.data_bytes, d.zero_bytes]
                                     for t, d in sorted(self.disks.items())}},
                          separators=(",", ":"))

    @classmethod
    def from_comment(cls, comment: str, archive: str) -> "Summary":
        """Parse an archive comment; raise FormatError if it is not a borg-vm summary."""
        try:
            doc = json.loads(comment)
            if type(doc.get("borg-vm")) is not int or doc["borg-vm"] != FORMAT_VERSION:
                raise FormatError(archive=archive,
                                  detail=f"summary version {doc.get('borg-vm')!r}")
            return cls(level=_level(doc["level"]), parent=doc["parent"], time=doc["time"],
                       uuid=doc["uuid"],
                       disks={check_target(t): DiskSummary(_level(v[0]), int(v[1]), v[2], v[3],
                                                           int(v[4]), int(v[5]))
                              for t, v in doc["disks"].items()})
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise FormatError(archive=archive, detail=f"bad archive comment: {e!r}") from e


@dataclass(frozen=True)
class ArchiveInfo:
    """One complete borg-vm archive as listed in the repository."""

    name: ArchiveName
    summary: Summary

    @property
    def archive(self) -> str:
        return str(self.name)

    @property
    def level(self) -> str:
        return self.summary.level

    @property
    def time(self) -> str:
        return self.summary.time

    @property
    def order(self) -> tuple:
        """Sort key, oldest first: backup time, then checkpoint (-9 before -10)."""
        return (self.summary.time, len(self.name.checkpoint), self.name.checkpoint)
