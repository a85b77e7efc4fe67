"""The prune action: borg's retention rules over restore points, whole chains kept.

Only archives whose names parse as borg-vm archives of the selected domains
are ever deleted; other archives in the repository (borgmatic's, the user's)
are never looked at. The archives to delete go to one 'borg delete', newest
first: one borg transaction, so a prune killed midway deletes nothing, and
what remains always restores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from borg_vm.adapters.borg import Borg
from borg_vm.core import chain, retention
from borg_vm.core.text import printable
from borg_vm.services import catalog as repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneOptions:
    rules: retention.Rules
    domains: tuple[str, ...] = ()
    dry_run: bool = False
    compact: bool = False


@dataclass
class PruneResult:
    decisions: list[tuple[str, str, str, str]]   # (archive, domain, keep|prune, why)
    deleted: list[str]
    dry_run: bool

    def to_json(self) -> dict:
        return {"archives": [{"name": n, "domain": d, "decision": v, "reason": w}
                             for n, d, v, w in self.decisions],
                "deleted": self.deleted, "dry_run": self.dry_run}

    def to_text(self) -> str:
        """borg prune --list style: one line per archive, names shown escaped."""
        return "\n".join(printable(f"{(f'{v} ({w})' if w else v):<60} {n}")
                         for n, _d, v, w in self.decisions)


def prune(borg: Borg, opts: PruneOptions, now: datetime | None = None) -> PruneResult:
    """Decide what the rules keep of the selected domains' archives and delete the rest.

    Raise ArchiveNotFound if a named domain has no archive, a Borg error if borg fails.
    """
    archives, _partial = repository.archives(borg)
    for domain in opts.domains:
        chain.of_known_domain(archives, domain)
    selected = [a for a in archives if not opts.domains or a.name.domain in opts.domains]
    now = now or datetime.now(timezone.utc)
    local = datetime.now().astimezone().tzinfo
    decided = retention.decide(selected, opts.rules, now, local)
    doomed = [a.archive for a, verdict, _ in sorted(decided, key=lambda d: d[0].order,
                                                     reverse=True)
              if verdict == retention.PRUNE]
    if doomed and not opts.dry_run:
        log.info("deleting %d archives: %s", len(doomed), ", ".join(doomed))
        borg.delete(doomed)
        if opts.compact:
            borg.compact()
    return PruneResult([(a.archive, a.name.domain, v, w) for a, v, w in decided],
                       [] if opts.dry_run else doomed, opts.dry_run)
