"""The borg-vm archive format, version 5 (reads 1 to 5): the one place that defines it.

Archive names
-------------
One Borg archive per domain per backup run, named::

    {domain}.{snapshot}.{checkpoint}
    e.g.  web01.pre-upgrade.borgvm-20261126T020000Z
          web01.base.borgvm-20261125T020000Z

- ``checkpoint`` is the libvirt checkpoint the run created, always
  ``borgvm-<UTC time YYYYmmddTHHMMSSZ>`` (plus ``-N`` if that name was taken).
  borg-vm creates and deletes only checkpoints with the ``borgvm-`` prefix.
- ``snapshot`` (version 2) names the layer the disks were on at that backup
  (core/layers.py): the libvirt snapshot that made the top image, ``base`` for
  a disk with no backing image, ``layer-<8 hex>`` for an overlay made without
  libvirt metadata; escaped (``layers.escape``: every character but
  ``A-Za-z0-9_+-`` as ``%XX``), so it holds no dot. Version 1 wrote the time of
  the chain's full backup here (``20261125T221800Z``); that still parses.
- Neither part contains a dot, so ``name.rsplit('.', 2)`` parses back even
  when the domain name has dots.
- A run writes its archive under the final name: borg commits it only when
  it reads the end of the tar stream, which borg-vm writes after the manifest,
  once every disk streamed completely (adapters/borg.py ``import_tar``: borg
  never reads an end of file, so a run cut short commits nothing). What a cut
  run may leave are borg's own checkpoint archives, ``{final}.checkpoint`` and
  ``{final}.checkpoint.N``. Earlier borg-vm wrote ``{final}.borgvm-partial``
  and renamed it when borg exited 0 (one more borg process per run); a cut
  run left that name and its checkpoints. The next run of the domain deletes
  all of these once its own archive is committed (their chunks reused first).
  A borg that fails after it committed leaves a complete archive: the run
  finds it in the repository, keeps it, and says so (services/backup/run.py).

Levels are per disk: an incremental archive may hold a full of a disk added
or resized since its parent; that disk's chain starts there.

Archive contents (a tar stream fed to ``borg import-tar``)
----------------------------------------------------------
In this order::

    domain.xml                      the domain XML at backup time (inactive + live paths)
    checkpoint.xml                  the libvirt checkpoint XML this run created
    state/nvram                     (version 5) the domain's UEFI variable store, the
                                    file <os><nvram> names, if it has one
    state/tpm                       (version 5) its emulated TPM's permanent state
                                    (swtpm's tpm2-00.permall or tpm-00.permall)
    disk/{target}/{offset:016x}.map (version 3) the pieces of the data member that
                                    follows: JSON [[start, length], ...]
    disk/{target}/{offset:016x}     data: pieces of disk {target} as the guest saw
                                    it, back to back; the first starts at byte
                                    offset
    frozen/{target}/{layer}/{offset:016x}[.map]
                                    (version 2) the same for layer {layer} (an index
                                    into the disk's layers) as it was when a snapshot
                                    froze it
    ...                             (ascending offset; per disk its top data, then its
                                    frozen layers; disks in target order)
    manifest.json                   last, when digests and counts are known

A data member without a map holds one piece: bytes [offset, offset+size) of
its disk (the only kind versions 1 and 2 write). A map member announces a
*pack* (version 3): the data member right after it holds the listed pieces
(ascending, disjoint, the first at offset, lengths adding up to its size)
back to back. Borg pays per member, so the writer packs the pieces smaller
than a block of a fragmented disk together and keeps larger pieces in
members of their own (format/packing.py says where packs end); readers follow
the maps, whatever packing made them.

Readers hold only domain.xml, checkpoint.xml, manifest.json, the state
members and map members whole, and refuse them unread when bigger than
``SMALL_MEMBERS`` says or ``packing.MAX_MAP_BYTES``; any other member under
``disk/`` or ``frozen/`` means a damaged archive; members they do not know
are skipped unread.

Whole pieces start on ``block_size`` boundaries (see ``extent.split_at_blocks``)
and Borg is run with a fixed chunker of ``block_size``, so identical disk
blocks become identical chunks across runs and across domains. Ranges that
read as zeros are not stored: the manifest lists them as zero extents and
restore zeroes them.

manifest.json
-------------
::

    {"format": "borg-vm", "version": 4,
     "domain": NAME, "uuid": UUID,
     "snapshot": S, "checkpoint": C, "level": "full"|"inc",
     "parent_checkpoint": C0|null, "parent_archive": A0|null,
     "parent_id": ID|null,                    # version 4: the parent's Borg archive ID
     "time": "2026-11-26T02:00:00Z",          # when the backup job started
     "block_size": 262144, "borg_vm_version": "0.1.0",
     "domain_xml_sha256": HEX,                # version 4: of the members domain.xml
     "checkpoint_xml_sha256": HEX,            #   and checkpoint.xml
     "auth": [KEY_ID, CODE],                  # version 4: format/auth.py
    "state": {"nvram": HEX, "tpm": HEX},     # version 5: SHA-256 of each state member
                                             #   the archive holds (either, both, none)
     "disks": {TARGET: {
         "level": "full"|"inc",               # raw disks are always full
         "format": "qcow2"|"raw", "source": PATH, "virtual_size": BYTES,
         "extents": [[START, LENGTH, "data"|"zero"], ...],  # sorted, disjoint
         "data_bytes": N, "zero_bytes": N,
         "sha256": HEX,                       # of the data bytes in offset order
         # version 2:
         "layers": [{"name": NAME, "path": PATH, "format": FMT}, ...],
                                              # the disk's images, top first;
                                              # layers[0]["path"] == source
         "frozen": [{"layer": I,              # 1 <= I < len(layers)
                     "level": "full"|"inc",   # whole layer, or since the parent
                     "extents": [...], "data_bytes": N, "zero_bytes": N,
                     "sha256": HEX}, ...]}}}

The top data (``extents``) is what the guest saw: after a snapshot, the writes
since the parent checkpoint on both sides of it (libvirt merges the bitmaps
down the chain), so over the frozen layer below it is a superset of the top
image's own clusters that reads exactly as the guest did. ``frozen`` holds,
for each layer frozen since the parent archive, its final changes (the writes
to it from the parent checkpoint until the snapshot, from that layer's own
copy of the checkpoint's bitmap; or the whole layer where that bitmap is
missing): with it, ``restore --layers`` rebuilds every frozen layer complete.

A disk at level ``full`` holds every byte of the disk (unlisted ranges are
zero); at level ``inc`` it holds what changed since the parent archive, and
unlisted ranges are as in the parent.

Version 3 changed only the data members (packs); its manifest is version 2's.
Version 4 authenticates (format/auth.py): the manifest and the comment carry
``auth``, a key id and an HMAC-SHA256 under a key of the host that wrote the
archive (services/keyring.py), over the archive's name and the document
without ``auth``; both name the parent by Borg archive ID (``parent_id``);
the manifest records the SHA-256 of domain.xml and checkpoint.xml, so the
manifest's code covers every member. format/trust.py decides which archives
are restore points.
Version 5 adds the domain's state beyond its disks (``STATE``): the UEFI
variable store and the emulated TPM's permanent state, read at the disks'
point in time (services/backup/vmstate.py), stored whole every run (Borg
deduplicates them), each listed in ``state`` with its digest and in the
comment by name. The manifest's code covers the digests, so a planted or
damaged state member fails like a damaged disk.
The manifest is written compact (no indentation): a fragmented 1 TiB disk
lists ~200,000 extents, ~5.5 MiB. Readers do not build it with json.loads
(a list, two ints and a string per extent: ~230 bytes) but with
format/extent_json.py, which holds each ``extents`` list in arrays (17 bytes an
extent) and refuses a key given twice in one object, values nested deeper
than it allows or holding more memory besides the extents; and the code is
checked over the document written again in pieces (``auth``: the same
bytes json.dumps writes).

The archive comment carries a summary (``Summary``) so ``borg list --json``
alone can group and chain archives without extracting manifests; a reader
skips archives whose summary has a version it does not know. Written
compact, in this key order::

    {"borg-vm": 4, "level": L, "parent": A0|null, "parent_id": ID|null,
     "time": T, "uuid": UUID,
     "disks": {TARGET: [LEVEL, VIRTUAL_SIZE, FORMAT, SOURCE, DATA_BYTES, ZERO_BYTES]},
     "state": ["nvram", "tpm"],               # version 5: the state members it holds
     "auth": [KEY_ID, CODE]}                  # parent_id and auth: version 4

Readers reject a ``version`` they do not know, and any field of the manifest
or the comment whose type or value is not as above (a string where a string
is written, an int -- never a bool -- where a byte count is, ``time`` as
shown, ``sha256`` as 64 lower-case hex digits, ``virtual_size`` in
(0, MAX_VIRTUAL_SIZE], a power-of-two ``block_size``, no more extents in a
record than ``extent.max_extents`` allows its disk: one a 512-byte sector): a
repository may hold archives a compromised client crafted, so nothing is
trusted by shape.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from borg_vm import __version__
from borg_vm.core import layers as layers_
from borg_vm.core import vmstate
from borg_vm.core.extent import DATA, SECTOR, ZERO, Extent, check_map, max_extents, total
from borg_vm.core.extent_arrays import ExtentArray
from borg_vm.errors import FormatError
from borg_vm.format import auth, extent_json

FORMAT_NAME = "borg-vm"
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
AUTHENTICATED_FROM = 4  # the first version whose comment and manifest carry codes
STATE_FROM = 5          # the first version that holds the domain's state
# Default chunk size, by the rule of bench/RESULTS.md section 4 (deduplication
# across domains, and the chunk size; bench/NOTES.md "Chunk size (item 4)"):
# against 4 MiB, 256 KiB chunks made the full backup no slower and a clone with
# scattered changes add far less; 64 KiB would add less still, but Borg's index
# memory grows with the number of chunks beyond the rule's bound.
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
FROZEN_DIR = "frozen"
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
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ARCHIVE_ID_RE = _SHA256_RE   # Borg's archive IDs: 32 bytes in hex
_KEY_ID_RE = re.compile(rf"[0-9a-f]{{{auth.KEY_ID_HEX}}}")
_ESCAPED = r"(?:[A-Za-z0-9_+-]|%[0-9A-F]{2})+"  # layers.escape(); version 1's stamps match too
_NAME_RE = re.compile(rf"^(?P<domain>.+)\.(?P<snapshot>{_ESCAPED})"
                      rf"\.(?P<checkpoint>{CHECKPOINT_PREFIX}{_STAMP})$")
_BORG_CHECKPOINT_RE = re.compile(r"\.checkpoint(\.\d+)?$")
# Disk targets become file and member names: libvirt's are like vda, sdb, hdc.
_TARGET_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MEMBER_RE = re.compile(rf"^{DISK_DIR}/(?P<target>[^/]+)/(?P<offset>[0-9a-f]{{16}})$")
_FROZEN_RE = re.compile(rf"^{FROZEN_DIR}/(?P<target>[^/]+)/(?P<layer>[1-9][0-9]{{0,3}})/"
                        rf"(?P<offset>[0-9a-f]{{16}})$")
MAP_SUFFIX = ".map"
MAX_LAYERS = 1000  # deeper backing chains are damage (QEMU itself stops far earlier)


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
    return data if parse_member(data) or parse_frozen_member(data) else None


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
    return name.startswith((DISK_DIR + "/", FROZEN_DIR + "/"))


def frozen_member_name(target: str, layer: int, offset: int) -> str:
    return f"{FROZEN_DIR}/{target}/{layer}/{offset:016x}"


def parse_frozen_member(name: str) -> tuple[str, int, int] | None:
    """Return (target, layer, offset) of a frozen-layer data member name, or None."""
    m = _FROZEN_RE.fullmatch(name)
    return (m["target"], int(m["layer"]), int(m["offset"], 16)) if m else None


def frozen_prefix(target: str, layer: int) -> str:
    return f"{FROZEN_DIR}/{target}/{layer}"


@dataclass(frozen=True)
class LayerRecord:
    """One image of a disk's chain at backup time."""

    name: str      # as core/layers.py names it (not escaped)
    path: str
    format: str


class _Extents:
    """Byte counts of a record's extents (the record has an ``extents`` field)."""

    extents: Sequence[Extent]

    @property
    def data_bytes(self) -> int:
        return total(self.extents, DATA)

    @property
    def zero_bytes(self) -> int:
        return total(self.extents, ZERO)


@dataclass(frozen=True)
class FrozenRecord(_Extents):
    """A layer frozen since the parent archive: its final changes (inc) or all of it (full)."""

    layer: int     # index into DiskRecord.layers, >= 1
    level: str
    extents: Sequence[Extent]   # an ExtentArray when read from an archive
    sha256: str = ""


@dataclass(frozen=True)
class DiskRecord(_Extents):
    level: str
    format: str
    source: str
    virtual_size: int
    extents: Sequence[Extent]   # an ExtentArray when read from an archive
    sha256: str = ""
    # Version 2; a version-1 disk reads as one layer (its source) with nothing frozen.
    layers: tuple[LayerRecord, ...] = ()
    frozen: tuple[FrozenRecord, ...] = ()

    @property
    def chain(self) -> tuple[LayerRecord, ...]:
        """The disk's images at backup time, top first."""
        return self.layers or (LayerRecord(layers_.BASE, self.source, self.format),)


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
    version: int = FORMAT_VERSION
    # Version 4: the parent's Borg archive ID, the digests of the XML members,
    # and the code over all of it (format/auth.py).
    parent_id: str | None = None
    domain_xml_sha256: str = ""
    checkpoint_xml_sha256: str = ""
    auth: tuple[str, str] | None = None    # (key id, code)
    # Version 5: the SHA-256 of each state member it holds (a name of STATE).
    state: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> ArchiveName:
        return ArchiveName(self.domain, self.snapshot, self.checkpoint)

    def to_json(self) -> bytes:
        return b"".join(self._json(with_auth=True))

    def _json(self, *, with_auth: bool) -> Iterator[bytes]:
        """The manifest as compact JSON, in pieces (extent_json.dump_chunks: what
        json.dumps writes, a hostile manifest's millions of extents included,
        without a list of them in memory)."""
        # self.version: a code is checked over the version the archive was written in
        doc = {"format": FORMAT_NAME, "version": self.version,
               "domain": self.domain, "uuid": self.uuid, "snapshot": self.snapshot,
               "checkpoint": self.checkpoint, "level": self.level,
               "parent_checkpoint": self.parent_checkpoint,
               "parent_archive": self.parent_archive, "parent_id": self.parent_id,
               "time": self.time, "block_size": self.block_size,
               "borg_vm_version": self.borg_vm_version,
               "domain_xml_sha256": self.domain_xml_sha256,
               "checkpoint_xml_sha256": self.checkpoint_xml_sha256,
               "disks": {t: _disk_to_doc(d) for t, d in sorted(self.disks.items())}}
        if self.version >= STATE_FROM:
            doc["state"] = dict(sorted(self.state.items()))
        if with_auth:
            doc["auth"] = list(self.auth) if self.auth else None
        return extent_json.dump_chunks(doc)

    def signed(self, key: bytes) -> Manifest:
        """Return this manifest carrying the code of key over it."""
        code = auth.manifest_code(key, str(self.name), self._json(with_auth=False))
        return replace(self, auth=(auth.key_id(key), code))

    def code_problem(self, key: bytes) -> str | None:
        """Return why this manifest does not carry a valid code of key, or None."""
        if self.version < AUTHENTICATED_FROM or self.auth is None:
            return "its manifest carries no authentication code"
        key_id, code = self.auth
        if key_id != auth.key_id(key) or not auth.same_code(
                code, auth.manifest_code(key, str(self.name), self._json(with_auth=False))):
            return "its manifest's authentication code is wrong"
        return None

    def file_problem(self, name: str, raw: bytes) -> str | None:
        """Return how small member name (domain.xml, checkpoint.xml or a state
        member) disagrees with the digest this manifest records of it (version 4;
        state: version 5), or None."""
        recorded = {DOMAIN_XML: self.domain_xml_sha256,
                    CHECKPOINT_XML: self.checkpoint_xml_sha256,
                    **{state_member(n): digest for n, digest in self.state.items()}}.get(name)
        if recorded is None:
            return f"it holds {name}, which its manifest does not list"
        if self.version < AUTHENTICATED_FROM or hashlib.sha256(raw).hexdigest() == recorded:
            return None
        return f"its {name} differs from the digest its manifest records"

    @classmethod
    def from_json(cls, raw: bytes, archive: str) -> Manifest:
        """Parse manifest.json; raise FormatError if it is not a valid manifest of a
        version this borg-vm reads."""
        try:
            doc = extent_json.loads(raw)
            version = _check_version(doc, archive)
            disks = {check_target(t): _disk_from_doc(d, version)
                     for t, d in _get(doc, "disks", dict).items()}
            return cls(domain=_get(doc, "domain", str), uuid=_get(doc, "uuid", str),
                       snapshot=_get(doc, "snapshot", str),
                       checkpoint=_get(doc, "checkpoint", str),
                       level=_level(_get(doc, "level", str)),
                       parent_checkpoint=_get(doc, "parent_checkpoint", (str, type(None))),
                       parent_archive=_get(doc, "parent_archive", (str, type(None))),
                       time=_time(doc), disks=disks, block_size=_block_size(doc),
                       borg_vm_version=_typed(doc.get("borg_vm_version", "?"), str,
                                              "borg_vm_version"), version=version,
                       **(_authenticated_fields(doc) if version >= AUTHENTICATED_FROM
                          else {}),
                       state=_state(doc) if version >= STATE_FROM else {})
        except FormatError:
            raise
        except ValueError as e:
            raise FormatError(archive=archive, detail=f"bad manifest: {e}") from e

    def disagreement(self, info: ArchiveInfo) -> str | None:
        """Return how this manifest disagrees with the archive's name and comment, or
        with the key that authenticated the comment; None if it agrees."""
        if self.name != info.name:
            return f"its manifest names archive {self.name}"
        if self.summary() != info.summary:
            return "its manifest disagrees with its comment"
        if info.key is not None:
            return self.code_problem(info.key)
        return None

    def summary(self) -> Summary:
        return Summary(level=self.level, parent=self.parent_archive, time=self.time,
                       uuid=self.uuid,
                       disks={t: DiskSummary(d.level, d.virtual_size, d.format, d.source,
                                             d.data_bytes, d.zero_bytes)
                              for t, d in self.disks.items()},
                       parent_id=self.parent_id, version=self.version,
                       state=tuple(sorted(self.state)))


def _state(doc: dict) -> dict[str, str]:
    """The state digests of a version-5 manifest."""
    state = _get(doc, "state", dict)
    unknown = set(state) - set(STATE)
    if unknown:
        raise ValueError(f"state {sorted(unknown)} is none of {sorted(STATE)}")
    return {n: _sha256(state, n) for n in sorted(state)}


def _state_names(doc: dict) -> tuple[str, ...]:
    """The state names of a version-5 comment: distinct names of STATE, sorted."""
    names = _get(doc, "state", list)
    if not all(isinstance(n, str) and n in STATE for n in names) or sorted(set(names)) != names:
        raise ValueError(f"state {names!r} must list distinct names of {sorted(STATE)}, "
                         "sorted")
    return tuple(names)


def _authenticated_fields(doc: dict) -> dict:
    """The fields version 4 added to the manifest."""
    return {"parent_id": _archive_id(doc, "parent_id"),
            "domain_xml_sha256": _sha256(doc, "domain_xml_sha256"),
            "checkpoint_xml_sha256": _sha256(doc, "checkpoint_xml_sha256"),
            "auth": _auth(doc)}


def _archive_id(doc: dict, key: str) -> str | None:
    value = _get(doc, key, (str, type(None)))
    if value is not None and not _ARCHIVE_ID_RE.fullmatch(value):
        raise ValueError(f"{key} {value!r} is not a Borg archive ID")
    return value


def _auth(doc: dict) -> tuple[str, str] | None:
    value = _get(doc, "auth", (list, type(None)))
    if value is None:
        return None
    if (len(value) != 2 or not all(isinstance(v, str) for v in value)
            or not _KEY_ID_RE.fullmatch(value[0]) or not _SHA256_RE.fullmatch(value[1])):
        raise ValueError("auth must be [key id, code]")
    return value[0], value[1]


def _disk_to_doc(d: DiskRecord) -> dict:
    return {"level": d.level, "format": d.format, "source": d.source,
            "virtual_size": d.virtual_size,
            "extents": ExtentArray.of(d.extents),
            "data_bytes": d.data_bytes, "zero_bytes": d.zero_bytes, "sha256": d.sha256,
            "layers": [{"name": x.name, "path": x.path, "format": x.format} for x in d.chain],
            "frozen": [{"layer": f.layer, "level": f.level,
                        "extents": ExtentArray.of(f.extents), "data_bytes": f.data_bytes,
                        "zero_bytes": f.zero_bytes, "sha256": f.sha256} for f in d.frozen]}


def _disk_from_doc(doc: dict, version: int) -> DiskRecord:
    _typed(doc, dict, "a disk")
    size = _virtual_size(_get(doc, "virtual_size", int))
    d = DiskRecord(level=_level(_get(doc, "level", str)), format=_get(doc, "format", str),
                   source=_get(doc, "source", str), virtual_size=size,
                   extents=_extents(doc, size), sha256=_sha256(doc))
    if version == 1:
        return d
    layers = tuple(_layer(x) for x in _get(doc, "layers", list))
    if not 1 <= len(layers) <= MAX_LAYERS or layers[0].path != d.source:
        raise ValueError(f"layers must list 1..{MAX_LAYERS} images, the disk's source first")
    frozen = tuple(_frozen(x, size) for x in _get(doc, "frozen", list))
    if sorted({f.layer for f in frozen}) != [f.layer for f in frozen] or any(
            not 1 <= f.layer < len(layers) for f in frozen):
        raise ValueError("frozen layers must be distinct, ascending indexes of layers below "
                         "the top")
    return replace(d, layers=layers, frozen=frozen)


def _extents(doc: dict, size: int) -> ExtentArray:
    extents = _get(doc, "extents", ExtentArray)
    if len(extents) > max_extents(size):
        raise ValueError(f"{len(extents)} extents on a disk of {size} bytes: more than one "
                         f"a {SECTOR}-byte sector")
    check_map(extents, size)
    return extents


def _sha256(doc: dict, key: str = "sha256") -> str:
    sha256 = _get(doc, key, str)
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"{key} {sha256!r} is not 64 hex digits")
    return sha256


def _layer(doc) -> LayerRecord:
    return LayerRecord(_get(doc, "name", str), _get(doc, "path", str), _get(doc, "format", str))


def _frozen(doc, size: int) -> FrozenRecord:
    return FrozenRecord(_get(doc, "layer", int), _level(_get(doc, "level", str)),
                        _extents(doc, size), _sha256(doc))


def check_target(target: str) -> str:
    """Return target if it is a plain disk target name; raise ValueError otherwise."""
    if not isinstance(target, str) or not _TARGET_RE.fullmatch(target):
        raise ValueError(f"bad disk target {target!r}")
    return target


def _typed(value, kinds, what: str):
    """Return value if it is an instance of kinds (a bool is never an int);
    raise ValueError naming what otherwise."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ValueError(f"{what} must be {names}, not {type(value).__name__}")
    return value


def _get(doc, key: str, kinds):
    """Return doc[key] checked by _typed; raise ValueError if doc is no object or lacks key."""
    _typed(doc, dict, "the document")
    if key not in doc:
        raise ValueError(f"{key!r} is missing")
    return _typed(doc[key], kinds, repr(key))


def _level(value) -> str:
    if _typed(value, str, "level") not in LEVELS:
        raise ValueError(f"unknown level {value!r}")
    return value


def _time(doc) -> str:
    value = _get(doc, "time", str)
    if not _TIME_RE.fullmatch(value):
        raise ValueError(f"time {value!r} is not like 2026-11-26T02:00:00Z")
    return value


def _block_size(doc) -> int:
    value = _get(doc, "block_size", int)
    if value <= 0 or value & (value - 1):
        raise ValueError(f"block_size {value} is not a power of two")
    return value


def _virtual_size(value: int) -> int:
    if not 0 < value <= MAX_VIRTUAL_SIZE:
        raise ValueError(f"virtual size {value} is not in 1..{MAX_VIRTUAL_SIZE} bytes")
    return value


def _byte_count(value, what: str, size: int) -> int:
    if not 0 <= _typed(value, int, what) <= size:
        raise ValueError(f"{what} {value} is not in 0..{size} (the disk size)")
    return value


def _check_version(doc: dict, archive: str) -> int:
    """Return the manifest's format version; raise FormatError unless this borg-vm reads it."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise FormatError(archive=archive, detail="no borg-vm manifest")
    if type(doc.get("version")) is not int or doc["version"] not in READABLE_VERSIONS:
        raise FormatError(archive=archive,
                          detail=f"format version {doc.get('version')!r}, this borg-vm "
                                 f"reads versions {', '.join(map(str, READABLE_VERSIONS))}; "
                                 "upgrade borg-vm")
    return doc["version"]


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
    parent_id: str | None = None     # version 4: the parent's Borg archive ID
    state: tuple[str, ...] = ()      # version 5: the state it holds (names of STATE)
    # Not compared: the comment's code differs from the manifest's, and a
    # version-1 manifest sits under a version-1 comment anyway.
    auth: tuple[str, str] | None = field(default=None, compare=False)
    version: int = field(default=FORMAT_VERSION, compare=False)

    def to_comment(self) -> str:
        return self._json(with_auth=True)

    def _json(self, *, with_auth: bool) -> str:
        doc = {"borg-vm": self.version, "level": self.level, "parent": self.parent,
               "parent_id": self.parent_id, "time": self.time, "uuid": self.uuid,
               "disks": {t: [d.level, d.virtual_size, d.format, d.source,
                             d.data_bytes, d.zero_bytes]
                         for t, d in sorted(self.disks.items())}}
        if self.version >= STATE_FROM:
            doc["state"] = list(self.state)
        if with_auth:
            doc["auth"] = list(self.auth) if self.auth else None
        return json.dumps(doc, separators=(",", ":"))

    def signed(self, key: bytes, archive: str) -> Summary:
        """Return this summary carrying the code of key over it and the archive's name."""
        code = auth.summary_code(key, archive, self._json(with_auth=False).encode())
        return replace(self, auth=(auth.key_id(key), code))

    def code_valid(self, key: bytes, archive: str) -> bool:
        """Return True if this summary carries a valid code of key for archive."""
        if self.version < AUTHENTICATED_FROM or self.auth is None:
            return False
        key_id, code = self.auth
        return key_id == auth.key_id(key) and auth.same_code(
            code, auth.summary_code(key, archive, self._json(with_auth=False).encode()))

    @classmethod
    def from_comment(cls, comment: str, archive: str) -> Summary:
        """Parse an archive comment; raise FormatError if it is not a borg-vm summary."""
        try:
            doc = json.loads(comment)
            version = _get(doc, "borg-vm", int)
            if version not in READABLE_VERSIONS:
                raise FormatError(archive=archive, detail=f"summary version {version!r}")
            return cls(level=_level(_get(doc, "level", str)),
                       parent=_get(doc, "parent", (str, type(None))), time=_time(doc),
                       uuid=_get(doc, "uuid", str),
                       disks={check_target(t): _disk_summary(v)
                              for t, v in _get(doc, "disks", dict).items()},
                       version=version,
                       **({"parent_id": _archive_id(doc, "parent_id"), "auth": _auth(doc)}
                          if version >= AUTHENTICATED_FROM else {}),
                       state=_state_names(doc) if version >= STATE_FROM else ())
        except FormatError:
            raise
        except (ValueError, RecursionError) as e:
            raise FormatError(archive=archive, detail=f"bad archive comment: {e}") from e


def _disk_summary(value) -> DiskSummary:
    """Return the DiskSummary a comment's [level, size, format, source, data, zero] describes."""
    if type(value) is not list or len(value) != 6:
        raise ValueError(f"disk summary {value!r} is not [level, size, format, source, "
                         "data bytes, zero bytes]")
    level, size, fmt_, source, data, zero = value
    size = _virtual_size(_typed(size, int, "virtual size"))
    return DiskSummary(_level(level), size, _typed(fmt_, str, "format"),
                       _typed(source, str, "source"), _byte_count(data, "data bytes", size),
                       _byte_count(zero, "zero bytes", size))


@dataclass(frozen=True)
class ArchiveInfo:
    """One complete borg-vm archive as listed in the repository."""

    name: ArchiveName
    summary: Summary
    id: str = ""                     # Borg's archive ID
    # The authentication key whose code the comment carries (None: the archive
    # is authentic by its ID, format versions 1-3, or not authentic at all).
    key: bytes | None = field(default=None, repr=False, compare=False)

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
