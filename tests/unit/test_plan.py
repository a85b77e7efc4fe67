"""Backup planning: when a run is incremental, and why it is not."""

from datetime import UTC, datetime

import pytest

from borg_vm.core.plan import AUTO, Disk, Plan, archive_name, latest, plan
from borg_vm.errors import EXIT_ERROR, NoUsableParent
from borg_vm.format.names import ArchiveName, Level, is_own_checkpoint
from borg_vm.format.summary import ArchiveInfo, DiskSummary, Summary

DOMAIN = "web01.example.com"
UUID = "9b1c5a5e-3c1e-4c55-9d7e-2a1d0b9c1f00"
VDA = Disk("vda", "/images/web01.qcow2", "qcow2", 10 << 30)
VDB = Disk("vdb", "/images/web01-data.qcow2", "qcow2", 20 << 30)
SDA = Disk("sda", "/dev/vg/web01-raw", "raw", 1 << 30)
WHEN = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)


def info(checkpoint, disks, *, level=Level.FULL, snapshot="20261125T020000Z", domain=DOMAIN,
         uuid=UUID, time="2026-11-26T02:00:00Z", parent=None):
    summary = Summary(level, parent, time, uuid,
                      {d.target: DiskSummary(level if d.incremental_capable else Level.FULL,
                                             d.virtual_size, d.format, d.source, 1, 0)
                       for d in disks})
    return ArchiveInfo(ArchiveName(domain, snapshot, checkpoint), summary)


PARENT = info("borgvm-20261126T020000Z", [VDA, VDB])
CHECKPOINTS = {"borgvm-20261126T020000Z"}


def test_incremental_when_everything_matches():
    p = plan(AUTO, DOMAIN, UUID, [VDA, VDB], [PARENT], CHECKPOINTS)
    assert p.level == Level.INC
    assert p.parent is PARENT
    assert p.parent_checkpoint == "borgvm-20261126T020000Z"
    assert p.disk_levels == {"vda": Level.INC, "vdb": Level.INC}
    assert PARENT.archive in p.reason


@pytest.mark.parametrize("requested", [AUTO, Level.INC])
def test_incremental_requested_or_auto(requested):
    assert plan(requested, DOMAIN, UUID, [VDA, VDB], [PARENT], CHECKPOINTS).level == Level.INC


FULL_CASES = {
    "no archive": (dict(archives=[]), "no earlier archive"),
    "other domain only": (dict(archives=[info("borgvm-20261126T020000Z", [VDA, VDB],
                                              domain="web01")]), "no earlier archive"),
    "uuid changed": (dict(uuid="00000000-0000-0000-0000-000000000000"), "UUID changed"),
    "checkpoint gone": (dict(checkpoints=set()), "is gone from libvirt"),
    "checkpoint gone, others left": (dict(checkpoints={"borgvm-20261125T020000Z"}),
                                     "borgvm-20261126T020000Z"),
}


@pytest.mark.parametrize("case", FULL_CASES)
def test_full_when_no_usable_parent(case):
    over, why = FULL_CASES[case]
    args = dict(disks=[VDA, VDB], archives=[PARENT], checkpoints=CHECKPOINTS, uuid=UUID)
    args.update(over)
    p = plan(AUTO, DOMAIN, args["uuid"], args["disks"], args["archives"], args["checkpoints"])
    assert p.level == Level.FULL
    assert why in p.reason
    assert p.parent is None and p.parent_checkpoint is None
    assert p.disk_levels == {d.target: Level.FULL for d in args["disks"]}

    with pytest.raises(NoUsableParent) as e:
        plan(Level.INC, DOMAIN, args["uuid"], args["disks"], args["archives"], args["checkpoints"])
    assert e.value.exit_code == EXIT_ERROR == 2
    assert why in e.value.message
    assert repr(DOMAIN) in e.value.message


# A disk's own history decides its level (issue #8 item 7); the others stay
# incremental. (disks, expected levels, what the reason names)
VDC = Disk("vdc", "/images/c.qcow2", "qcow2", 1 << 30)
PER_DISK_CASES = {
    "disk added": ([VDA, VDB, VDC], {"vda": Level.INC, "vdb": Level.INC, "vdc": Level.FULL},
                   f"vdc (new disk, not in {PARENT.archive})"),
    "disk removed": ([VDA], {"vda": Level.INC}, None),
    "disk renamed": ([VDA, Disk("vdc", VDB.source, "qcow2", VDB.virtual_size)],
                     {"vda": Level.INC, "vdc": Level.FULL}, "vdc (new disk"),
    "resized": ([VDA, Disk("vdb", VDB.source, "qcow2", 21 << 30)], {"vda": Level.INC, "vdb": Level.FULL},
                f"vdb (resized from {20 << 30} to {21 << 30} bytes)"),
    "new format": ([VDA, Disk("vdb", VDB.source, "raw", VDB.virtual_size)],
                   {"vda": Level.INC, "vdb": Level.FULL}, "vdb (raw, not qcow2)"),
    # An external snapshot puts a new top image under the same target: libvirt
    # carries the checkpoint into it, so nothing here forces a full.
    "new layer": ([VDA, Disk("vdb", "/images/web01-data.snap1", "qcow2", VDB.virtual_size)],
                  {"vda": Level.INC, "vdb": Level.INC}, None),
}


@pytest.mark.parametrize("case", PER_DISK_CASES)
def test_per_disk_levels(case):
    disks, levels, names = PER_DISK_CASES[case]
    for requested in (AUTO, Level.INC):
        p = plan(requested, DOMAIN, UUID, disks, [PARENT], CHECKPOINTS)
        assert p.level == Level.INC and p.parent is PARENT
        assert p.disk_levels == levels
        assert p.reason.startswith(f"incremental on top of {PARENT.archive}")
        if names is None:
            assert p.reason == f"incremental on top of {PARENT.archive}"
        else:
            assert f"; full backup of {names}" in p.reason


def test_full_when_every_disk_needs_one():
    disks = [Disk("vda", VDA.source, "qcow2", 11 << 30), VDC]
    p = plan(AUTO, DOMAIN, UUID, disks, [PARENT], CHECKPOINTS)
    assert p.level == Level.FULL and p.parent is None
    assert p.disk_levels == {"vda": Level.FULL, "vdc": Level.FULL}
    assert "vda: resized" in p.reason and "vdc: new disk" in p.reason
    with pytest.raises(NoUsableParent, match="vdc: new disk"):
        plan(Level.INC, DOMAIN, UUID, disks, [PARENT], CHECKPOINTS)


def test_disk_whose_chain_is_broken_goes_full_alone():
    # vdb's full is gone from the repository (deleted by hand), vda's chain is whole.
    full_a = info("borgvm-20261124T020000Z", [VDA], time="2026-11-24T02:00:00Z")
    inc = ArchiveInfo(ArchiveName(DOMAIN, "20261125T020000Z", "borgvm-20261126T020000Z"),
                      Summary(Level.INC, str(full_a.name), "2026-11-26T02:00:00Z", UUID,
                              {"vda": DiskSummary(Level.INC, VDA.virtual_size, "qcow2", VDA.source,
                                                  1, 0),
                               "vdb": DiskSummary(Level.INC, VDB.virtual_size, "qcow2", VDB.source,
                                                  1, 0)}))
    p = plan(AUTO, DOMAIN, UUID, [VDA, VDB], [full_a, inc], CHECKPOINTS)
    assert p.disk_levels == {"vda": Level.INC, "vdb": Level.FULL}
    assert "vdb (its chain cannot be restored" in p.reason


def test_full_when_all_disks_raw():
    parent = info("borgvm-20261126T020000Z", [SDA])
    p = plan(AUTO, DOMAIN, UUID, [SDA], [parent], CHECKPOINTS)
    assert p.level == Level.FULL
    assert "qcow2" in p.reason
    with pytest.raises(NoUsableParent):
        plan(Level.INC, DOMAIN, UUID, [SDA], [parent], CHECKPOINTS)


def test_full_requested_overrides_usable_parent():
    p = plan(Level.FULL, DOMAIN, UUID, [VDA, VDB], [PARENT], CHECKPOINTS)
    assert p == Plan(Level.FULL, "--level full was asked for", None, {"vda": Level.FULL, "vdb": Level.FULL})


def test_full_requested_without_parent():
    assert plan(Level.FULL, DOMAIN, UUID, [VDA], [], set()).level == Level.FULL


def test_raw_disk_in_incremental_is_full():
    parent = info("borgvm-20261126T020000Z", [VDA, SDA])  # a full: its chain restores
    p = plan(AUTO, DOMAIN, UUID, [VDA, SDA], [parent], CHECKPOINTS)
    assert p.level == Level.INC
    assert p.disk_levels == {"vda": Level.INC, "sda": Level.FULL}


def test_parent_is_newest_archive():
    older = info("borgvm-20261125T020000Z", [VDA, VDB], time="2026-11-25T02:00:00Z")
    p = plan(AUTO, DOMAIN, UUID, [VDA, VDB], [PARENT, older],
             CHECKPOINTS | {"borgvm-20261125T020000Z"})
    assert p.parent is PARENT


def test_newest_archive_checkpoint_gone_does_not_fall_back_to_older():
    # libvirt keeps only the newest borg-vm checkpoint; an older archive's
    # checkpoint may still exist, but the data since then is not in a chain.
    older = info("borgvm-20261125T020000Z", [VDA, VDB], time="2026-11-25T02:00:00Z")
    p = plan(AUTO, DOMAIN, UUID, [VDA, VDB], [PARENT, older], {"borgvm-20261125T020000Z"})
    assert p.level == Level.FULL


# --- latest ----------------------------------------------------------------------

def test_latest_by_time_not_list_order_or_name():
    a = info("borgvm-20261126T020000Z", [VDA], time="2026-11-26T02:00:00Z")
    b = info("borgvm-20261127T020000Z", [VDA], time="2026-11-27T02:00:00Z")
    c = info("borgvm-20261125T020000Z", [VDA], time="2026-11-25T02:00:00Z")
    assert latest([a, b, c], DOMAIN) is b
    assert latest([b, c, a], DOMAIN) is b
    # time decides even when checkpoint names disagree (clock set back, say)
    d = info("borgvm-20200101T000000Z", [VDA], time="2026-11-28T02:00:00Z")
    assert latest([a, b, c, d], DOMAIN) is d


def test_latest_same_second_uses_checkpoint():
    a = info("borgvm-20261126T020000Z", [VDA])
    b = info("borgvm-20261126T020000Z-1", [VDA])
    assert latest([b, a], DOMAIN) is b


def test_latest_other_domains_and_empty():
    other = info("borgvm-20261129T020000Z", [VDA], domain="web01",
                 time="2026-11-29T02:00:00Z")
    assert latest([other, PARENT], DOMAIN) is PARENT
    assert latest([other], DOMAIN) is None
    assert latest([], DOMAIN) is None


# --- archive_name ------------------------------------------------------------------

def test_archive_name_is_the_layer_and_a_new_checkpoint():
    name = archive_name(DOMAIN, "pre-upgrade.1", WHEN, CHECKPOINTS)
    assert name == ArchiveName(DOMAIN, "pre-upgrade%2E1", "borgvm-20261127T020000Z")
    assert ArchiveName.parse(str(name)) == name


def test_archive_name_avoids_taken_checkpoint():
    name = archive_name(DOMAIN, "base", WHEN, {"borgvm-20261127T020000Z"})
    assert name.checkpoint == "borgvm-20261127T020000Z-1"
    assert is_own_checkpoint(name.checkpoint)
    assert ArchiveName.parse(str(name)) == name


def test_full_when_parent_chain_is_broken():
    # The full archive of the chain was deleted (borg delete/prune by hand); the
    # newest archive and its checkpoint are fine, but nothing built on them restores.
    full = info("borgvm-20261125T020000Z", [VDA, VDB], time="2026-11-25T02:00:00Z")
    inc = info("borgvm-20261126T020000Z", [VDA, VDB], level=Level.INC, parent=str(full.name))
    p = plan(AUTO, DOMAIN, UUID, [VDA, VDB], [inc], CHECKPOINTS)
    assert p.level == Level.FULL


# --- new chains on a schedule: --full-every ---------------------------------------------

from datetime import UTC, timedelta  # noqa: E402

from borg_vm.core.plan import FullEvery  # noqa: E402


def chain_of(n_incs, start="2026-11-01T02:00:00Z"):
    t0 = datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    arcs, parent = [], None
    for i in range(n_incs + 1):
        when = t0 + timedelta(days=i)
        a = info(f"borgvm-{when:%Y%m%dT%H%M%SZ}", [VDA, VDB], level=Level.INC if i else Level.FULL,
                 time=f"{when:%Y-%m-%dT%H:%M:%SZ}", parent=parent)
        arcs.append(a)
        parent = a.archive
    return arcs


@pytest.mark.parametrize("text, age, count", [("30d", 30 * 86400, None), ("2w", 14 * 86400, None),
                                              ("12H", 12 * 3600, None), ("14", None, 14),
                                              ("1m", 31 * 86400, None), ("1y", 365 * 86400, None),
                                              ("never", None, None)])
def test_full_every_parses(text, age, count):
    assert FullEvery.parse(text) == FullEvery(text, age, count)


@pytest.mark.parametrize("text", ["", "0", "0d", "d", "-1", "3x", "1.5d", " 3", "Never", "no",
                                  "12h", "30s", "90M"])
def test_full_every_rejects(text):
    with pytest.raises(ValueError):
        FullEvery.parse(text)


def test_full_every_and_keep_within_read_one_unit_alike():
    """The bug of two parsers: --full-every 1m was a minute, --keep-within 1m a month."""
    from borg_vm.core import durations
    assert FullEvery.parse("1m").age == durations.parse_hours("1m") * 3600 == 31 * 86400


def test_full_every_count_starts_a_new_chain_when_due_and_not_before():
    arcs = chain_of(3)                       # a full and 3 incrementals
    cps = {arcs[-1].name.checkpoint}
    now = datetime(2026, 11, 5, 2, 0, tzinfo=UTC)
    assert plan(AUTO, DOMAIN, UUID, [VDA, VDB], arcs, cps, FullEvery.parse("4"), now).level == Level.INC
    p = plan(AUTO, DOMAIN, UUID, [VDA, VDB], arcs, cps, FullEvery.parse("3"), now)
    assert p.level == Level.FULL and p.parent is None
    assert p.reason == "a new chain: disk vda: its chain has 3 incrementals (--full-every 3)"
    # --level inc is obeyed even when a new chain is due
    assert plan(Level.INC, DOMAIN, UUID, [VDA, VDB], arcs, cps, FullEvery.parse("3"), now).level == Level.INC


def test_full_every_age_starts_a_new_chain_when_due_and_not_before():
    arcs = chain_of(2)                       # full on 2026-11-01
    cps = {arcs[-1].name.checkpoint}
    every = FullEvery.parse("7d")
    early = datetime(2026, 11, 8, 1, 59, 59, tzinfo=UTC)
    assert plan(AUTO, DOMAIN, UUID, [VDA, VDB], arcs, cps, every, early).level == Level.INC
    due = datetime(2026, 11, 8, 2, 0, 0, tzinfo=UTC)
    p = plan(AUTO, DOMAIN, UUID, [VDA, VDB], arcs, cps, every, due)
    assert p.level == Level.FULL and "is from 2026-11-01T02:00:00Z (--full-every 7d)" in p.reason


def test_full_every_age_without_now_is_as_of_the_current_time():
    """now defaults to None; an age used to be subtracted from it (a TypeError)."""
    arcs = chain_of(2, start="2020-01-01T02:00:00Z")  # long before the clock
    p = plan(AUTO, DOMAIN, UUID, [VDA, VDB], arcs, {arcs[-1].name.checkpoint},
             FullEvery.parse("7d"))
    assert p.level == Level.FULL and "(--full-every 7d)" in p.reason


def test_full_every_never_keeps_one_chain():
    arcs = chain_of(400)                     # a full more than a year old, 400 incrementals
    cps = {arcs[-1].name.checkpoint}
    later = datetime(2028, 1, 1, tzinfo=UTC)
    assert plan(AUTO, DOMAIN, UUID, [VDA, VDB], arcs, cps, FullEvery.parse("never"),
                later).level == Level.INC
