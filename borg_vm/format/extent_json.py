"""manifest.json as bytes: read with memory bounded by its size whatever it holds,
written in pieces. Pure, no I/O.

``json.loads`` makes a Python object of every value: a list, two ints and a
string per extent (~230 bytes; a hostile manifest of 2,000,001 extents in 54
MiB took a restore to 746 MB), and a 64 MiB document of ``[[],[],...]`` makes
22 million lists (~1.4 GB). ``loads`` here scans the raw bytes itself:

- an array that is the value of a key ``"extents"`` becomes an ExtentArray
  (core/extent_arrays.py, 17 bytes an extent), its elements matched as
  ``[START, LENGTH, "data"|"zero"]``: integers without sign, fraction or
  exponent, JSON whitespace anywhere (version 2 indented them);
- every other value is made as ``json.loads`` makes it, but all of them
  together may hold at most ``MAX_HELD`` bytes of Python objects (as
  ``sys.getsizeof`` counts them) and nest at most ``MAX_DEPTH`` deep;
- a key repeated in one object is refused (``json.loads`` keeps the last one:
  two readers of one document could disagree on what it says).

Apart from these, it accepts what ``json.loads`` accepts of UTF-8 and makes the
same values, which the manifest's authentication code depends on
(format/auth.py: it is computed over the document as ``dump_chunks`` writes
it again): strings are decoded one at a time by ``json.decoder.scanstring``,
the standard library's own (a document decoded whole would take 4 bytes a
character as soon as one character lies beyond the BMP), numbers match
json's number grammar and become int or float as there. ``NaN``,
``Infinity``, ``-Infinity`` (``json.loads``'s extensions to JSON) and
encodings other than UTF-8 (the writer writes ASCII) are refused.

Why no library: ijson, the streaming parser (Debian's python3-ijson), parses
through yajl, whose upstream has been unmaintained since 2014 and which this
would expose to hostile input; with it or without, each extent costs a loop
of Python work, and the limits above are what remains to write around its
events: about as much code as this scanner, which leans on the standard
library for strings.
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from array import array
from collections.abc import Iterator
from typing import Any

from borg_vm.core.extent import KINDS
from borg_vm.core.extent_arrays import UNSIGNED_64, ExtentArray

EXTENTS_KEY = "extents"
# What the values besides extents lists may hold: a disk on a chain of
# MAX_LAYERS images (format/names.py), every one of them sealed, holds ~1.4
# MiB (measured), so this is ten such disks; a real domain's manifest holds a
# few KiB besides its extents.
MAX_HELD = 16 * 1024 * 1024
MAX_DEPTH = 32          # a manifest nests 7 deep (disks, frozen, extents)
CHUNK_EXTENTS = 4096    # extents dump_chunks writes in one piece
UTF8_PIECE = 1024 * 1024

_WS = re.compile(rb"[ \t\n\r]*")
_NUMBER = re.compile(rb"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\.)*"')
_W = rb"[ \t\n\r]*"
# 19 digits at most: below 2**64 (array 'Q'), far above any disk size.
_UINT = rb"(0|[1-9][0-9]{0,18})"
_EXTENT = re.compile(_W + rb"\[" + _W + _UINT + _W + rb"," + _W + _UINT + _W + rb"," + _W
                     + rb'"(data|zero)"' + _W + rb"\]" + _W + rb"([,\]])")
_LITERALS = ((b"true", True), (b"false", False), (b"null", None))
_KIND_JSON = {kind: json.dumps(kind).encode() for kind in KINDS}


def loads(raw: bytes) -> Any:
    """Return the JSON document raw holds, its extents lists as ExtentArrays (see
    the module docstring). Raise ValueError if it is not JSON, or exceeds the
    limits."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ValueError("Unexpected UTF-8 BOM")
    _check_utf8(raw)
    scan = _Scanner(raw)
    value, pos = scan.value(_skip(raw, 0), 0)
    pos = _skip(raw, pos)
    if pos != len(raw):
        raise ValueError(f"Extra data at byte {pos}")
    return value


def _check_utf8(raw: bytes) -> None:
    """Raise ValueError unless raw is UTF-8 (decoded a piece at a time: whole, it
    could take four times its size)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    for at in range(0, len(raw) + 1, UTF8_PIECE):
        try:
            decoder.decode(view[at:at + UTF8_PIECE], final=at + UTF8_PIECE > len(raw))
        except UnicodeDecodeError as e:
            raise ValueError(f"'utf-8' codec can't decode byte 0x{e.object[e.start]:02x} "
                             f"at byte {at + e.start}: {e.reason}") from None


def _skip(raw: bytes, pos: int) -> int:
    """Return the position after the JSON whitespace at pos."""
    m = _WS.match(raw, pos)
    assert m is not None   # the pattern matches the empty string
    return m.end()


class _Scanner:
    """One pass of loads over raw: the values made so far, charged against MAX_HELD."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.held = 0

    def charge(self, value: Any) -> Any:
        self.held += sys.getsizeof(value)
        if self.held > MAX_HELD:
            raise ValueError(f"the values besides extents hold more than {MAX_HELD} bytes")
        return value

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        """Return (the value at pos, the position after it)."""
        raw = self.raw
        c = raw[pos:pos + 1]
        if c in (b"{", b"["):
            if depth >= MAX_DEPTH:
                raise ValueError(f"values nest more than {MAX_DEPTH} deep at byte {pos}")
            return (self.object if c == b"{" else self.array)(pos + 1, depth + 1)
        if c == b'"':
            return self.string(pos)
        m = _NUMBER.match(raw, pos)
        if m:
            number = float(m[0]) if m[2] or m[3] else int(m[0])
            return self.charge(number), m.end()
        for text, literal in _LITERALS:
            if raw.startswith(text, pos):
                return self.charge(literal), pos + len(text)
        raise ValueError(f"Expecting value at byte {pos}")

    def string(self, pos: int) -> tuple[str, int]:
        m = _STRING.match(self.raw, pos)
        if m is None:
            raise ValueError(f"Unterminated string or control character at byte {pos}")
        text = m[0].decode("utf-8")
        value, end = json.decoder.scanstring(text, 1, True)  # type: ignore[attr-defined]
        assert end == len(text)
        return self.charge(value), m.end()

    def object(self, pos: int, depth: int) -> tuple[dict[str, Any], int]:
        raw, out = self.raw, dict[str, Any]()
        pos = _skip(raw, pos)
        if raw[pos:pos + 1] == b"}":
            return self.charge(out), pos + 1
        while True:
            if raw[pos:pos + 1] != b'"':
                raise ValueError(f"Expecting property name enclosed in double quotes at "
                                 f"byte {pos}")
            key, pos = self.string(pos)
            pos = _skip(raw, pos)
            if raw[pos:pos + 1] != b":":
                raise ValueError(f"Expecting ':' delimiter at byte {pos}")
            pos = _skip(raw, pos + 1)
            if key in out:
                raise ValueError(f"key {key!r} repeated at byte {pos}")
            if key == EXTENTS_KEY and raw[pos:pos + 1] == b"[":
                out[key], pos = extents(raw, pos + 1)
            else:
                out[key], pos = self.value(pos, depth)
            closed, pos = _next_item(raw, pos, b"}")
            if closed:
                return self.charge(out), pos

    def array(self, pos: int, depth: int) -> tuple[list[Any], int]:
        raw, out = self.raw, list[Any]()
        pos = _skip(raw, pos)
        if raw[pos:pos + 1] == b"]":
            return self.charge(out), pos + 1
        while True:
            value, pos = self.value(pos, depth)
            out.append(value)
            closed, pos = _next_item(raw, pos, b"]")
            if closed:
                return self.charge(out), pos


def _next_item(raw: bytes, pos: int, close: bytes) -> tuple[bool, int]:
    """Given the position after an item of an object or array, return (whether
    close ends it there, the position after that ',' or close); raise ValueError
    if neither follows."""
    pos = _skip(raw, pos)
    c = raw[pos:pos + 1]
    if c not in (b",", close):
        raise ValueError(f"Expecting ',' delimiter at byte {pos}")
    return c == close, _skip(raw, pos + 1)


def extents(raw: bytes, pos: int) -> tuple[ExtentArray, int]:
    """Return (the extents list whose '[' ends before pos, the position after it)."""
    starts, lengths, kinds = array(UNSIGNED_64), array(UNSIGNED_64), bytearray()
    after = _skip(raw, pos)
    if raw[after:after + 1] == b"]":
        return ExtentArray(starts, lengths, kinds), after + 1
    match = _EXTENT.match
    while True:
        m = match(raw, pos)
        if m is None:
            raise ValueError(f'extent at byte {pos} is not [start, length, "data"|"zero"]')
        start, length, kind, sep = m.groups()
        starts.append(int(start))
        lengths.append(int(length))
        kinds.append(kind == b"zero")
        pos = m.end()
        if sep == b"]":
            return ExtentArray(starts, lengths, kinds), pos


def dump_chunks(value: Any) -> Iterator[bytes]:
    """Yield value as compact JSON in pieces: byte for byte what
    ``json.dumps(value, separators=(",", ":")).encode()`` returns, an
    ExtentArray written as the list of [start, length, kind] it holds, a few
    thousand extents a piece. value holds dicts with str keys, lists, str, int,
    bool, None and ExtentArrays."""
    if isinstance(value, ExtentArray):
        yield from _extent_chunks(value)
    elif isinstance(value, dict):
        yield b"{"
        for i, (k, v) in enumerate(value.items()):
            if not isinstance(k, str):
                raise TypeError(f"key {k!r} is not a string")
            yield (b"," if i else b"") + json.dumps(k).encode() + b":"
            yield from dump_chunks(v)
        yield b"}"
    elif isinstance(value, list):
        yield b"["
        for i, v in enumerate(value):
            if i:
                yield b","
            yield from dump_chunks(v)
        yield b"]"
    else:
        yield json.dumps(value).encode()


def _extent_chunks(extents: ExtentArray) -> Iterator[bytes]:
    yield b"["
    for lo in range(0, len(extents), CHUNK_EXTENTS):
        rows = extents[lo:lo + CHUNK_EXTENTS].rows()
        yield (b"," if lo else b"") + b",".join(b"[%d,%d,%s]" % (s, n, _KIND_JSON[k])
                                                for s, n, k in rows)
    yield b"]"
