"""Borg's compression spec, checked before a backup starts.

A typo in ``--compression`` would otherwise surface only when ``borg
import-tar`` starts, after the backup job and its checkpoint exist. The
grammar is borg 1.4's (``borg help compression``)::

    SPEC  := obfuscate,N,INNER | INNER
    INNER := auto,BASE | BASE
    BASE  := none | lz4 | zstd[,L] | zlib[,L] | lzma[,L]

    zstd L: 1-22    zlib L: 0-9    lzma L: 0-9
    obfuscate N: 1-6 (relative), 110-123 (padding up to 2^(N-100) bytes), 250 (Padme)

Borg itself also takes a level after ``lz4`` or ``none`` (and ignores it),
``auto`` inside ``auto`` and ``obfuscate`` inside ``obfuscate``; they add
nothing, so they are refused here, as are signs and spaces in numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from borg_vm.errors import BadCompression

# Algorithm -> the levels it takes (empty: none).
ALGORITHMS: dict[str, tuple[int, ...]] = {
    "none": (), "lz4": (), "zstd": tuple(range(1, 23)),
    "zlib": tuple(range(0, 10)), "lzma": tuple(range(0, 10)),
}
OBFUSCATE_LEVELS = (*range(1, 7), *range(110, 124), 250)
_RANGES = {"zstd": "1-22", "zlib": "0-9", "lzma": "0-9"}
AUTO = "auto"
OBFUSCATE = "obfuscate"


@dataclass(frozen=True)
class Compression:
    """A valid compression spec; ``str()`` gives it in borg's syntax."""

    algorithm: str
    level: int | None = None
    auto: bool = False
    obfuscate: int | None = None

    def __str__(self) -> str:
        parts = [] if self.obfuscate is None else [OBFUSCATE, str(self.obfuscate)]
        parts += [AUTO] if self.auto else []
        parts += [self.algorithm] + ([] if self.level is None else [str(self.level)])
        return ",".join(parts)


def parse_compression(spec: str) -> Compression:
    """Given a borg compression spec, return it parsed; raise BadCompression if
    borg's grammar does not allow it (the message says what is wrong)."""
    def bad(detail: str) -> BadCompression:
        return BadCompression(spec=spec, detail=detail)

    words = spec.split(",")
    obfuscate = None
    if words[0] == OBFUSCATE:
        if len(words) < 3:
            raise bad("obfuscate needs N and an algorithm")
        obfuscate = _number(words[1], bad, "obfuscate N")
        if obfuscate not in OBFUSCATE_LEVELS:
            raise bad(f"obfuscate N must be 1-6, 110-123 or 250, not {obfuscate}")
        words = words[2:]
    auto = words[0] == AUTO
    if auto:
        if len(words) < 2:
            raise bad("auto needs an algorithm after it")
        words = words[1:]
    algorithm, level = _base(words, bad)
    return Compression(algorithm, level, auto, obfuscate)


def _base(words: list[str], bad: Callable[[str], BadCompression]) -> tuple[str, int | None]:
    """Return (algorithm, level or None) of a BASE spec split at commas."""
    name, rest = words[0], words[1:]
    if name not in ALGORITHMS:
        raise bad(f"unknown algorithm {name!r}")
    if not rest:
        return name, None
    if not ALGORITHMS[name]:
        raise bad(f"{name} takes no level")
    if len(rest) > 1:
        raise bad(f"unexpected {',' + ','.join(rest[1:])!r}")
    level = _number(rest[0], bad, "level")
    if level not in ALGORITHMS[name]:
        raise bad(f"{name} level must be {_RANGES[name]}, not {level}")
    return name, level


def _number(text: str, bad: Callable[[str], BadCompression], what: str) -> int:
    """Return text as a whole number (ASCII digits only); raise bad() otherwise."""
    if not (text.isascii() and text.isdigit()):
        raise bad(f"{what} {text!r} is not a number")
    return int(text)
