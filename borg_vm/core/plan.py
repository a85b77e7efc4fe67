"""Backup planning: full or incremental, from what and why. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from . import chain
from .archive import FULL, INC, ArchiveInfo, new_checkpoint_name, snapshot_of
from ..errors import BorgVmError, NoUsableParent

AUTO = "auto"
REQUESTS = (AUTO, FULL, INC)
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
                        checkpoints: set[str], archives: list[ArchiveInfo]) -> str | None:
    """Return why an incremental on top of parent is impossible, or None if it is possible."""
    if parent is None:
        return f"no earlier archive of {domain} in the repository"
    if parent.summary.uuid != uuid:
        return f"the domain's UUID changed since {parent.archive}"
    if parent.name.checkpoint not in checkpoints:
        return f"checkpoint {parent.name.checkpoint} of {parent.archive} is gone from libvirt"
    before = parent.summary.disks
    now = {d.target: d for d in disks}
    if set(before) != set(now):
        return (f"the disks changed ({', '.join(sorted(before))} -> "
                f"{', '.join(sorted(now))})")
    for t, d in sorted(now.items()):
        if before[t].virtual_size != d.virtual_size:
            return f"disk {t} was resized ({before[t].virtual_size} -> {d.virtual_size} bytes)"
        if before[t].source != d.source or before[t].format != d.format:
            return (f"disk {t} is a new layer ({before[t].source} -> {d.source}), "
                    "e.g. after an external snapshot")
    if not any(d.incremental_capable for d in disks):
        return "no disk supports incremental backups (they need qcow2)"
    for t in sorted(now):
        try:
            chain.disk_chain(archives, parent, t)
        except BorgVmError as e:
            return f"the chain of {parent.archive} cannot be restored ({e.message})"
    return None


def plan(requested: str, domain: str, uuid: str, disks: list[Disk],
         archives: list[ArchiveInfo], checkpoints: set[str]) -> Plan:
    """Decide the level of the next backup of domain.

    Given the requested level (auto/full/inc), the disks to back up, the
    domain's complete archives in the repository and the names of borg-vm's
    checkpoints libvirt has, return the Plan; raise NoUsableParent if inc was
    requested but no incremental is possible.
    """
    parent = latest(archives, domain)
    if requested not in REQUESTS:
        raise ValueError(f"unknown level {requested!r}")
    reason = why_not_incremental(domain, uuid, disks, parent, checkpoints, archives)
    if requested == FULL:
        return Plan(FULL, "--level full was asked for", None, {d.target: FULL for d in disks})
    if reason is not None:
        if requested == INC:
            raise NoUsableParent(domain=domain, reason=reason)
        return Plan(FULL, reason, None, {d.target: FULL for d in disks})
    return Plan(INC, f"incremental on top of {parent.archive}", parent,
                {d.target: INC if d.incremental_capable else FULL for d in disks})


def names_for(plan_: Plan, domain: str, when, taken_checkpoints: set[str]):
    """Return (snapshot, checkpoint) names for a run that starts at `when`."""
    checkpoint = new_checkpoint_name(when, taken_checkpoints)
    snapshot = plan_.parent.name.snapshot if plan_.parent else snapshot_of(checkpoint)
    return snapshot, checkpoint
