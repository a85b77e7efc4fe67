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
    READABLE_VERSIONS,
    STATE,
    STATE_FROM,
    ArchiveName,
)


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
            version = fields.get(doc, "borg-vm", int)
            if version not in READABLE_VERSIONS:
                raise FormatError(archive=archive, detail=f"summary version {version!r}")
            return cls(level=fields.level(fields.get(doc, "level", str)),
                       parent=fields.get(doc, "parent", (str, type(None))), time=fields.time(doc),
                       uuid=fields.get(doc, "uuid", str),
                       disks={fields.check_target(t): _disk_summary(v)
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


def _disk_summary(value: object) -> DiskSummary:
    """Return the DiskSummary a comment's [level, size, format, source, data, zero] describes."""
    if type(value) is not list or len(value) != 6:
        raise ValueError(f"disk summary {value!r} is not [level, size, format, source, "
                         "data bytes, zero bytes]")
    level, size, fmt_, source, data, zero = value
    virtual_size = fields.virtual_size(fields.typed(size, int, "virtual size"))
    return DiskSummary(fields.level(level), virtual_size, fields.typed(fmt_, str, "format"),
                       fields.typed(source, str, "source"),
                       fields.byte_count(data, "data bytes", virtual_size),
                       fields.byte_count(zero, "zero bytes", virtual_size))


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
    def level(self) -> str:
        return self.summary.level

    @property
    def time(self) -> str:
        return self.summary.time

    @property
    def order(self) -> tuple[str, int, str]:
        """Sort key, oldest first: backup time, then checkpoint (-9 before -10)."""
        return (self.summary.time, len(self.name.checkpoint), self.name.checkpoint)
