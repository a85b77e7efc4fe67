"""borg-vm's view of a Borg repository: which archives are complete borg-vm
archives of a domain, which of those this host can authenticate
(format/trust.py, with the repository's keyring, services/keyring.py), and
which are leftovers of crashed runs. Image archives (format version 6) are
not restore points: they are their records' (or leftovers, without one). An
image of a sealed snapshot layer (version 7) is named after the record that
built it and named by every later record while the layer stays sealed: it
goes with the last record naming it (delete), and is a leftover only when
no record names it."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from borg_vm.adapters.borg import ImageStore, Repository
from borg_vm.core import chain
from borg_vm.errors import FormatError, NoAuthenticArchive, Unauthenticated
from borg_vm.format import names as fmt
from borg_vm.format import trust
from borg_vm.format.names import AUTHENTICATED_FROM, ArchiveName
from borg_vm.format.summary import ArchiveInfo, Summary
from borg_vm.services import catalog_cache
from borg_vm.services import keyring as keyring_
from borg_vm.services.keyring import Keyring

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalog:
    """The repository's borg-vm archives of one domain (or all)."""

    archives: list[ArchiveInfo]            # complete and authentic, in list order
    keyring: Keyring
    rejected: list[trust.Rejected] = field(default_factory=list)   # complete, not authentic
    partial: list[str] = field(default_factory=list)   # what unfinished runs left

    def every(self) -> list[ArchiveInfo]:
        """Every complete archive, authentic or not (--allow-unauthenticated)."""
        return self.archives + [a for a, _why in self.rejected]

    def checkpoints(self, running: ArchiveName | None = None) -> set[str]:
        """The checkpoint names of every archive listed: complete ones, authentic or
        not, and the records the leftovers of unfinished runs were named after
        (but running's: see leftovers)."""
        return ({a.name.checkpoint for a in self.every()}
                | {name.checkpoint for n in self.leftovers(running)
                   if (name := _named_after(n)) is not None})

    def leftovers(self, running: ArchiveName | None = None) -> list[str]:
        """What unfinished runs left (partial), but the images of the run writing
        running (a listing that ran beside it may hold the images it made)."""
        return [n for n in self.partial if running is None or _named_after(n) != running]

    def of_known_domain(self, domain: str) -> list[ArchiveInfo]:
        """Return domain's authentic archives, oldest first. Raise NoAuthenticArchive
        if the repository holds only archives of it this host cannot authenticate,
        ArchiveNotFound if it holds none."""
        own = chain.of_domain(self.archives, domain)
        theirs = [r for r in self.rejected if r[0].name.domain == domain]
        if not own and theirs:
            raise NoAuthenticArchive(count=len(theirs), domain=domain,
                                     archive=theirs[-1][0].archive, reason=theirs[-1][1])
        return chain.of_known_domain(own, domain)


def restore_point(borg: Repository, domain: str, checkpoint: str | None,
                  allow_unauthenticated: bool = False) -> tuple[list[ArchiveInfo], ArchiveInfo]:
    """Return (the archives a chain may use, the archive of domain at checkpoint
    (None: the newest)): authentic ones only, unless allow_unauthenticated.

    Raise Unauthenticated if the checkpoint is only in an archive this host cannot
    authenticate, ArchiveNotFound if it is in none.
    """
    found = archives(borg, domain, warn=False)
    if allow_unauthenticated:
        pool = found.every()
        top = chain.select(pool, domain, checkpoint)
        named = [r for r in found.rejected if r[0].archive == top.archive]
    else:
        pool = found.archives
        named = [r for r in found.rejected if checkpoint is not None
                 and r[0].name.checkpoint == checkpoint
                 and not any(b.name.checkpoint == checkpoint for b in pool)][:1]
    _warn([r for r in found.rejected if r not in named])   # the one named is said below
    if allow_unauthenticated:
        for a, why in named:
            log.warning("using %s, which is not authenticated: %s", a.archive, why)
        return pool, top
    for a, why in named:
        raise Unauthenticated(archive=a.archive, reason=why)
    found.of_known_domain(domain)
    return pool, chain.select(pool, domain, checkpoint)


def _named_after(leftover: str) -> ArchiveName | None:
    """The record a leftover (an image archive, or a partial archive) is named after."""
    image = fmt.parse_image_archive_name(leftover)
    return image[0] if image is not None else ArchiveName.parse(leftover)


def image_store(borg: Repository, top: ArchiveInfo) -> ImageStore | None:
    """Return where top's complete images are (format version 6), None if top is
    an archive of a chain. Raise FormatError for a record of images in a
    repository that keeps chains (a Borg 1 repository holds no image archives)."""
    if not top.images:
        return None
    if borg.images is None:
        raise FormatError(archive=top.archive, detail="it names image archives, which a "
                          "Borg 1 repository does not hold")
    return borg.images


def delete(borg: Repository, found: Catalog, doomed: list[ArchiveInfo]) -> None:
    """Delete the archives doomed, of found (in this order, by name), with their
    disks' image archives (format version 6), and then the images of sealed layers
    (version 7) that they named and no other archive of found, authentic or not,
    does."""
    borg.delete([n for a in doomed for n in [a.archive, *(
        fmt.image_archive_name(a.name, t) for t in sorted(a.summary.disks) if a.images)]])
    gone = {a.archive for a in doomed}
    for domain in sorted({a.name.domain for a in doomed}):
        catalog_cache.save(borg, domain, [a for a in found.archives
                                          if a.name.domain == domain and a.archive not in gone])
    others = [a for a in found.every() if a not in doomed]
    released = sorted(_layer_images(doomed) - _layer_images(others))
    if released:
        assert borg.images is not None, "only a Borg 2 repository holds images of layers"
        log.info("deleting %d images of sealed layers no other record names",
                 len(released))
        borg.images.delete_ids(released)


def _layer_images(archives: list[ArchiveInfo]) -> set[str]:
    """The IDs of the images of sealed layers the archives name (version 7)."""
    return {i for a in archives for d in a.summary.disks.values() for _p, i in d.layers if i}


def archives(borg: Repository, domain: str | None = None, warn: bool = True) -> Catalog:
    """Return the Catalog of domain (None: every domain, and no partial archives),
    and keep domain's authentic archives as what this host saw (catalog_cache).

    Archives whose comment is not a borg-vm summary are skipped with a warning;
    so are the ones this host cannot authenticate, one warning per domain
    (unless not warn: the caller warns of them).
    """
    complete, partial, keyring = _listed(borg, domain)
    good, bad = trust.authenticate(complete, keyring.keys, keyring.adopted, datetime.now(UTC))
    if domain is not None:
        catalog_cache.save(borg, domain, good)
    if warn:
        _warn(bad)
    return Catalog(good, keyring, bad, partial)


def keyring_of(borg: Repository) -> Keyring:
    """Return this host's keyring of borg's repository (made, adopting the archives
    of formats 1-3 there, if there is none), judging no archive."""
    return _listed(borg, None)[2]


def _listed(borg: Repository, domain: str | None
            ) -> tuple[list[ArchiveInfo], list[str], Keyring]:
    """Return (domain's complete archives, what its unfinished runs left, the
    repository's keyring)."""
    complete, partial, legacy = [], [], []
    images: list[tuple[str, str, str]] = []   # (image archive, its record, its ID) of domain
    for listed in borg.list_archives(checkpoints=domain is not None):
        image_of = fmt.parse_image_archive_name(listed.name)
        if image_of is not None:
            if domain is not None and image_of[0].domain == domain:
                images.append((listed.name, str(image_of[0]), listed.id))
            continue
        name = ArchiveName.parse(listed.name)
        if name is not None:
            try:
                info = ArchiveInfo(name, Summary.from_comment(listed.comment, listed.name),
                                   listed.id)
            except FormatError as e:
                if domain in (None, name.domain):
                    log.warning("ignoring archive %s: %s", listed.name, e.message)
                continue
            if info.summary.version < AUTHENTICATED_FROM:
                legacy.append(listed.id)
            if domain in (None, name.domain):
                complete.append(info)
        elif domain is not None and fmt.is_partial_of(listed.name, domain):
            partial.append(listed.name)
    # Images whose record is missing are what a run cut short made (version 6),
    # unless a record names one (a sealed layer's, version 7). (A record the host
    # cannot authenticate keeps its images: not this run's to judge.)
    recorded = {a.archive for a in complete}
    named = _layer_images(complete)
    partial += [image for image, record, image_id in images
                if record not in recorded and image_id not in named]
    return complete, partial, keyring_.load_or_create(borg.repository_id(), legacy)


def _warn(rejected: list[trust.Rejected]) -> None:
    by_domain: dict[str, list[trust.Rejected]] = defaultdict(list)
    for r in rejected:
        by_domain[r[0].name.domain].append(r)
    for domain, rs in by_domain.items():
        if len(rs) == 1:
            log.warning("ignoring archive %s: not authenticated: %s", rs[0][0].archive, rs[0][1])
        else:
            log.warning("ignoring %d archives of %s this host cannot authenticate ('borg-vm "
                        "verify %s' names each), e.g. %s: %s", len(rs), domain, domain,
                        rs[0][0].archive, rs[0][1])
