"""Retention: borg's keep rules over restore points, then whole chains."""

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from borg_vm.core.chain import disk_chain
from borg_vm.core.retention import NEWEST, Rules, Verdict, decide, kept_points
from borg_vm.format.names import ArchiveName, Level
from borg_vm.format.summary import ArchiveInfo, DiskSummary, Summary

NOW = datetime(2026, 11, 27, 3, 0, 0, tzinfo=UTC)


def history(spec, domain="web01", start=NOW - timedelta(days=400)):
    """Archives from spec: a list of (hours after start, level of vda, level of vdb or None)."""
    out, parent = [], None
    for i, (hours, vda, vdb) in enumerate(spec):
        when = start + timedelta(hours=hours)
        disks = {"vda": DiskSummary(vda, 1 << 30, "qcow2", "/i/a", 1, 0)}
        if vdb:
            disks["vdb"] = DiskSummary(vdb, 1 << 30, "qcow2", "/i/b", 1, 0)
        level = Level.INC if parent and Level.INC in (vda, vdb) else Level.FULL
        stamp = when.strftime("%Y%m%dT%H%M%SZ")
        a = ArchiveInfo(ArchiveName(domain, "base", f"borgvm-{stamp}-{i}"),
                        Summary(level, parent.archive if level == Level.INC else None,
                                when.strftime("%Y-%m-%dT%H:%M:%SZ"), "u", disks))
        out.append(a)
        parent = a
    return out


def verdicts(archives, rules):
    return {a.name.checkpoint.split("-")[-1]: (v, why)
            for a, v, why in decide(archives, rules, NOW, UTC)}


def test_keep_last_one_keeps_its_chain():
    # A1 full, A2 inc, A3 inc, B1 full, B2 inc (per day)
    archives = history([(0, Level.FULL, None), (24, Level.INC, None), (48, Level.INC, None),
                        (72, Level.FULL, None), (96, Level.INC, None)])
    got = verdicts(archives, Rules(last=1))
    assert got["4"] == (Verdict.KEEP, "last #1")
    assert got["3"] == (Verdict.KEEP, f"needed by {archives[4].archive}")
    assert [got[k][0] for k in "012"] == [Verdict.PRUNE] * 3


def test_keep_last_three_reaches_into_the_older_chain():
    archives = history([(0, Level.FULL, None), (24, Level.INC, None), (48, Level.INC, None),
                        (72, Level.FULL, None), (96, Level.INC, None)])
    got = verdicts(archives, Rules(last=3))
    assert [got[k][1] for k in "43210"] == [
        "last #1", "last #2", "last #3", f"needed by {archives[2].archive}",
        f"needed by {archives[2].archive}"]


def test_an_archive_needed_for_one_disk_brings_the_chain_of_another():
    # vdb's full is archive 0; archive 1 is vda's full but vdb's incremental;
    # archive 2 has vda only: it needs 1, and 1 needs 0 (for vdb).
    archives = history([(1, Level.FULL, Level.FULL), (2, Level.FULL, Level.INC), (3, Level.INC, None)])
    got = verdicts(archives, Rules(last=1))
    assert got["2"] == (Verdict.KEEP, "last #1")
    assert got["1"] == (Verdict.KEEP, f"needed by {archives[2].archive}")
    assert got["0"] == (Verdict.KEEP, f"needed by {archives[1].archive}")


def test_per_disk_chains_keep_each_disks_full():
    # vdb added at the third archive (its full there), vda's full is the first
    archives = history([(0, Level.FULL, None), (24, Level.INC, None), (48, Level.INC, Level.FULL), (72, Level.INC, Level.INC)])
    got = verdicts(archives, Rules(last=1))
    assert all(got[k][0] == Verdict.KEEP for k in "0123")


def test_keep_within_alone_never_deletes_the_newest_chain():
    # A week without backups (a failing host): borg's --keep-within 1d alone would
    # delete everything, and the next incremental would have no parent.
    archives = history([(0, Level.FULL, None), (24, Level.INC, None), (48, Level.FULL, None), (72, Level.INC, None)],
                       start=NOW - timedelta(days=10))
    got = verdicts(archives, Rules(within_hours=24))
    assert got["3"] == (Verdict.KEEP, NEWEST)
    assert got["2"] == (Verdict.KEEP, f"needed by {archives[3].archive}")
    assert [got[k][0] for k in "01"] == [Verdict.PRUNE] * 2


def test_daily_weekly_keep_the_newest_of_each_period():
    archives = history([(h, Level.FULL, None) for h in range(0, 24 * 20, 6)])   # 4 a day, 20 days
    got = verdicts(archives, Rules(daily=3))
    kept = sorted((k for k, (v, _) in got.items() if v == Verdict.KEEP), key=int)
    assert kept == ["71", "75", "79"]                                       # the last of 3 days


# --- properties ---------------------------------------------------------------------

LEVELS = st.sampled_from([Level.FULL, Level.INC])
SPECS = st.lists(st.tuples(st.integers(1, 24 * 40), LEVELS, st.one_of(st.none(), LEVELS)),
                 min_size=1, max_size=25).map(
    lambda steps: [(sum(h for h, _, _ in steps[:i + 1]), vda if i else Level.FULL,
                    vdb if (vdb and i) else (Level.FULL if vdb else None))
                   for i, (_h, vda, vdb) in enumerate(steps)])
RULES = st.builds(Rules, within_hours=st.sampled_from([0, 0, 24, 24 * 30]),
                  last=st.integers(0, 4), hourly=st.integers(0, 3), daily=st.integers(0, 5),
                  weekly=st.integers(0, 3), monthly=st.integers(0, 3), yearly=st.integers(0, 2))


@settings(max_examples=300, deadline=None)
@given(SPECS, RULES)
def test_every_kept_archive_has_its_whole_chain(spec, rules):
    archives = history(spec)
    result = decide(archives, rules, NOW, UTC)
    kept = {a.archive for a, v, _ in result if v == Verdict.KEEP}
    assert {a.archive for a, _, _ in result} == {a.archive for a in archives}
    for a, v, _ in result:
        if v == Verdict.KEEP:
            for t in a.summary.disks:
                try:
                    needed = disk_chain(archives, a, t)
                except Exception:
                    continue
                assert {x.archive for x in needed} <= kept
    assert max(archives, key=lambda a: a.order).archive in kept


def _borg_prune(archives, rules):
    """The archives borg's own prune keeps (imported from the installed borg)."""
    from borg.helpers import prune_split, prune_within
    items = [SimpleNamespace(id=a.archive, ts=datetime.strptime(a.time, "%Y-%m-%dT%H:%M:%SZ")
                             .replace(tzinfo=UTC)) for a in archives]
    kept_because, keep = {}, []
    if rules.within_hours:
        import borg.helpers.misc as misc
        real_now = misc.datetime

        class Frozen(datetime):
            @classmethod
            def now(cls, tz=None):
                return NOW

        misc.datetime = Frozen
        try:
            keep += prune_within(items, rules.within_hours, kept_because)
        finally:
            misc.datetime = real_now
    for rule in ("secondly", "hourly", "daily", "weekly", "monthly", "yearly"):
        n = getattr(rules, "last" if rule == "secondly" else rule)
        if n:
            keep += prune_split(items, rule, n, kept_because)
    return {a.id for a in keep}


@pytest.fixture
def local_time_is_utc(monkeypatch):
    """Make the process's local time UTC for the test, whatever the host's zone,
    and put the host's back afterwards."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# The fixture holds for every example: it sets the same zone for all of them.
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 24 * 40), min_size=1, max_size=30), RULES)
def test_without_chains_it_agrees_with_borg(local_time_is_utc, gaps, rules):
    # borg's periods are local time; kept_points is given UTC, so compare in UTC
    assert time.localtime().tm_gmtoff == 0
    archives = history([(sum(gaps[:i + 1]), Level.FULL, None) for i in range(len(gaps))])
    mine = set(kept_points(archives, rules, NOW, UTC))
    assert mine == _borg_prune(archives, rules)


def test_dependents_of_an_archive():
    from borg_vm.core.retention import dependents
    archives = history([(0, Level.FULL, None), (24, Level.INC, None), (48, Level.INC, None), (72, Level.FULL, None)])
    assert [a.archive for a in dependents(archives, archives[1])] == [archives[2].archive]
    assert [a.archive for a in dependents(archives, archives[0])] == [
        archives[2].archive, archives[1].archive]
    assert dependents(archives, archives[3]) == []
    assert dependents(archives, archives[2]) == []
