"""borg-vm delete: one restore point, and only if nothing depends on it."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from borg_vm.adapters.borg import Repository
from borg_vm.commands import options
from borg_vm.core import chain, retention
from borg_vm.core.text import printable
from borg_vm.errors import EXIT_OK, HasDependents
from borg_vm.services import catalog

log = logging.getLogger(__name__)


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    de = sub.add_parser("delete", parents=parents,
                        help="delete one restore point, if nothing depends on it",
                        description="Delete DOMAIN's archive at a checkpoint. Archives that "
                        "need it to restore (later incrementals of its chain) are named and "
                        "nothing is deleted, unless --with-dependents deletes them too.")
    de.add_argument("domain", metavar="DOMAIN")
    de.add_argument("--checkpoint", required=True, metavar="NAME",
                    help="the checkpoint whose archive to delete")
    options.add_repository_options(de)
    de.add_argument("--with-dependents", action="store_true",
                    help="delete the archives that need it too (newest first)")
    de.add_argument("-n", "--dry-run", action="store_true",
                    help="list what would be deleted, delete nothing")
    de.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = delete(options.repository(args), args.domain, args.checkpoint,
                    args.with_dependents, args.dry_run)
    if args.json:
        options.emit(result.to_json())
    else:
        for name in result.deleted:
            print(printable(f"{'would delete' if args.dry_run else 'deleted'} {name}"))
    return EXIT_OK


@dataclass
class DeleteResult:
    deleted: list[str]
    dry_run: bool

    def to_json(self) -> dict:
        return {"deleted": self.deleted, "dry_run": self.dry_run}


def delete(borg: Repository, domain: str, checkpoint: str, with_dependents: bool = False,
           dry_run: bool = False) -> DeleteResult:
    """Delete domain's archive at checkpoint (with the archives that need it, newest
    first, if with_dependents) in one borg delete.

    Raise ArchiveNotFound if there is no such archive, HasDependents naming them if
    others need it and with_dependents is not set.
    """
    found = catalog.archives(borg, domain)
    # Any archive may be deleted by name (a planted one too); one this host cannot
    # authenticate never holds back an authentic one.
    target = chain.select(found.every(), domain, checkpoint)
    needing = retention.dependents(
        found.archives if target in found.archives else found.every(), target)
    if needing and not with_dependents:
        raise HasDependents(archive=target.archive,
                            dependents=", ".join(a.archive for a in needing))
    doomed = [a.archive for a in needing] + [target.archive]
    if not dry_run:
        log.info("deleting %s", ", ".join(doomed))
        catalog.delete(borg, found, [*needing, target])
    return DeleteResult(doomed, dry_run)
