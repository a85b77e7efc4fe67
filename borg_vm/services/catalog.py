"""borg-vm's view of a Borg repository: which archives are complete borg-vm
archives of a domain and which are leftovers of crashed runs."""

from __future__ import annotations

import logging

from borg_vm.adapters.borg import Repository
from borg_vm.errors import FormatError
from borg_vm.format import manifest as fmt
from borg_vm.format.manifest import ArchiveInfo, ArchiveName, Summary

log = logging.getLogger(__name__)


def archives(borg: Repository, domain: str | None = None) -> tuple[list[ArchiveInfo], list[str]]:
    """Return (complete archives, what unfinished runs left) of domain (None: every
    domain, and nothing of the second kind).

    Archives whose comment is not a borg-vm summary are skipped with a warning.
    """
    complete, partial = [], []
    for listed in borg.list_archives(checkpoints=domain is not None):
        name = ArchiveName.parse(listed.name)
        if name is not None and domain in (None, name.domain):
            try:
                complete.append(ArchiveInfo(name, Summary.from_comment(listed.comment,
                                                                       listed.name)))
            except FormatError as e:
                log.warning("ignoring archive %s: %s", listed.name, e.message)
        elif domain is not None and fmt.is_partial_of(listed.name, domain):
            partial.append(listed.name)
    return complete, partial

