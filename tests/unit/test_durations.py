"""Durations as Borg spells them (core/durations.py)."""

import pytest

from borg_vm.core.durations import parse_hours, parse_seconds


def test_borgs_units():
    assert [parse_hours(x) for x in ("12H", "7d", "2w", "6m", "1y")] == [
        12, 168, 336, 24 * 31 * 6, 24 * 365]
    assert parse_seconds("2H") == 7200


@pytest.mark.parametrize("bad", ["", "7", "d", "0d", "-1d", "7x", "1.5d", "１d", " 7d"])
def test_anything_else_is_refused(bad):
    with pytest.raises(ValueError, match="not a duration"):
        parse_hours(bad)


@pytest.mark.parametrize("bad", ["12h", "30s", "90M"])
def test_lower_case_hours_seconds_and_minutes_say_what_borg_spells(bad):
    with pytest.raises(ValueError, match="m is months; hours are H"):
        parse_hours(bad)
