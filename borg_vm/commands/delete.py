"""The delete action: one restore point, and only if nothing depends on it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from borg_vm.adapters.borg import Borg
from borg_vm.core import chain, retention
from borg_vm.errors import HasDependents
from borg_vm.services import catalog as repository

log = logging.getLogger(__name__)


@dataclass
class DeleteResult:
    deleted: list[str]
    dry_run: bool

    def to_json(self) -> dict:
        return {"deleted": self.deleted, "dry_run": self.dry_run}


def delete(borg: Borg, domain: str, checkpoint: str, with_dependents: bool = False,
           dry_run: bool = False) -> DeleteResult:
    """Delete domain's archive at checkpoint (with the archives that need it, newest
    first, if with_dependents) in one borg delete.

    Raise ArchiveNotFound if there is no such archive, HasDependents naming them if
    others need it and with_dependents is not set.
    """
    archives, _partial = repository.archives(borg, domain)
    target = chain.select(archives, domain, checkpoint)
    needing = retention.dependents(archives, target)
    if needing and not with_dependents:
        raise HasDependents(archive=target.archive,
                            dependents=", ".join(a.archive for a in needing))
    doomed = [a.archive for a in needing] + [target.archive]
    if not dry_run:
        log.info("deleting %s", ", ".join(doomed))
        borg.delete(doomed)
    return DeleteResult(doomed, dry_run)
