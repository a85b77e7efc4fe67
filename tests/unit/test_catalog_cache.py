"""When the repository's listing confirms the restore point a restore started
from what this host saw before (services/catalog_cache.confirms), and how a run
started from a guess ends (attempt)."""

from dataclasses import replace

import pytest

from borg_vm.format.names import ArchiveName, Level
from borg_vm.format.summary import ArchiveInfo, DiskSummary, Summary
from borg_vm.services.catalog_cache import Unconfirmed, attempt, confirms

DISKS = {"vda": DiskSummary(Level.FULL, 1 << 20, "qcow2", "/x", 0, 0)}


def info(n: int, id_: str | None = None, level=Level.FULL) -> ArchiveInfo:
    name = ArchiveName("web01", "base", f"borgvm-2026120{n}T020000Z")
    return ArchiveInfo(name, Summary(level, None, f"2026-12-0{n}T02:00:00Z", "u", DISKS),
                       id_ or f"{n:02d}" * 32)


FULL, INC, LATER = info(1), info(2, level=Level.INC), info(3)


def test_the_same_point_among_more_archives_is_confirmed():
    guess = ([FULL, INC], INC)
    assert confirms(([FULL, INC, LATER], INC), guess, [INC, FULL])


def test_an_archive_the_restore_did_not_read_may_be_gone():
    assert confirms(([INC], INC), ([FULL, INC], INC), [INC])


def test_another_top_is_not_confirmed():
    guess = ([FULL, INC], INC)
    assert not confirms(([FULL, info(2, id_="ff" * 32)], info(2, id_="ff" * 32)), guess, [INC])
    changed = replace(INC, summary=replace(INC.summary, uuid="v"))
    assert not confirms(([FULL, changed], changed), guess, [INC])


def test_an_archive_read_that_is_gone_or_changed_is_not_confirmed():
    guess = ([FULL, INC], INC)
    assert not confirms(([INC], INC), guess, [INC, FULL])
    assert not confirms(([info(1, id_="ee" * 32), INC], INC), guess, [INC, FULL])


def test_attempt_returns_the_run_or_none_when_the_listing_does_not_confirm_it():
    def unconfirmed() -> None:
        raise Unconfirmed()

    def failing() -> None:
        raise OSError("the guess named a gone archive")

    assert attempt(lambda: 7, unconfirmed) == 7            # ended well: not asked again
    assert attempt(unconfirmed, lambda: None) is None      # refused where it must confirm
    assert attempt(failing, unconfirmed) is None           # failed, and the guess was wrong
    with pytest.raises(OSError):                           # failed, the guess was right
        attempt(failing, lambda: None)


def test_attempt_raises_the_listings_own_error_first():
    def failing() -> None:
        raise OSError("cut short")

    def listing_failed() -> None:
        raise ValueError("the repository is gone")

    with pytest.raises(ValueError):
        attempt(failing, listing_failed)
