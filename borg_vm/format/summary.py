"""The archive comment (format/__init__.py describes it): the summary that lets
a listing group and chain archives without extracting their manifests, and
ArchiveInfo, one archive as listed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from borg_vm.errors import FormatError
from borg_vm.format import auth, fields
from borg_vm.format.fields import Doc
from borg_vm.format.names import (
    AUTHENTICATED_FROM,
    FORMAT_VERSION,
    IMAGES_FROM,
    LAYER_IMAGES_FROM,
    MAX_LAYERS,
    READABLE_VERSIONS,
    STATE,
    STATE_FROM,
    ArchiveName,
)


@dataclass(frozen=True)
class ImageRecord:
    """Where a disk's complete image is (version 6): its image archive, and how
    long ago the disk was last read whole (--full-every counts these)."""

    id: str          # the image archive's Borg archive ID
    full_time: str   # the time of the last record that read the disk whole
    runs: int        # records since that one (0: this one read it whole)

    def to_doc(self) -> list[object]:
        return [self.id, self.full_time, self.runs]

    @classmethod
    def from_doc(cls, value: object) -> ImageRecord:
        """Parse [ID, FULL_TIME, RUNS]; raise ValueError if it is not that."""
        if type(value) is not list or len(value) != 3:
            raise ValueError(f"image {value!r} is not [archive ID, full read time, runs]")
        doc = dict(zip(("id", "time", "runs"), value, strict=True))
        image_id = fields.archive_id(doc, "id")
        runs = fields.get(doc, "runs", int)
        if image_id is None or runs < 0:
            raise ValueError(f"image {value!r} names no archive or a negative run count")
        return cls(image_id, fields.time(doc), runs)


@dataclass(frozen=True)
class DiskSummary:
    """A disk as the comment describes it. Version 6: image is where its complete
    image is, level says how it was read (full: whole; inc: the changes since the
    parent, the rest taken from the parent's image unread), data_bytes what was
    read and zero_bytes what read as zeros without being read. Version 7:
    layers, the images below source (top first) as (path, the ID of the image
    archive of that layer as it was sealed, or None if the repository holds none)."""

    level: str
    virtual_size: int
    format: str
    source: str
    data_bytes: int
    zero_bytes: int
    image: ImageRecord | None = None
    layers: tuple[tuple[str, str | None], ...] = ()


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
                             d.data_bytes, d.zero_bytes,
                             *([d.image.to_doc()] if d.image is not None else []),
                             *([[list(x) for x in d.layers]]
                               if self.version >= LAYER_IMAGES_FROM else [])]
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
            version = fields.get(doc, "borg-vm", int)
            if version not in READABLE_VERSIONS:
                raise FormatError(archive=archive, detail=f"summary version {version!r}")
            return cls(level=fields.level(fields.get(doc, "level", str)),
                       parent=fields.get(doc, "parent", (str, type(None))), time=fields.time(doc),
                       uuid=fields.get(doc, "uuid", str),
                       disks={fields.check_target(t): _disk_summary(v, version)
                              for t, v in fields.get(doc, "disks", dict).items()},
                       version=version,
                       parent_id=(fields.archive_id(doc, "parent_id")
                                  if version >= AUTHENTICATED_FROM else None),
                       auth=fields.auth_code(doc) if version >= AUTHENTICATED_FROM else None,
                       state=_state_names(doc) if version >= STATE_FROM else ())
        except FormatError:
            raise
        except (ValueError, RecursionError) as e:
            raise FormatError(archive=archive, detail=f"bad archive comment: {e}") from e


def _disk_summary(value: object, version: int) -> DiskSummary:
    """Return the DiskSummary a comment's [level, size, format, source, data, zero]
    (version 6: and image; version 7: and layers) describes."""
    images = version >= IMAGES_FROM
    layered = version >= LAYER_IMAGES_FROM
    if type(value) is not list or len(value) != 6 + images + layered:
        raise ValueError(f"disk summary {value!r} is not [level, size, format, source, "
                         f"data bytes, zero bytes{', image' if images else ''}"
                         f"{', layers' if layered else ''}]")
    level, size, fmt_, source, data, zero = value[:6]
    virtual_size = fields.virtual_size(fields.typed(size, int, "virtual size"))
    return DiskSummary(fields.level(level), virtual_size, fields.typed(fmt_, str, "format"),
                       fields.typed(source, str, "source"),
                       fields.byte_count(data, "data bytes", virtual_size),
                       fields.byte_count(zero, "zero bytes", virtual_size),
                       ImageRecord.from_doc(value[6]) if images else None,
                       _layer_images(value[7]) if layered else ())


def _layer_images(value: object) -> tuple[tuple[str, str | None], ...]:
    """Return the (path, image archive ID or None) pairs of a version-7 comment's
    layers below the top: at most MAX_LAYERS - 1, each path once."""
    if type(value) is not list or len(value) >= MAX_LAYERS:
        raise ValueError(f"layers {value!r} is not a list of fewer than {MAX_LAYERS}")
    out = []
    for x in value:
        if type(x) is not list or len(x) != 2:
            raise ValueError(f"layer {x!r} is not [path, image archive ID or null]")
        doc = dict(zip(("path", "id"), x, strict=True))
        out.append((fields.get(doc, "path", str), fields.archive_id(doc, "id")))
    if len({p for p, _ in out}) != len(out):
        raise ValueError("layers name an image twice")
    return tuple(out)


def _state_names(doc: Doc) -> tuple[str, ...]:
    """The state names of a version-5 comment: distinct names of STATE, sorted."""
    names = fields.get(doc, "state", list)
    if not all(isinstance(n, str) and n in STATE for n in names) or sorted(set(names)) != names:
        raise ValueError(f"state {names!r} must list distinct names of {sorted(STATE)}, "
                         "sorted")
    return tuple(names)


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
    def images(self) -> bool:
        """True if its disks are complete images in archives of their own (version 6)."""
        return self.summary.version >= IMAGES_FROM

    @property
    def level(self) -> str:
        return self.summary.level

    @property
    def time(self) -> str:
        return self.summary.time

    @property
    def order(self) -> tuple[str, int, str]:
        """Sort key, oldest first: backup time, then checkpoint (-9 before -10)."""
        return (self.summary.time, len(self.name.checkpoint), self.name.checkpoint)
