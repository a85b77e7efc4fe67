"""Durations as Borg spells them, for every option that takes one. Pure.

``N`` and one unit, as ``borg prune --keep-within`` takes them (Borg 1.4)::

    H  hours     d  days     w  weeks     m  months (31 days)     y  years (365 days)

``m`` is months, never minutes: borg-vm before 0.2 read ``--full-every 90m`` as
90 minutes while ``--keep-within 1m`` meant a month; one grammar now serves both.
"""

from __future__ import annotations

HOURS = {"H": 1, "d": 24, "w": 24 * 7, "m": 24 * 31, "y": 24 * 365}
SECONDS_PER_HOUR = 3600
EXAMPLE = "7d"


def parse_hours(text: str) -> int:
    """Return the hours in a duration such as '7d', '12H', '2w', '6m' or '1y'.

    Raise ValueError for anything else (no unit, an unknown unit, a number that
    is not a whole number > 0).
    """
    number, unit = text[:-1], text[-1:]
    if unit not in HOURS or not (number.isascii() and number.isdigit()) or int(number) <= 0:
        hint = " (m is months; hours are H)" if unit in ("h", "s", "M") else ""
        raise ValueError(f"not a duration: {text!r}: a whole number > 0 and one of "
                         f"{', '.join(HOURS)}, e.g. {EXAMPLE}{hint}")
    return int(number) * HOURS[unit]


def parse_seconds(text: str) -> int:
    """Return the seconds in a duration (see parse_hours); raise ValueError."""
    return parse_hours(text) * SECONDS_PER_HOUR
