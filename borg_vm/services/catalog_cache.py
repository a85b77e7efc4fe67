"""What this host last saw of a domain in a repository: the authentic archives
of the domain's last listing (catalog.archives writes them), kept in borg-vm's
cache directory, so that a restore of a named checkpoint starts reading while
the repository is listed again (a Borg 2 listing takes about a second, most of
it borg's start) instead of after it (services/restore/run.py).

A cached restore point is a guess, never an answer: it is authenticated again
with this host's keyring as it is loaded (format/trust.py), and a restore that
starts from it moves nothing into place until the listing that runs meanwhile
confirms it (``confirms``). A missing, damaged or foreign file is ignored and
can be deleted at any time; one that cannot be written only makes the next
restore list first.

One file per repository location and domain, ``catalog-SHA256.json`` (of both)::

    {"borg-vm-catalog": 1, "location": LOCATION, "domain": DOMAIN,
     "repository": ID, "archives": [[NAME, ID, COMMENT], ...]}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

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


def save(borg: Repository, domain: str, archives: Sequence[ArchiveInfo]) -> None:
    """Keep archives, domain's authentic ones as just listed, as what this host saw."""
    doc = {MAGIC: VERSION, "location": borg.absolute_location(), "domain": domain,
           "repository": borg.repository_id(),
           "archives": [[a.archive, a.id, a.summary.to_comment()] for a in archives]}
    features.write_cache_file(_file(borg, domain), json.dumps(doc).encode())


def restore_point(borg: Repository, domain: str, checkpoint: str) -> Point | None:
    """Return the restore point of domain at checkpoint as this host last saw it
    (chain.select over the archives it authenticates now), None if it saw none."""
    raw = features.read_cache_file(_file(borg, domain), MAX_BYTES)
    if raw is None:
        return None
    try:
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
        return good, chain.select(good, domain, checkpoint)
    except (ValueError, KeyError, TypeError, AttributeError, BorgVmError):
        return None


def confirms(listed: Point, guess: Point, used: Iterable[ArchiveInfo]) -> bool:
    """Return True if the point the repository's listing gives (listed) is the one
    guessed: the same top archive (name, ID and summary), and every archive a
    restore from the guess reads (used) among the listed ones, unchanged."""
    pool, top = listed
    return top == guess[1] and all(a in pool for a in used)


def _file(borg: Repository, domain: str) -> str:
    key = f"{borg.absolute_location()}\0{domain}".encode()
    return f"catalog-{hashlib.sha256(key).hexdigest()}.json"
