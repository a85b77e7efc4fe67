"""manifest.json (format/__init__.py describes it): the records of an
archive's disks and state, and the manifest's codec and checks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from borg_vm import __version__
from borg_vm.core import layers as layers_
from borg_vm.core.extent import DATA, SECTOR, ZERO, Extent, check_map, max_extents, total
from borg_vm.core.extent_arrays import ExtentArray
from borg_vm.errors import FormatError
from borg_vm.format import auth, extent_json, fields
from borg_vm.format.fields import Doc
from borg_vm.format.names import (
    AUTHENTICATED_FROM,
    BLOCK_SIZE,
    CHECKPOINT_XML,
    DOMAIN_XML,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGES_FROM,
    LAYER_IMAGES_FROM,
    MAX_LAYERS,
    READABLE_VERSIONS,
    STATE,
    STATE_FROM,
    ArchiveName,
    state_member,
)
from borg_vm.format.summary import ArchiveInfo, DiskSummary, ImageRecord, Summary


@dataclass(frozen=True)
class LayerRecord:
    """One image of a disk's chain at backup time."""

    name: str      # as core/layers.py names it (not escaped)
    path: str
    format: str
    # Version 7, a layer below the top: the ID of the image archive of the
    # layer as it was sealed (the guest's view then), if the repository holds one.
    image: str | None = None


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
class SealedRecord(_Extents):
    """A layer sealed since the parent archive: its final changes (inc) or all of it (full)."""

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
    # Version 2; a version-1 disk reads as one layer (its source) with nothing sealed.
    layers: tuple[LayerRecord, ...] = ()
    sealed: tuple[SealedRecord, ...] = ()
    # Version 6: the disk's complete image (no extents: the image archive holds
    # every byte), and (data, zero) bytes of what the run read and mapped as zeros.
    image: ImageRecord | None = None
    counts: tuple[int, int] = (0, 0)

    @property
    def data_bytes(self) -> int:
        return self.counts[0] if self.image is not None else total(self.extents, DATA)

    @property
    def zero_bytes(self) -> int:
        return self.counts[1] if self.image is not None else total(self.extents, ZERO)

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
               "disks": {t: _disk_to_doc(d, self.version)
                         for t, d in sorted(self.disks.items())}}
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
            disks = {fields.check_target(t): _disk_from_doc(d, version)
                     for t, d in fields.get(doc, "disks", dict).items()}
            return cls(domain=fields.get(doc, "domain", str), uuid=fields.get(doc, "uuid", str),
                       snapshot=fields.get(doc, "snapshot", str),
                       checkpoint=fields.get(doc, "checkpoint", str),
                       level=fields.level(fields.get(doc, "level", str)),
                       parent_checkpoint=fields.get(doc, "parent_checkpoint", (str, type(None))),
                       parent_archive=fields.get(doc, "parent_archive", (str, type(None))),
                       time=fields.time(doc), disks=disks, block_size=fields.block_size(doc),
                       borg_vm_version=fields.typed(doc.get("borg_vm_version", "?"), str,
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
                                             d.data_bytes, d.zero_bytes, d.image,
                                             tuple((x.path, x.image) for x in d.chain[1:])
                                             if self.version >= LAYER_IMAGES_FROM else ())
                              for t, d in self.disks.items()},
                       parent_id=self.parent_id, version=self.version,
                       state=tuple(sorted(self.state)))


def _state(doc: Doc) -> dict[str, str]:
    """The state digests of a version-5 manifest."""
    state = fields.get(doc, "state", dict)
    unknown = set(state) - set(STATE)
    if unknown:
        raise ValueError(f"state {sorted(unknown)} is none of {sorted(STATE)}")
    return {n: fields.sha256(state, n) for n in sorted(state)}



def _authenticated_fields(doc: Doc) -> Doc:
    """The fields version 4 added to the manifest."""
    return {"parent_id": fields.archive_id(doc, "parent_id"),
            "domain_xml_sha256": fields.sha256(doc, "domain_xml_sha256"),
            "checkpoint_xml_sha256": fields.sha256(doc, "checkpoint_xml_sha256"),
            "auth": fields.auth_code(doc)}


def _disk_to_doc(d: DiskRecord, version: int) -> Doc:
    if d.image is not None:
        layer_images = version >= LAYER_IMAGES_FROM
        return {"level": d.level, "format": d.format, "source": d.source,
                "virtual_size": d.virtual_size, "data_bytes": d.data_bytes,
                "zero_bytes": d.zero_bytes, "image": d.image.to_doc(),
                "layers": [{"name": x.name, "path": x.path, "format": x.format,
                            **({"image": x.image} if i and layer_images else {})}
                           for i, x in enumerate(d.chain)]}
    return {"level": d.level, "format": d.format, "source": d.source,
            "virtual_size": d.virtual_size,
            "extents": ExtentArray.of(d.extents),
            "data_bytes": d.data_bytes, "zero_bytes": d.zero_bytes, "sha256": d.sha256,
            "layers": [{"name": x.name, "path": x.path, "format": x.format} for x in d.chain],
            "frozen": [{"layer": f.layer, "level": f.level,
                        "extents": ExtentArray.of(f.extents), "data_bytes": f.data_bytes,
                        "zero_bytes": f.zero_bytes, "sha256": f.sha256} for f in d.sealed]}


def _disk_from_doc(doc: Doc, version: int) -> DiskRecord:
    fields.typed(doc, dict, "a disk")
    size = fields.virtual_size(fields.get(doc, "virtual_size", int))
    level = fields.level(fields.get(doc, "level", str))
    format_, source = fields.get(doc, "format", str), fields.get(doc, "source", str)
    if version >= IMAGES_FROM:
        return DiskRecord(level, format_, source, size, (),
                          layers=_layers(doc, source, version >= LAYER_IMAGES_FROM),
                          image=ImageRecord.from_doc(fields.get(doc, "image", list)),
                          counts=(fields.byte_count(fields.get(doc, "data_bytes", int),
                                                    "data bytes", size),
                                  fields.byte_count(fields.get(doc, "zero_bytes", int),
                                                    "zero bytes", size)))
    d = DiskRecord(level=level, format=format_, source=source, virtual_size=size,
                   extents=_extents(doc, size), sha256=fields.sha256(doc))
    if version == 1:
        return d
    layers = _layers(doc, source)
    sealed = tuple(_sealed(x, size) for x in fields.get(doc, "frozen", list))
    if sorted({f.layer for f in sealed}) != [f.layer for f in sealed] or any(
            not 1 <= f.layer < len(layers) for f in sealed):
        raise ValueError("sealed layers must be distinct, ascending indexes of layers below "
                         "the top")
    return replace(d, layers=layers, sealed=sealed)


def _layers(doc: Doc, source: str, images: bool = False) -> tuple[LayerRecord, ...]:
    """The disk's layers; images: each below the top names its image archive's
    ID or null (version 7)."""
    layers = tuple(_layer(x, images and i > 0)
                   for i, x in enumerate(fields.get(doc, "layers", list)))
    if not 1 <= len(layers) <= MAX_LAYERS or layers[0].path != source:
        raise ValueError(f"layers must list 1..{MAX_LAYERS} images, the disk's source first")
    if images and len({x.path for x in layers}) != len(layers):
        raise ValueError("layers name an image twice")
    return layers


def _extents(doc: Doc, size: int) -> ExtentArray:
    extents: ExtentArray = fields.get(doc, "extents", ExtentArray)
    if len(extents) > max_extents(size):
        raise ValueError(f"{len(extents)} extents on a disk of {size} bytes: more than one "
                         f"a {SECTOR}-byte sector")
    check_map(extents, size)
    return extents


def _layer(doc: Doc, image: bool = False) -> LayerRecord:
    return LayerRecord(fields.get(doc, "name", str), fields.get(doc, "path", str),
                       fields.get(doc, "format", str),
                       fields.archive_id(doc, "image") if image else None)


def _sealed(doc: Doc, size: int) -> SealedRecord:
    return SealedRecord(fields.get(doc, "layer", int), fields.level(fields.get(doc, "level", str)),
                        _extents(doc, size), fields.sha256(doc))



def _check_version(doc: object, archive: str) -> int:
    """Return the manifest's format version; raise FormatError unless this borg-vm reads it."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise FormatError(archive=archive, detail="no borg-vm manifest")
    version = doc.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise FormatError(archive=archive,
                          detail=f"format version {version!r}, this borg-vm "
                                 f"reads versions {', '.join(map(str, READABLE_VERSIONS))}; "
                                 "upgrade borg-vm")
    return version
