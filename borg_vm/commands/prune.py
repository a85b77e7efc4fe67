"""borg-vm prune: borg's retention rules over restore points, whole chains kept.

Only archives whose names parse as borg-vm archives of the selected domains
are ever deleted; other archives in the repository (borgmatic's, the user's)
are never looked at. The archives to delete go to one 'borg delete', newest
first: one borg transaction, so a prune killed midway deletes nothing, and
what remains always restores.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from borg_vm.adapters.borg import Repository
from borg_vm.commands import options
from borg_vm.core import retention
from borg_vm.core.text import printable
from borg_vm.errors import EXIT_OK, UsageError
from borg_vm.services import catalog

log = logging.getLogger(__name__)


RULES = (("last", "the last N restore points"), ("hourly", "the last of each of N hours"),
         ("daily", "the last of each of N days"), ("weekly", "the last of each of N ISO weeks"),
         ("monthly", "the last of each of N months"), ("yearly", "the last of each of N years"))


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    pr = sub.add_parser("prune", parents=parents,
                        help="delete archives by borg's retention rules, keeping whole chains",
                        description="Select restore points with borg prune's rules, keep "
                        "every archive a kept point needs (its chain back to the full, per "
                        "disk) and delete the other borg-vm archives of the domains, in one "
                        "borg delete. Other archives in the repository are never touched.")
    pr.add_argument("domains", nargs="*", metavar="DOMAIN",
                    help="domains to prune (default: every domain in the repository)")
    options.add_repository_options(pr)
    pr.add_argument("--keep-within", type=options.type_of(options.duration_hours), default=0,
                    metavar="INTERVAL",
                    help="keep every restore point younger than INTERVAL (e.g. 7d; units "
                    "H, d, w, m, y as borg)")
    for rule, what in RULES:
        pr.add_argument(f"--keep-{rule}", type=options.type_of(options.count), default=0,
                        metavar="N", help=f"keep {what}")
    pr.add_argument("-n", "--dry-run", action="store_true", help="delete nothing")
    pr.add_argument("--list", action="store_true",
                    help="show for each archive: keep (why) or prune")
    pr.add_argument("--compact", action="store_true",
                    help="run borg compact afterwards, to free the space (on an "
                         "append-only repository it frees nothing)")
    pr.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rules = retention.Rules(within_hours=args.keep_within,
                            **{rule: getattr(args, f"keep_{rule}") for rule, _ in RULES})
    if not rules.any():
        raise UsageError(detail="prune needs at least one rule: --keep-within, --keep-last, "
                                "--keep-hourly, --keep-daily, --keep-weekly, --keep-monthly "
                                "or --keep-yearly")
    result = prune(options.repository(args), PruneOptions(rules, tuple(args.domains),
                                                          args.dry_run, args.compact))
    if args.json:
        options.emit(result.to_json())
    elif args.list:
        print(result.to_text())
    if not args.json:
        log.info("%s %d of %d archives", "would delete" if args.dry_run else "deleted",
                 sum(v == retention.Verdict.PRUNE for _n, _d, v, _w in result.decisions),
                 len(result.decisions))
    return EXIT_OK


@dataclass(frozen=True)
class PruneOptions:
    rules: retention.Rules
    domains: tuple[str, ...] = ()
    dry_run: bool = False
    compact: bool = False


@dataclass
class PruneResult:
    decisions: list[tuple[str, str, retention.Verdict, str]]   # (archive, domain, verdict, why)
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


def prune(borg: Repository, opts: PruneOptions, now: datetime | None = None) -> PruneResult:
    """Decide what the rules keep of the selected domains' archives and delete the rest.

    Raise ArchiveNotFound if a named domain has no archive (NoAuthenticArchive if
    none this host can authenticate), a Borg error if borg fails.
    """
    found = catalog.archives(borg)
    archives = found.archives   # the rules never see what this host did not sign
    for domain in opts.domains:
        found.of_known_domain(domain)
    selected = [a for a in archives if not opts.domains or a.name.domain in opts.domains]
    now = now or datetime.now(UTC)
    local = datetime.now().astimezone().tzinfo
    assert local is not None, "astimezone() always sets the local zone"
    decided = retention.decide(selected, opts.rules, now, local)
    pruned = [a for a, verdict, _ in sorted(decided, key=lambda d: d[0].order, reverse=True)
              if verdict == retention.Verdict.PRUNE]
    doomed = [a.archive for a in pruned]
    if doomed and not opts.dry_run:
        log.info("deleting %d archives: %s", len(doomed), ", ".join(doomed))
        catalog.delete(borg, found, pruned)
        if opts.compact:
            borg.compact()
    return PruneResult([(a.archive, a.name.domain, v, w) for a, v, w in decided],
                       [] if opts.dry_run else doomed, opts.dry_run)
