"""Chains of archives: point-in-time selection and per-disk restore chains. Pure, no I/O.

A chain is a full archive followed by incrementals, each naming its parent::

    full(C1) <- inc(C2) <- inc(C3)        restore at C3 reads C1, C2, C3

Chains are resolved per disk: a raw disk is backed up in full in every
archive, so its chain is always that one archive; so is every disk of an
archive of complete images (Borg 2 repositories, format version 6), whatever
its level says of how it was read.
"""

from __future__ import annotations

from collections import defaultdict

from borg_vm.errors import ArchiveNotFound, BrokenChain, FormatError, UnknownDisk
from borg_vm.format.names import Level
from borg_vm.format.summary import ArchiveInfo


def of_domain(archives: list[ArchiveInfo], domain: str) -> list[ArchiveInfo]:
    """Return domain's archives, oldest first."""
    own = [a for a in archives if a.name.domain == domain]
    return sorted(own, key=lambda a: a.order)


def of_known_domain(archives: list[ArchiveInfo], domain: str) -> list[ArchiveInfo]:
    """Return domain's archives, oldest first; raise ArchiveNotFound if there are none."""
    own = of_domain(archives, domain)
    if not own:
        raise ArchiveNotFound(detail=f"The repository holds no borg-vm archive of {domain!r} "
                                     "('borg-vm list' shows the domains it holds).")
    return own


def select(archives: list[ArchiveInfo], domain: str, checkpoint: str | None) -> ArchiveInfo:
    """Return the archive of domain at checkpoint (None: the newest).

    Raise ArchiveNotFound naming what exists if there is no such archive.
    """
    own = of_known_domain(archives, domain)
    if checkpoint is None:
        return own[-1]
    for a in own:
        if a.name.checkpoint == checkpoint:
            return a
    known = ", ".join(a.name.checkpoint for a in own)
    raise ArchiveNotFound(detail=f"No archive of {domain!r} at checkpoint {checkpoint!r} "
                                 f"(checkpoints in the repository: {known}).")


def disk_chain(archives: list[ArchiveInfo], top: ArchiveInfo, target: str) -> list[ArchiveInfo]:
    """Return the archives that restore disk target as of top, full first: top
    alone where it records the disk's complete image (format version 6).

    Raise BrokenChain naming the first missing parent, UnknownDisk if top
    has no such disk.
    """
    by_name = {a.archive: a for a in archives}
    if target not in top.summary.disks:
        raise UnknownDisk(name=top.name.domain, target=target,
                          known=", ".join(sorted(top.summary.disks)))
    chain = [top]
    if top.summary.disks[target].image is not None:
        return chain
    while chain[-1].summary.disks[target].level != Level.FULL:
        parent = chain[-1].summary.parent
        if parent is None or parent not in by_name:
            raise BrokenChain(archive=top.archive, missing=parent or "its parent")
        link = chain[-1].summary.parent_id
        if link is not None and by_name[parent].id != link and not _moved(
                by_name[parent], sum(a.archive == parent for a in archives)):
            raise BrokenChain(archive=top.archive,
                              missing=f"the archive {chain[-1].archive} was made on ({parent} "
                                      "is another archive under its name)")
        if target not in by_name[parent].summary.disks:
            raise BrokenChain(archive=top.archive, missing=f"disk {target} in {parent}")
        if any(a.archive == parent for a in chain):  # damaged comments: parents loop
            raise BrokenChain(archive=top.archive,
                              missing=f"the full backup of disk {target} (the chain loops "
                                      f"back to {parent})")
        chain.append(by_name[parent])
    return chain[::-1]


def _moved(parent: ArchiveInfo, under_its_name: int) -> bool:
    """Return True if parent, whose Borg ID is not the one its child recorded,
    is still the archive the child was made on: it carries this host's
    authentication code (which binds its name and contents, so nothing else
    under that name can) and is the only archive under its name. A repository
    moved by 'borg transfer' (Borg 1 to Borg 2) gives every archive a new ID;
    an archive not authenticated (--allow-unauthenticated) is linked by ID alone."""
    return parent.key is not None and under_its_name == 1


def restore_chain(archives: list[ArchiveInfo], top: ArchiveInfo, target: str
                  ) -> list[ArchiveInfo]:
    """Return disk_chain(archives, top, target) if it can be restored: the disk keeps
    one size along it (what restore, mount and verify read, each archive's size
    then checked against its manifest as it is read).

    Raise BrokenChain or UnknownDisk as disk_chain does, FormatError naming top
    if the disk's size changes along the chain.
    """
    links = disk_chain(archives, top, target)
    problem = size_problem(links, target)
    if problem:
        raise FormatError(archive=top.archive, detail=problem)
    return links


def size_problem(links: list[ArchiveInfo], target: str) -> str | None:
    """Given a disk's chain, return how its size changes along it, or None if it
    does not (a resized disk starts a new chain)."""
    sizes = {a.summary.disks[target].virtual_size for a in links}
    if len(sizes) > 1:
        return f"disk {target} changes size along its chain ({sorted(sizes)})"
    return None


def group(archives: list[ArchiveInfo]) -> dict[str, dict[str, list[ArchiveInfo]]]:
    """Return {domain: {snapshot: [archives oldest first]}}, domains and chains in time order."""
    out: dict[str, dict[str, list[ArchiveInfo]]] = defaultdict(lambda: defaultdict(list))
    for a in sorted(archives, key=lambda a: (a.name.domain, a.order)):
        out[a.name.domain][a.name.snapshot].append(a)
    return {d: dict(chains) for d, chains in out.items()}
