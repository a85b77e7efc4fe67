"""Which archives this host can authenticate (format/trust.py): the planted
archives of issue #20 among them."""

from dataclasses import replace
from datetime import UTC, datetime

from borg_vm.format.names import ArchiveName, Level
from borg_vm.format.summary import ArchiveInfo, DiskSummary, Summary
from borg_vm.format.trust import authenticate

KEY, OTHER = b"k" * 32, b"o" * 32
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
DISKS = {"vda": DiskSummary(Level.FULL, 1 << 20, "qcow2", "/x", 0, 0)}


def info(stamp="20261205T020000Z", *, key=KEY, version=4, level=Level.FULL, parent=None,
         snapshot="base", time=None, id_="aa" * 32, suffix=""):
    name = ArchiveName("web01", snapshot, f"borgvm-{stamp}{suffix}")
    t = time or f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"
    s = Summary(level, parent, t, "u", DISKS, version=version)
    if key is not None and version >= 4:
        s = s.signed(key, str(name))
    return ArchiveInfo(name, s, id_)


def test_an_archive_signed_with_a_held_key_is_authentic_and_carries_it():
    good, bad = authenticate([info()], [OTHER, KEY], frozenset(), NOW)
    assert bad == [] and [g.key for g in good] == [KEY]


def test_an_archive_signed_with_another_key_is_named_with_that_key():
    good, [(a, why)] = authenticate([info(key=OTHER)], [KEY], frozenset(), NOW)
    assert good == [] and why.startswith("it was signed with key ")


def test_a_copied_comment_under_another_name_fails():
    real = info()
    planted = replace(real, name=ArchiveName("web01", "other", real.name.checkpoint))
    good, [(a, why)] = authenticate([planted], [KEY], frozenset(), NOW)
    assert a is planted and why == "its authentication code is wrong"


def test_an_unsigned_archive_of_format_4_is_not_authentic():
    good, [(_a, why)] = authenticate([info(key=None)], [KEY], frozenset(), NOW)
    assert why == "its comment carries no authentication code"


def test_older_formats_are_authentic_only_when_adopted():
    old = info(version=3, id_="bb" * 32)
    assert authenticate([old], [KEY], frozenset({"bb" * 32}), NOW)[1] == []
    good, [(_a, why)] = authenticate([old], [KEY], frozenset({"cc" * 32}), NOW)
    assert "format 3" in why


def test_a_planted_old_format_archive_in_2099_is_refused_twice_over():
    planted = info("20990101T000000Z", version=3, id_="dd" * 32)
    good, [(_a, why)] = authenticate([planted], [KEY], frozenset(), NOW)
    assert good == []


def test_a_time_in_the_future_or_unlike_the_checkpoint_is_implausible():
    future = info("20990101T000000Z")
    assert "in the future" in authenticate([future], [KEY], frozenset(), NOW)[1][0][1]
    moved = info(time="2026-12-05T03:00:00Z")
    assert "not its checkpoint's" in authenticate([moved], [KEY], frozenset(), NOW)[1][0][1]
    retry = info(suffix="-1")
    assert authenticate([retry], [KEY], frozenset(), NOW)[1] == []


def test_two_authentic_archives_claiming_one_checkpoint_are_both_refused():
    a = info(snapshot="base", id_="aa" * 32)
    b = info(snapshot="s1", id_="bb" * 32)
    c = info("20261204T020000Z", id_="cc" * 32)
    good, bad = authenticate([a, c, b], [KEY], frozenset(), NOW)
    assert [g.archive for g in good] == [c.archive]
    assert [x.archive for x, _why in bad] == [a.archive, b.archive]
    assert all("also claimed by" in why for _x, why in bad)


def test_an_incremental_keeps_its_parent_id_under_the_code():
    child = info(level=Level.INC, parent="web01.base.borgvm-20261204T020000Z")
    signed = replace(child, summary=replace(child.summary, parent_id="ee" * 32))
    _good, [(_a, why)] = authenticate([signed], [KEY], frozenset(), NOW)
    assert why == "its authentication code is wrong"
