"""Chains: point-in-time selection, per-disk restore chains, grouping."""

from dataclasses import replace

import pytest

from borg_vm.core.chain import disk_chain, group, of_domain, restore_chain, select
from borg_vm.errors import ArchiveNotFound, BrokenChain, FormatError, UnknownDisk
from borg_vm.format.names import ArchiveName, Level
from borg_vm.format.summary import ArchiveInfo, DiskSummary, Summary

DOMAIN = "web01.example.com"


def arc(day, level, parent=None, *, snapshot="20261101T020000Z", domain=DOMAIN, disks=None,
        suffix=""):
    """An archive made at 02:00 on November `day`; disks maps target -> disk level."""
    checkpoint = f"borgvm-202611{day:02d}T020000Z{suffix}"
    disks = disks if disks is not None else {"vda": level, "sdb": Level.FULL}
    summary = Summary(level, str(parent.name) if parent else None,
                      f"2026-11-{day:02d}T02:00:00Z", "uuid",
                      {t: DiskSummary(lv, 1 << 30, "qcow2" if lv == Level.INC else "raw", f"/{t}",
                                      1, 0)
                       for t, lv in disks.items()})
    return ArchiveInfo(ArchiveName(domain, snapshot, checkpoint), summary)


C1 = arc(1, Level.FULL)
C2 = arc(2, Level.INC, C1)
C3 = arc(3, Level.INC, C2)
C4 = arc(4, Level.FULL, snapshot="20261104T020000Z")
C5 = arc(5, Level.INC, C4, snapshot="20261104T020000Z")
OTHER = arc(6, Level.FULL, domain="web01")
ALL = [C5, C3, OTHER, C1, C4, C2]


# --- select -------------------------------------------------------------------------

def test_select_newest():
    assert select(ALL, DOMAIN, None) is C5
    assert select(ALL, "web01", None) is OTHER


@pytest.mark.parametrize("a", [C1, C2, C3, C4, C5])
def test_select_by_checkpoint(a):
    assert select(ALL, DOMAIN, a.name.checkpoint) is a


def test_select_unknown_checkpoint_lists_known():
    with pytest.raises(ArchiveNotFound) as e:
        select(ALL, DOMAIN, "borgvm-20261231T000000Z")
    msg = e.value.message
    assert "borgvm-20261231T000000Z" in msg
    for a in (C1, C2, C3, C4, C5):
        assert a.name.checkpoint in msg
    assert OTHER.name.checkpoint not in msg
    assert e.value.exit_code == 2


def test_select_checkpoint_of_other_domain_is_not_found():
    with pytest.raises(ArchiveNotFound):
        select(ALL, DOMAIN, OTHER.name.checkpoint)


def test_select_no_archives():
    with pytest.raises(ArchiveNotFound, match="no borg-vm archive of 'ghost'"):
        select(ALL, "ghost", None)
    with pytest.raises(ArchiveNotFound):
        select([], DOMAIN, "borgvm-20261101T020000Z")


def test_of_domain_oldest_first():
    assert of_domain(ALL, DOMAIN) == [C1, C2, C3, C4, C5]
    assert of_domain(ALL, "web01") == [OTHER]
    assert of_domain(ALL, "web") == []


# --- disk_chain ---------------------------------------------------------------------

def test_disk_chain_full_first():
    assert disk_chain(ALL, C3, "vda") == [C1, C2, C3]
    assert disk_chain(ALL, C2, "vda") == [C1, C2]
    assert disk_chain(ALL, C5, "vda") == [C4, C5]


def test_disk_chain_of_full_is_itself():
    assert disk_chain(ALL, C1, "vda") == [C1]
    assert disk_chain(ALL, C4, "vda") == [C4]


def test_disk_chain_raw_disk_is_just_the_top():
    assert disk_chain(ALL, C3, "sdb") == [C3]
    # even when the incremental chain of the other disk is broken
    assert disk_chain([C3], C3, "sdb") == [C3]


def test_disk_chain_broken_names_missing_archive():
    with pytest.raises(BrokenChain) as e:
        disk_chain([C1, C3], C3, "vda")
    assert str(C2.name) in e.value.message
    assert str(C3.name) in e.value.message
    assert e.value.exit_code == 2


def test_disk_chain_broken_further_back():
    with pytest.raises(BrokenChain) as e:
        disk_chain([C2, C3], C3, "vda")
    assert str(C1.name) in e.value.message


def test_disk_chain_incremental_without_parent():
    orphan = arc(7, Level.INC)
    with pytest.raises(BrokenChain, match="its parent"):
        disk_chain([orphan], orphan, "vda")


def test_disk_chain_parent_lacks_disk():
    parent = arc(1, Level.FULL, disks={"vdb": Level.INC})
    top = arc(2, Level.INC, parent)
    with pytest.raises(BrokenChain, match=f"disk vda in {parent.name}"):
        disk_chain([parent, top], top, "vda")


def test_disk_chain_parent_cycle_is_broken_not_endless():
    # A damaged repository (hand-edited comments) must not hang a restore.
    a = arc(1, Level.INC)
    b = arc(2, Level.INC, a)
    a = ArchiveInfo(a.name, Summary(Level.INC, str(b.name), a.summary.time, "uuid",
                                    a.summary.disks))
    with pytest.raises(BrokenChain, match="loops"):
        disk_chain([a, b], b, "vda")


def test_disk_chain_own_parent_is_broken():
    a = arc(1, Level.INC)
    a = ArchiveInfo(a.name, Summary(Level.INC, str(a.name), a.summary.time, "uuid", a.summary.disks))
    with pytest.raises(BrokenChain, match="loops"):
        disk_chain([a], a, "vda")


def test_disk_chain_unknown_disk():
    with pytest.raises(UnknownDisk) as e:
        disk_chain(ALL, C3, "vdz")
    assert "'vdz'" in e.value.message
    assert "sdb, vda" in e.value.message
    assert repr(DOMAIN) in e.value.message


# --- restore_chain ------------------------------------------------------------------

def test_restore_chain_is_the_disk_chain_when_the_size_holds():
    assert restore_chain(ALL, C3, "vda") == [C1, C2, C3]


def test_restore_chain_refuses_a_disk_that_changes_size():
    """Restore sized every image of a chain from its own archive's comment: a
    chain that changes size wrote images mount and verify refused."""
    bigger = arc(3, Level.INC, C2)
    bigger = ArchiveInfo(bigger.name, Summary(
        Level.INC, C2.archive, bigger.time, "uuid",
        {"vda": DiskSummary(Level.INC, 2 << 30, "qcow2", "/vda", 1, 0)}))
    with pytest.raises(FormatError, match=r"disk vda changes size along its chain "
                                          rf"\(\[{1 << 30}, {2 << 30}\]\)") as e:
        restore_chain([C1, C2, bigger], bigger, "vda")
    assert bigger.archive in e.value.message



# --- group ------------------------------------------------------------------------

def test_group_by_domain_and_snapshot_in_time_order():
    g = group(ALL)
    assert list(g) == ["web01", DOMAIN]
    assert list(g[DOMAIN]) == ["20261101T020000Z", "20261104T020000Z"]
    assert g[DOMAIN]["20261101T020000Z"] == [C1, C2, C3]
    assert g[DOMAIN]["20261104T020000Z"] == [C4, C5]
    assert g["web01"] == {"20261101T020000Z": [OTHER]}


def test_group_chains_ordered_by_first_archive_time():
    # a snapshot whose name sorts first but started later comes later
    late = arc(9, Level.FULL, snapshot="20200101T000000Z")
    g = group([late, C1])
    assert list(g[DOMAIN]) == ["20261101T020000Z", "20200101T000000Z"]


def test_group_same_second_by_checkpoint():
    a = arc(1, Level.FULL)
    b = arc(1, Level.INC, a, suffix="-1")
    assert group([b, a])[DOMAIN]["20261101T020000Z"] == [a, b]


def test_group_empty():
    assert group([]) == {}



def test_a_chain_is_linked_by_archive_id_where_the_archive_records_it():
    full = _linked("20261125T020000Z", Level.FULL, None, "aa" * 32)
    inc = _linked("20261126T020000Z", Level.INC, full.archive, "bb" * 32, parent_id="aa" * 32)
    assert disk_chain([full, inc], inc, "vda") == [full, inc]
    swapped = replace(full, id="cc" * 32)     # another archive under the parent's name
    with pytest.raises(BrokenChain, match="is another archive under its name"):
        disk_chain([swapped, inc], inc, "vda")


def test_an_authentic_parent_with_a_new_id_is_the_one_moved_by_borg_transfer():
    """borg transfer (Borg 1 to Borg 2) gives every archive a new ID: a parent
    that carries this host's code, alone under its name, is still the one."""
    full = _linked("20261125T020000Z", Level.FULL, None, "aa" * 32)
    inc = _linked("20261126T020000Z", Level.INC, full.archive, "bb" * 32, parent_id="aa" * 32)
    moved = replace(full, id="cc" * 32, key=b"k" * 32)
    assert disk_chain([moved, inc], inc, "vda") == [moved, inc]
    twice = replace(moved, id="dd" * 32)   # two under one name (Borg 2 allows it): which?
    with pytest.raises(BrokenChain, match="is another archive under its name"):
        disk_chain([moved, twice, inc], inc, "vda")


def _linked(stamp, level, parent, id_, parent_id=None):
    t = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T02:00:00Z"
    disks = {"vda": DiskSummary(level, 1 << 20, "qcow2", "/x", 0, 0)}
    return ArchiveInfo(ArchiveName("web01", "base", f"borgvm-{stamp}"),
                       Summary(level, parent, t, "u", disks, parent_id=parent_id), id_)
