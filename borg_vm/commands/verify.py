"""borg-vm verify: read archives back from Borg and check them, writing nothing.

For each archive: its data members cover exactly the extents its manifest
lists and hash to the manifest's SHA-256 (the guest's view and every sealed
layer); its small members pass the checks restore and mount make of them
(reader.check_archive: the manifest agrees with the archive's name and
comment and carries the code of the key that signed the comment, domain.xml
and checkpoint.xml are what libvirt writes and match the manifest's digests);
and every disk's chain back to its full exists, linked by archive ID, with
the same disk size throughout. Archives this host cannot authenticate
(format/trust.py) are named, not read.

A restore point of complete images (format version 6, Borg 2) is its record,
checked as above, and each disk's image archive, the one its record names by
ID, read whole: Borg checks every object against its ID as it reads
(adapters/borg/borg2.py), and the image must be as big as the disk. So are
the images of sealed layers it names (version 7), each read once however many
records name it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from borg_vm import prefetch
from borg_vm.adapters.borg import ImageStore, Repository
from borg_vm.commands import options
from borg_vm.core import chain
from borg_vm.core.text import printable
from borg_vm.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_WARNING,
    BorgVmError,
    IntegrityError,
    UsageError,
)
from borg_vm.format import names as fmt
from borg_vm.format import reader
from borg_vm.format.manifest import Manifest
from borg_vm.format.summary import ArchiveInfo
from borg_vm.format.tarstream import Member
from borg_vm.services import catalog

PIECE = 4 * 1024 * 1024


def build_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
                 ) -> None:
    ve = sub.add_parser("verify", parents=parents,
                        help="read archives back and check them, writing nothing",
                        description="Read archives back from Borg and check each: its data "
                        "covers exactly its manifest's extents and matches their SHA-256, "
                        "its manifest agrees with its name and comment, and its chain back "
                        "to the full exists; archives this host cannot authenticate are named. "
                        "Exit 0 if all are good, 2 if any is damaged, else 1 if any is "
                        "not authenticated.")
    ve.add_argument("domain", nargs="?", metavar="DOMAIN",
                    help="the domain (default: every domain, all archives)")
    which = ve.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", metavar="NAME",
                       help="this restore point of DOMAIN and its chain (default: the "
                       "newest)")
    which.add_argument("--all", action="store_true", help="every archive of DOMAIN")
    options.add_repository_options(ve)
    ve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint and args.domain is None:
        raise UsageError(detail="verify --checkpoint NAME needs the DOMAIN whose checkpoint "
                                "it is")
    result = verify(options.repository(args), args.domain, args.checkpoint, args.all)
    if args.json:
        options.emit(result.to_json())
    else:
        for name, verdict in result.checked:
            print(printable(f"{'ok' if verdict == 'ok' else 'DAMAGED':<8} {name}"
                            + ("" if verdict == "ok" else f": {verdict}")))
        for name, why in result.unauthenticated:
            print(printable(f"UNAUTHENTICATED {name}: {why}"))
    return (EXIT_ERROR if not result.ok else EXIT_WARNING if result.unauthenticated
            else EXIT_OK)


@dataclass
class VerifyResult:
    checked: list[tuple[str, str]]   # (archive, "ok" or what is wrong)
    unauthenticated: list[tuple[str, str]] = field(default_factory=list)  # (archive, why)

    @property
    def ok(self) -> bool:
        return all(v == "ok" for _a, v in self.checked)

    def to_json(self) -> dict:
        return {"ok": self.ok and not self.unauthenticated,
                "archives": [{"name": a, "ok": v == "ok", "authenticated": True,
                              "problem": None if v == "ok" else v} for a, v in self.checked]
                + [{"name": a, "ok": False, "authenticated": False,
                    "problem": f"not authenticated: {why}"} for a, why in self.unauthenticated]}


def verify(borg: Repository, domain: str | None, checkpoint: str | None, every: bool
           ) -> VerifyResult:
    """Verify domain's archive at checkpoint (default: the newest) with its chain, or
    with every, all archives (of domain, or of every domain)."""
    found = catalog.archives(borg, domain, warn=False)   # it names each rejected itself
    archives = found.archives
    rejected = [(a.archive, why) for a, why in found.rejected
                if checkpoint is None or a.name.checkpoint == checkpoint]
    if domain is not None and not found.every():
        chain.of_known_domain(archives, domain)   # raises ArchiveNotFound, naming what is there
    if every or domain is None:
        selected = archives
    elif not any(a.name.checkpoint == checkpoint for a in archives) and rejected:
        selected = []   # the restore point asked for is one this host cannot authenticate
    else:
        top = chain.select(archives, domain, checkpoint)
        selected = list({a.archive: a for t in top.summary.disks
                         for a in _chain_or_top(archives, top, t)}.values())
    ordered = sorted(selected, key=lambda a: (a.name.domain, a.order))
    chain_problems = {a.archive: _chain_problem(archives, a) for a in ordered}
    readable = [a for a in ordered if chain_problems[a.archive] is None]
    # Each archive's verdict: its chain's problem, else (below) what reading it found.
    verdicts = {name: p for name, p in chain_problems.items() if p is not None}
    # One read_ahead for all: the next archive's borg starts up while this one is
    # hashed; big archives come through borg list + extract --stdout (members.py).
    reads = [reader.Read(a.archive, (), sum(d.data_bytes for d in a.summary.disks.values()))
             for a in readable]
    with reader.read_ahead(borg, reads) as streams:
        for a, stream in zip(readable, streams, strict=True):
            verdicts[a.archive] = _check_data(a, stream)
    sizes: dict[str, int] = {}   # image archive ID -> its file's size, each read once
    for a in readable:
        if a.images and verdicts[a.archive] == "ok":
            verdicts[a.archive] = _check_images(borg, a, sizes)
    return VerifyResult([(a.archive, verdicts[a.archive]) for a in ordered], rejected)


def _chain_or_top(archives: list[ArchiveInfo], top: ArchiveInfo, target: str
                  ) -> list[ArchiveInfo]:
    try:
        return chain.disk_chain(archives, top, target)
    except BorgVmError:
        return [top]   # the broken link is reported by _chain_problem


def _chain_problem(archives: list[ArchiveInfo], a: ArchiveInfo) -> str | None:
    """Return what is wrong with one archive's chains (each disk's back to its full,
    one disk size throughout), or None."""
    try:
        for t in a.summary.disks:
            chain.restore_chain(archives, a, t)
    except BorgVmError as e:
        return e.message
    return None


def _check_data(a: ArchiveInfo, stream: AbstractContextManager[Iterator[Member]]) -> str:
    """Return "ok" or what is wrong with one archive's data and small members."""
    try:
        _read_and_hash(a, stream)
    except BorgVmError as e:
        return e.message
    return "ok"


def _check_images(borg: Repository, a: ArchiveInfo, sizes: dict[str, int]) -> str:
    """Return "ok" or what is wrong with the image archives of a record (version 6)
    and of its disks' sealed layers (version 7); sizes: those read already, by ID."""
    try:
        store = catalog.image_store(borg, a)
        assert store is not None, "a record of images"
        for t, d in sorted(a.summary.disks.items()):
            assert d.image is not None, "a record of images names an image per disk"
            for what, image_id in [("image", d.image.id),
                                   *((f"image of layer {p}", i) for p, i in d.layers if i)]:
                if image_id not in sizes:
                    sizes[image_id] = _image_size(store, image_id)
                if sizes[image_id] != d.virtual_size:
                    raise IntegrityError(target=t, archive=a.archive, detail=(
                        f"its {what} {image_id} holds {sizes[image_id]} bytes, the disk "
                        f"{d.virtual_size}"))
    except BorgVmError as e:
        return e.message
    return "ok"


def _image_size(store: ImageStore, image_id: str) -> int:
    """Read the image archive with this ID whole; return its file's size."""
    size = 0
    with store.extract_image(image_id) as proc:
        while piece := proc.stdout.read(PIECE):
            size += len(piece)
        store.finish("extract", proc)
    return size


def _read_and_hash(a: ArchiveInfo, stream: AbstractContextManager[Iterator[Member]]) -> Manifest:
    """Stream the whole archive (naming paths that match nothing would make borg
    warn); return its manifest if its small members pass the checks restore and
    mount make (reader.check_archive: all of them must be there) and every
    record's data matches it; raise IntegrityError or FormatError otherwise."""
    sizes = {t: d.virtual_size for t, d in a.summary.disks.items()}
    tally = reader.Tally(a.archive)
    with stream as found:
        for _piece in tally.count(reader.pieces(found, a.archive, sizes,
                                                prefetch.Buffers(1, PIECE))):
            pass
    manifest = tally.manifest(a, fmt.small_members(a.summary))
    tally.check(manifest)
    return manifest
