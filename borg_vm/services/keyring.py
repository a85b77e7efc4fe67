"""This host's authentication keys: one keyring per repository, named by the
repository's ID, outside the repository (format/auth.py says what they sign).

A keyring is a small JSON file, mode 0600 in a 0700 directory::

    {"borg-vm-keyring": 1, "repository": ID, "created": "2026-12-05T12:00:00Z",
     "keys": [BASE64, ...],        # the first signs; all authenticate
     "adopted": [ARCHIVE ID, ...]} # archives of formats 1-3 trusted at creation

It is made on first use (the first command that lists the repository), with
one new key, and adopting the archives of formats 1 to 3 the repository holds
then: they were written before borg-vm signed anything, so they are trusted
as found (trust on first use); one added later is not. ``borg-vm key export``
writes the keyring out, ``borg-vm key import`` merges one in (a new host after
a disaster, a domain that moved between hypervisors, a repository transferred
to a new one): imported keys authenticate, the keyring's own first key keeps
signing.

Where: ``BORG_VM_KEYS_DIR``, else ``$BORG_BASE_DIR/.config/borg-vm/keys`` when
BORG_BASE_DIR is set (as borg puts its own keys), else
``$XDG_CONFIG_HOME/borg-vm/keys`` (``~/.config/borg-vm/keys``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from borg_vm.errors import KeyringError
from borg_vm.format import auth

log = logging.getLogger(__name__)

KEYS_DIR_ENV = "BORG_VM_KEYS_DIR"
MAGIC = "borg-vm-keyring"
VERSION = 1
MAX_KEYRING_BYTES = 16 * 1024 * 1024   # ~200,000 adopted archives
_ID_RE = re.compile(r"[0-9a-f]{64}")


def keys_dir() -> str:
    if os.environ.get(KEYS_DIR_ENV):
        return os.environ[KEYS_DIR_ENV]
    if os.environ.get("BORG_BASE_DIR"):
        return os.path.join(os.environ["BORG_BASE_DIR"], ".config", "borg-vm", "keys")
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(config, "borg-vm", "keys")


@dataclass(frozen=True)
class Keyring:
    repository: str
    keys: tuple[bytes, ...]
    adopted: frozenset[str]
    created: str

    @property
    def signing_key(self) -> bytes:
        return self.keys[0]

    @property
    def path(self) -> str:
        return os.path.join(keys_dir(), self.repository)

    def key_ids(self) -> list[str]:
        return [auth.key_id(k) for k in self.keys]

    def to_json(self) -> bytes:
        return (json.dumps({MAGIC: VERSION, "repository": self.repository,
                            "created": self.created,
                            "keys": [base64.b64encode(k).decode() for k in self.keys],
                            "adopted": sorted(self.adopted)}, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Keyring:
        """Parse a keyring; raise KeyringError naming where if it is not one."""
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get(MAGIC) != VERSION:
                raise ValueError(f"not a borg-vm keyring (version {VERSION})")
            repository, created = doc["repository"], doc["created"]
            keys = tuple(base64.b64decode(k, validate=True) for k in doc["keys"])
            adopted = frozenset(doc["adopted"])
            if not (isinstance(repository, str) and _ID_RE.fullmatch(repository)
                    and isinstance(created, str) and keys
                    and all(len(k) == auth.KEY_BYTES for k in keys)
                    and all(isinstance(a, str) and _ID_RE.fullmatch(a) for a in adopted)):
                raise ValueError("a field is missing or malformed")
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as e:
            raise KeyringError(path=where, detail=str(e)) from e
        return cls(repository, keys, adopted, created)

    def merged(self, other: Keyring) -> Keyring:
        """Return this keyring with other's keys (after its own) and adopted archives."""
        keys = self.keys + tuple(k for k in other.keys if k not in self.keys)
        return replace(self, keys=keys, adopted=self.adopted | other.adopted)


def load(repository: str) -> Keyring | None:
    """Return the keyring of the repository with this ID, None if there is none."""
    path = os.path.join(keys_dir(), repository)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEYRING_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KeyringError(path=path, detail=e.strerror or str(e)) from e
    if len(raw) > MAX_KEYRING_BYTES:
        raise KeyringError(path=path, detail=f"bigger than {MAX_KEYRING_BYTES} bytes")
    keyring = Keyring.from_json(raw, path)
    if keyring.repository != repository:
        raise KeyringError(path=path, detail=f"it is the keyring of repository "
                                             f"{keyring.repository}")
    return keyring


def load_or_create(repository: str, legacy: Iterable[str]) -> Keyring:
    """Return the repository's keyring; make it if there is none, adopting the
    archives of formats 1-3 whose IDs legacy gives."""
    found = load(repository)
    if found is not None:
        return found
    keyring = Keyring(repository, (secrets.token_bytes(auth.KEY_BYTES),),
                      frozenset(a for a in legacy if _ID_RE.fullmatch(a)),
                      datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if not _write(keyring, exclusive=True):
        return load_or_create(repository, ())    # another borg-vm made it first
    log.info("made authentication key %s for repository %s in %s%s; keep a copy with "
             "your borg key ('borg-vm key export')", keyring.key_ids()[0], repository,
             keyring.path, f", trusting the {len(keyring.adopted)} archives of earlier "
                           "formats it holds" if keyring.adopted else "")
    return keyring


def save(keyring: Keyring) -> None:
    """Write keyring in place of the one there (atomically)."""
    _write(keyring, exclusive=False)


def _write(keyring: Keyring, *, exclusive: bool) -> bool:
    """Write keyring to its path, 0600 in a 0700 directory: a new file beside it,
    then linked (exclusive: False if one is there already) or renamed over it."""
    path = keyring.path
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(keyring.to_json())
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise KeyringError(path=path, detail=e.strerror or str(e)) from e
    return True
