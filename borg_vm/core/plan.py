"""Backup planning: full or incremental, from what and why. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from borg_vm.core import chain, durations
from borg_vm.errors import BorgVmError, NoUsableParent
from borg_vm.format.names import ArchiveName, Level, new_checkpoint_name
from borg_vm.format.summary import ArchiveInfo, ImageRecord

AUTO = "auto"
REQUESTS = (AUTO, Level.FULL, Level.INC)
INCREMENTAL_FORMATS = ("qcow2",)


@dataclass(frozen=True)
class Disk:
    """A disk of the domain as libvirt shows it now."""

    target: str
    source: str
    format: str
    virtual_size: int

    @property
    def incremental_capable(self) -> bool:
        return self.format in INCREMENTAL_FORMATS


@dataclass(frozen=True)
class Plan:
    level: str
    reason: str
    parent: ArchiveInfo | None
    disk_levels: dict[str, str]

    @property
    def parent_checkpoint(self) -> str | None:
        return self.parent.name.checkpoint if self.parent else None


def latest(archives: list[ArchiveInfo], domain: str) -> ArchiveInfo | None:
    """Return the newest archive of domain (by backup time), or None."""
    own = [a for a in archives if a.name.domain == domain]
    return max(own, key=lambda a: a.order) if own else None


def why_not_incremental(domain: str, uuid: str, disks: list[Disk], parent: ArchiveInfo | None,
                        checkpoints: set[str]) -> str | None:
    """Return why no disk can be backed up incrementally on top of parent, or None
    if the parent's checkpoint can serve the disks that still have a chain."""
    if parent is None:
        return f"no earlier archive of {domain} in the repository"
    if parent.summary.uuid != uuid:
        return f"the domain's UUID changed since {parent.archive}"
    if parent.name.checkpoint not in checkpoints:
        return f"checkpoint {parent.name.checkpoint} of {parent.archive} is gone from libvirt"
    if not any(d.incremental_capable for d in disks):
        return "no disk supports incremental backups (they need qcow2)"
    return None


def why_disk_is_full(disk: Disk, parent: ArchiveInfo, archives: list[ArchiveInfo],
                     images: bool = False) -> str | None:
    """Return why this disk needs a full backup although the domain's is incremental,
    or None if it can be incremental on top of parent (with images: a complete
    image built from parent's image of the disk and what changed since).

    A new layer under the same target (an external snapshot, a blockcommit) is no
    reason: libvirt carries the checkpoint's bitmaps into the new top image and
    merges them down the backing chain, and if it cannot, starting the job fails
    and the run falls back to a full with that reason.
    """
    before = parent.summary.disks.get(disk.target)
    if not disk.incremental_capable:
        return f"{disk.format}, not qcow2"
    if before is None:
        return f"new disk, not in {parent.archive}"
    if before.virtual_size != disk.virtual_size:
        return f"resized from {before.virtual_size} to {disk.virtual_size} bytes"
    if images and before.image is None:
        return f"{parent.archive} holds no complete image of it (a chain)"
    try:
        chain.disk_chain(archives, parent, disk.target)
    except BorgVmError as e:
        return f"its chain cannot be restored ({e.message})"
    return None


# A new chain a month: a chain of 29 nightly incrementals already restores
# markedly slower than its full alone (bench/RETENTION.md, make
# bench-retention: restore time by chain length, and its fit), a chain that
# never ends grows without bound in restore time and in
# storage prune cannot free; a new full re-reads the disk once a month and
# stores only what changed since the last one.
DEFAULT_FULL_EVERY = "30d"
NEVER = "never"


@dataclass(frozen=True)
class FullEvery:
    """When auto starts a new chain: its full is older than `age` seconds, or it
    has `count` incrementals (--full-every 30d or --full-every 14); neither for
    --full-every never."""

    text: str
    age: int | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> FullEvery:
        """Parse AGE (a duration as Borg spells it: core/durations.py), COUNT (N)
        or never; raise ValueError otherwise."""
        if text == NEVER:
            return cls(text)
        if text.isascii() and text.isdigit() and int(text) > 0:
            return cls(text, count=int(text))
        try:
            return cls(text, age=durations.parse_seconds(text))
        except ValueError:
            raise ValueError(f"not an age, a count or never: {text!r} (e.g. 30d, 2w, 1m = "
                             f"a month, 14; units {', '.join(durations.HOURS)} as borg)"
                             ) from None

    def due(self, chain_: list[ArchiveInfo], now: datetime) -> str | None:
        """Given a disk's chain (full first), return why a new one is due, or None."""
        return self._due(len(chain_) - 1, chain_[0].time, now, "its chain has {} incrementals",
                         f"its full backup {chain_[0].archive}")

    def read_due(self, image: ImageRecord, now: datetime) -> str | None:
        """Given a disk's image record (format version 6: every point a complete
        image), return why a full read of the disk is due, or None."""
        return self._due(image.runs, image.full_time, now,
                         "{} incremental reads since its last full read", "its last full read")

    def _due(self, incrementals: int, started_at: str, now: datetime, counted: str,
             started: str) -> str | None:
        if self.count is not None and incrementals >= self.count:
            return f"{counted.format(incrementals)} (--full-every {self.text})"
        began = datetime.strptime(started_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if self.age is not None and (now - began).total_seconds() >= self.age:
            return f"{started} is from {started_at} (--full-every {self.text})"
        return None


def plan(requested: str, domain: str, uuid: str, disks: list[Disk],
         archives: list[ArchiveInfo], checkpoints: set[str],
         full_every: FullEvery | None = None, now: datetime | None = None,
         images: bool = False) -> Plan:
    """Decide the level of the next backup of domain, and of each of its disks.

    Given the requested level (auto/full/inc), the disks to back up, the
    domain's complete archives in the repository and the names of borg-vm's
    checkpoints libvirt has, return the Plan. An incremental plan may still
    take a full of some disks (added, resized, raw, or whose chain is broken):
    the reason names them. With full_every, auto starts a new chain (a full of
    every disk) when a disk's chain is due (as of now; None: the current time).
    With images (a repository of complete images, Borg 2), an incremental reads
    what changed and takes the rest from the parent's images, and full_every
    asks for a full read instead of a new chain.
    Raise NoUsableParent if inc was requested but no disk can be incremental.
    """
    if requested not in REQUESTS:
        raise ValueError(f"unknown level {requested!r}")
    if requested == Level.FULL:
        return Plan(Level.FULL, "--level full was asked for", None,
                    {d.target: Level.FULL for d in disks})
    parent = latest(archives, domain)
    reason = why_not_incremental(domain, uuid, disks, parent, checkpoints)
    if reason is None:
        assert parent is not None, "why_not_incremental gives a reason when there is no parent"
        full_disks = {d.target: why for d in disks
                      if (why := why_disk_is_full(d, parent, archives, images))}
        if len(full_disks) == len(disks):
            reason = "; ".join(f"{t}: {why}" for t, why in full_disks.items())
        elif full_every is not None and requested == AUTO:
            as_of = now if now is not None else datetime.now(UTC)
            reason = next((f"{_full_again(parent)}: disk {d.target}: {why}" for d in disks
                           if d.target not in full_disks
                           and (why := _due(full_every, archives, parent, d.target, as_of))),
                          None)
        if reason is None:
            why = f"incremental on top of {parent.archive}"
            if full_disks:
                why += "; full backup of " + "; ".join(f"{t} ({w})"
                                                       for t, w in full_disks.items())
            return Plan(Level.INC, why, parent,
                        {d.target: Level.FULL if d.target in full_disks else Level.INC
                         for d in disks})
    if requested == Level.INC:
        raise NoUsableParent(domain=domain, reason=reason)
    return Plan(Level.FULL, reason, None, {d.target: Level.FULL for d in disks})


def _full_again(parent: ArchiveInfo) -> str:
    """What auto starts when --full-every is due: a new chain, or (complete images)
    a full read."""
    return "a full read" if parent.images else "a new chain"


def _due(full_every: FullEvery, archives: list[ArchiveInfo], parent: ArchiveInfo,
         target: str, now: datetime) -> str | None:
    image = parent.summary.disks[target].image
    if image is not None:
        return full_every.read_due(image, now)
    return full_every.due(chain.disk_chain(archives, parent, target), now)


def archive_name(domain: str, layer: str, when: datetime, taken_checkpoints: set[str]
                 ) -> ArchiveName:
    """Return the name of the archive of a run that starts at `when` on `layer`
    (the top layer's name, core/layers.py), with a checkpoint name not taken yet."""
    return ArchiveName.for_layer(domain, layer, new_checkpoint_name(when, taken_checkpoints))
