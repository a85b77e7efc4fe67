"""Retention: which restore points to keep, as `borg prune` would, and every
archive they need. Pure, no I/O.

The keep rules are borg's (its prune_split/prune_within, borg 1.4): the
archives sorted newest first; --keep-within keeps everything younger than
the interval; then each rule in turn (last, hourly, daily, weekly, monthly,
yearly) keeps the newest archive of each of its periods (local time) that no
earlier rule kept, until it has kept its count, and keeps the oldest archive
too if it ran out of periods before that. A borg-vm archive is a restore
point only with its chain: so every archive a kept point needs (per disk,
back to that disk's full backup) is kept as well, ``needed by`` it, and so
is each domain's newest archive, which the next incremental builds on (borg's
--keep-within alone would delete it once it is older than the interval)::

    full(A1) <- inc(A2) <- inc(A3)   full(B1) <- inc(B2)
    keep-last 1:  B2 (last #1), B1 (needed by B2); A1..A3 pruned
    keep-last 3:  B2, B1 (last #2), A3 (last #3), A2 and A1 (needed by A3)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum

from borg_vm.core import chain
from borg_vm.errors import BorgVmError
from borg_vm.format.summary import ArchiveInfo

# (rule, strftime pattern of its period), in the order borg applies them.
PERIODS = (("last", "%Y-%m-%d %H:%M:%S"), ("hourly", "%Y-%m-%d %H"), ("daily", "%Y-%m-%d"),
           ("weekly", "%G-%V"), ("monthly", "%Y-%m"), ("yearly", "%Y"))


class Verdict(StrEnum):
    """What prune does with an archive (its value is what --list and --json show)."""

    KEEP = "keep"
    PRUNE = "prune"


NEWEST = "newest: the next backup builds on it"


@dataclass(frozen=True)
class Rules:
    within_hours: int = 0
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def any(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)


def time_of(a: ArchiveInfo) -> datetime:
    return datetime.strptime(a.time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def kept_points(points: list[ArchiveInfo], rules: Rules, now: datetime, tz: tzinfo
                ) -> dict[str, str]:
    """Return {archive: why} for the restore points the rules keep (borg's semantics)."""
    ordered = sorted(points, key=lambda a: a.order, reverse=True)
    why: dict[str, str] = {}
    if rules.within_hours:
        since = now - timedelta(hours=rules.within_hours)
        for n, a in enumerate((a for a in ordered if time_of(a) > since), 1):
            why[a.archive] = f"within #{n}"
    for rule, pattern in PERIODS:
        count = getattr(rules, rule)
        if count:
            _split(ordered, rule, pattern, count, tz, why)
    return why


def _split(ordered: list[ArchiveInfo], rule: str, pattern: str, count: int, tz: tzinfo,
           why: dict[str, str]) -> None:
    kept, last = 0, None
    for a in ordered:
        period = time_of(a).astimezone(tz).strftime(pattern)
        if period != last:
            last = period
            if a.archive not in why:
                kept += 1
                why[a.archive] = f"{rule} #{kept}"
                if kept == count:
                    return
    if ordered and ordered[-1].archive not in why:  # ran out of periods: the oldest too
        why[ordered[-1].archive] = f"{rule}[oldest] #{kept + 1}"


def decide(archives: list[ArchiveInfo], rules: Rules, now: datetime, tz: tzinfo
           ) -> list[tuple[ArchiveInfo, Verdict, str]]:
    """Given the borg-vm archives of the domains to prune, return (archive, verdict,
    why) for each, newest first per domain: the points the rules keep, and
    every archive a kept one needs to restore."""
    out: list[tuple[ArchiveInfo, Verdict, str]] = []
    for domain in sorted({a.name.domain for a in archives}):
        own = chain.of_domain(archives, domain)
        why = kept_points(own, rules, now, tz)
        # Unlike borg's --keep-within alone, never the newest: the domain's
        # checkpoint matches it, so the next backup (maybe running now) builds on it.
        newest = max(own, key=lambda a: a.order)
        why.setdefault(newest.archive, NEWEST)
        # Everything a kept archive needs, transitively: with per-disk levels an
        # archive needed for one disk may need older ones for another.
        todo = sorted((a for a in own if a.archive in why), key=lambda a: a.order,
                      reverse=True)
        while todo:
            a = todo.pop(0)
            for needed in _needs(archives, a):
                if needed.archive not in why:
                    why[needed.archive] = f"needed by {a.archive}"
                    todo.append(needed)
        out += [(a, Verdict.KEEP if a.archive in why else Verdict.PRUNE, why.get(a.archive, ""))
                for a in sorted(own, key=lambda a: a.order, reverse=True)]
    return out


def _needs(archives: list[ArchiveInfo], a: ArchiveInfo) -> list[ArchiveInfo]:
    """Return the archives a needs for each of its disks (what exists of a broken chain)."""
    needed = []
    for target in a.summary.disks:
        try:
            needed += chain.disk_chain(archives, a, target)[:-1]
        except BorgVmError:   # already broken: keep whatever of it is left
            needed += _reachable(archives, a)
    return needed


def _reachable(archives: list[ArchiveInfo], a: ArchiveInfo) -> list[ArchiveInfo]:
    by_name = {x.archive: x for x in archives}
    out, seen = [], {a.archive}
    while a.summary.parent in by_name and a.summary.parent not in seen:
        a = by_name[a.summary.parent]
        seen.add(a.archive)
        out.append(a)
    return out


def dependents(archives: list[ArchiveInfo], target: ArchiveInfo) -> list[ArchiveInfo]:
    """Return the archives that need target to restore (for any disk), newest first."""
    own = chain.of_domain(archives, target.name.domain)
    return sorted((a for a in own if a.archive != target.archive
                   and target.archive in {n.archive for n in _needs(archives, a)}),
                  key=lambda a: a.order, reverse=True)
