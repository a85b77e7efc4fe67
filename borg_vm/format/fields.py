"""The checks every field of a manifest and an archive comment passes: a
repository may hold archives a compromised client crafted, so nothing is
trusted by shape (format/__init__.py). Each returns the value it checked or
raises ValueError saying what is wrong."""

from __future__ import annotations

import re
from typing import Any, TypeVar, overload

from borg_vm.format import auth
from borg_vm.format.names import MAX_VIRTUAL_SIZE, TARGET_RE, Level

_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ARCHIVE_ID_RE = _SHA256_RE   # Borg's archive IDs: 32 bytes in hex
_KEY_ID_RE = re.compile(rf"[0-9a-f]{{{auth.KEY_ID_HEX}}}")
# Disk targets become file and member names: libvirt's are like vda, sdb, hdc.

# A JSON object as json.loads (or extent_json.loads) returns it: checked field by field.
Doc = dict[str, Any]
T = TypeVar("T")


def archive_id(doc: Doc, key: str) -> str | None:
    value: str | None = get(doc, key, (str, type(None)))
    if value is not None and not _ARCHIVE_ID_RE.fullmatch(value):
        raise ValueError(f"{key} {value!r} is not a Borg archive ID")
    return value


def auth_code(doc: Doc) -> tuple[str, str] | None:
    value: list[object] | None = get(doc, "auth", (list, type(None)))
    if value is None:
        return None
    match value:
        case [str(key_id), str(code)] if (_KEY_ID_RE.fullmatch(key_id)
                                          and _SHA256_RE.fullmatch(code)):
            return key_id, code
    raise ValueError("auth must be [key id, code]")


def sha256(doc: Doc, key: str = "sha256") -> str:
    value = get(doc, key, str)
    if not _SHA256_RE.fullmatch(value):
        raise ValueError(f"{key} {value!r} is not 64 hex digits")
    return value


def check_target(target: object) -> str:
    """Return target if it is a plain disk target name; raise ValueError otherwise."""
    if not isinstance(target, str) or not TARGET_RE.fullmatch(target):
        raise ValueError(f"bad disk target {target!r}")
    return target


@overload
def typed(value: object, kinds: type[T], what: str) -> T: ...
@overload
def typed(value: object, kinds: tuple[type, ...], what: str) -> Any: ...
def typed(value: object, kinds: type | tuple[type, ...], what: str) -> Any:
    """Return value if it is an instance of kinds (a bool is never an int);
    raise ValueError naming what otherwise."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ValueError(f"{what} must be {names}, not {type(value).__name__}")
    return value


@overload
def get(doc: object, key: str, kinds: type[T]) -> T: ...
@overload
def get(doc: object, key: str, kinds: tuple[type, ...]) -> Any: ...
def get(doc: object, key: str, kinds: type | tuple[type, ...]) -> Any:
    """Return doc[key] checked by typed; raise ValueError if doc is no object or lacks key."""
    obj = typed(doc, dict, "the document")
    if key not in obj:
        raise ValueError(f"{key!r} is missing")
    return typed(obj[key], kinds, repr(key))


def level(value: object) -> Level:
    if typed(value, str, "level") not in set(Level):
        raise ValueError(f"unknown level {value!r}")
    return Level(str(value))


def time(doc: Doc) -> str:
    value = get(doc, "time", str)
    if not _TIME_RE.fullmatch(value):
        raise ValueError(f"time {value!r} is not like 2026-11-26T02:00:00Z")
    return value


def block_size(doc: Doc) -> int:
    value = get(doc, "block_size", int)
    if value <= 0 or value & (value - 1):
        raise ValueError(f"block_size {value} is not a power of two")
    return value


def virtual_size(value: int) -> int:
    if not 0 < value <= MAX_VIRTUAL_SIZE:
        raise ValueError(f"virtual size {value} is not in 1..{MAX_VIRTUAL_SIZE} bytes")
    return value


def byte_count(value: object, what: str, size: int) -> int:
    count = typed(value, int, what)
    if not 0 <= count <= size:
        raise ValueError(f"{what} {count} is not in 0..{size} (the disk size)")
    return count
