"""What this host last saw of a domain in a repository: the authentic archives
of the domain's last listing (catalog.archives saves them), with the archive
its backup committed after that listing, or less those its prune or delete
removed after it, kept in borg-vm's cache directory, so that
a backup starts its job, and a restore of a named checkpoint starts reading,
while the repository is listed again (a listing takes a borg process: about
half a second with Borg 1.4, a second with Borg 2, most of it borg's start)
instead of after it (services/backup/run.py, services/restore/run.py).

What is cached is a guess, never an answer: it is authenticated again with
this host's keyring as it is loaded (format/trust.py), and a run that starts
from it records nothing (a backup: starts no borg that writes the archive; a
restore: moves nothing into place) until the listing that runs meanwhile
confirms it. A missing, damaged or foreign file is ignored and can be deleted
at any time; one that cannot be written only makes the next run list first.

One file per repository location and domain, ``catalog-SHA256.json`` (of both)::

    {"borg-vm-catalog": 1, "location": LOCATION, "domain": DOMAIN,
     "repository": ID, "archives": [[NAME, ID, COMMENT], ...]}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from borg_vm.adapters.borg import Repository, features
from borg_vm.core import chain
from borg_vm.errors import BorgVmError
from borg_vm.format import trust
from borg_vm.format.names import ArchiveName
from borg_vm.format.summary import ArchiveInfo, Summary
from borg_vm.services import keyring as keyring_

MAGIC = "borg-vm-catalog"
VERSION = 1
MAX_BYTES = 64 * 1024 * 1024   # ~50,000 restore points of one domain

Point = tuple[list[ArchiveInfo], ArchiveInfo]   # (the archives a chain may use, the top)
T = TypeVar("T")


def save(borg: Repository, domain: str, archives: Sequence[ArchiveInfo]) -> None:
    """Keep archives, domain's authentic ones in list order, as what this host saw:
    as just listed, or a listing's with what this host then committed or deleted
    (borg's repository ID is known: it listed)."""
    _write(borg, domain, borg.repository_id(), archives)


@dataclass(frozen=True)
class Seen:
    """What this host saw of a domain: its archives this host authenticates now."""

    archives: list[ArchiveInfo]
    keyring: keyring_.Keyring


def seen(borg: Repository, domain: str) -> Seen | None:
    """Return what this host last saw of domain in borg's repository, None if
    nothing (or nothing usable: no keyring, a damaged file)."""
    try:
        return _load(borg, domain)
    except (ValueError, KeyError, TypeError, AttributeError, BorgVmError):
        return None


def restore_point(borg: Repository, domain: str, checkpoint: str) -> Point | None:
    """Return the restore point of domain at checkpoint as this host last saw it
    (chain.select over the archives it authenticates now), None if it saw none."""
    found = seen(borg, domain)
    if found is None:
        return None
    try:
        return found.archives, chain.select(found.archives, domain, checkpoint)
    except BorgVmError:
        return None


class Unconfirmed(Exception):
    """The repository's listing does not confirm what a run started from."""


def attempt(run: Callable[[], T], confirmed: Callable[[], None]) -> T | None:
    """Return run() (a run started from a guess, which raises Unconfirmed where
    the listing must confirm it); None if the listing did not confirm the guess:
    run raised Unconfirmed, or failed and confirmed() raises Unconfirmed (what
    failed may be the guess). Any other failure is raised, the listing's first."""
    try:
        return run()
    except Unconfirmed:
        return None
    except Exception:
        try:
            confirmed()
        except Unconfirmed:
            return None
        raise


def confirms(listed: Point, guess: Point, used: Iterable[ArchiveInfo]) -> bool:
    """Return True if the point the repository's listing gives (listed) is the one
    guessed: the same top archive (name, ID and summary), and every archive a
    restore from the guess reads (used) among the listed ones, unchanged."""
    pool, top = listed
    return top == guess[1] and all(a in pool for a in used)


def _load(borg: Repository, domain: str) -> Seen | None:
    raw = features.read_cache_file(_file(borg, domain), MAX_BYTES)
    if raw is None:
        return None
    doc = json.loads(raw)
    if (doc.get(MAGIC) != VERSION or doc.get("location") != borg.absolute_location()
            or doc.get("domain") != domain):
        return None
    keyring = keyring_.load(doc["repository"])
    if keyring is None:
        return None
    infos = [ArchiveInfo(name, Summary.from_comment(comment, archive), archive_id)
             for archive, archive_id, comment in doc["archives"]
             if (name := ArchiveName.parse(archive)) is not None]
    good, _rejected = trust.authenticate(infos, keyring.keys, keyring.adopted,
                                         datetime.now(UTC))
    return Seen(good, keyring)


def _write(borg: Repository, domain: str, repository: str,
           archives: Sequence[ArchiveInfo]) -> None:
    doc = {MAGIC: VERSION, "location": borg.absolute_location(), "domain": domain,
           "repository": repository,
           "archives": [[a.archive, a.id, a.summary.to_comment()] for a in archives]}
    features.write_cache_file(_file(borg, domain), json.dumps(doc).encode())


def _file(borg: Repository, domain: str) -> str:
    key = f"{borg.absolute_location()}\0{domain}".encode()
    return f"catalog-{hashlib.sha256(key).hexdigest()}.json"
