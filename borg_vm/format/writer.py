"""Writing one archive: the members the spec (format/__init__.py) lists, in its
order, streamed into the repository's import, the manifest last, then the end
of the stream, at which (and only at which) the repository commits.

The reader's counterpart (format/reader.py). The disks' data comes from
DiskSources (core/disk_source.py): a record's extents are read from its
source in block-aligned requests, small pieces packed (format/packing.py),
and hashed on the reading thread while the writing thread feeds Borg.

Version 6 (a repository of complete images, Borg 2: write_images): each disk
is first an image archive of its own, Borg reading the disk's export (shown as
a file by nbdfuse) along the disk's input map; then the archive above, the
record, without data members, its manifest naming each image by ID. The
record is written last: until it is committed there is no restore point, and
what a failed run made is deleted (what a killed one made, by its next run).
Version 7: before a disk's image, one of each layer sealed since the parent
(deepest first), which later records name too while the layer stays sealed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from borg_vm import prefetch, runtime
from borg_vm.adapters import nbdfuse
from borg_vm.adapters.borg import ImageStore, Repository
from borg_vm.core import extent
from borg_vm.core.disk_source import DiskSource, Endpoint
from borg_vm.errors import BorgError, CommittedThenFailed
from borg_vm.format import names as fmt
from borg_vm.format import packing
from borg_vm.format.manifest import Manifest
from borg_vm.format.names import ArchiveName
from borg_vm.format.summary import ArchiveInfo, Summary
from borg_vm.format.tarstream import TarWriter
from borg_vm.progress import Progress

log = logging.getLogger(__name__)

PREFETCH_DEPTH = 4
# Views the consumer side may hold at once: the queue, the one being put
# into it and the one being written.
PREFETCH_HOLD = PREFETCH_DEPTH + 2


@dataclass(frozen=True)
class Where:
    """Where a record's data is read: a source, and the disk's name in it."""

    source: DiskSource
    target: str


@dataclass(frozen=True)
class Parts:
    """What goes into one archive besides the disks' data."""

    domain_xml: str
    checkpoint_xml: Callable[[], str]   # asked for once the run has begun
    when: datetime                       # the backup time (member times, archive time)
    compression: str
    block_size: int
    key: bytes = field(repr=False)       # signs comment and manifest (format/auth.py)
    # The domain's state by name of fmt.STATE (UEFI variables, TPM state), read
    # at the disks' point in time; secret, so never in a repr.
    state: dict[str, bytes] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Written:
    """What a run recorded: its archive's manifest with the digests filled in,
    borg's failure after it committed the archive (None: it ended well), and
    the archive as a listing of the repository shows it (None: borg did not
    say its ID)."""

    manifest: Manifest
    late: CommittedThenFailed | None
    archive: ArchiveInfo | None


def write_archive(borg: Repository, name: ArchiveName, manifest: Manifest, parts: Parts,
                  where: Callable[[str, int], Where], progress: Progress,
                  confirm: Callable[[], None] | None = None) -> Written:
    """Stream the members the manifest lists into the repository under name, the
    manifest (with its digests filled in) last, then end the stream: the
    repository commits the archive. where(target, layer) says where each record's
    data is read (layer 0: the guest's view, i: sealed layer i). progress is
    closed when the stream has ended. confirm, if given, is called while the
    archive's borg starts up, before it touches the repository: what it raises
    ends that borg and leaves the repository as it was.

    A borg failing after the end of the stream (killed in its commit, a lost ssh
    connection) may have committed the archive or not: the repository says
    which. If it did, the archive is complete: borg's failure is returned (to be
    reported once the run has ended as one that made its archive); if not, or
    the repository cannot say, it is raised here.
    """
    manifest = replace(manifest, state={n: hashlib.sha256(raw).hexdigest()
                                        for n, raw in sorted(parts.state.items())})
    comment = manifest.summary().signed(parts.key, str(name)).to_comment()
    with borg.import_tar(str(name), comment=comment,
                         timestamp=parts.when.strftime("%Y-%m-%dT%H:%M:%S"),
                         compression=parts.compression,
                         chunker_params=f"fixed,{parts.block_size}", first=confirm) as proc:
        try:
            tar = TarWriter(proc.stdin, int(parts.when.timestamp()))
            domain_xml = parts.domain_xml.encode()
            checkpoint_xml = parts.checkpoint_xml().encode()
            tar.add(fmt.DOMAIN_XML, domain_xml)
            tar.add(fmt.CHECKPOINT_XML, checkpoint_xml)
            for n, raw in sorted(parts.state.items()):
                tar.add(fmt.state_member(n), raw)
            runtime.phase(runtime.STREAMING, "%s: into borg import-tar %s", manifest.domain, name)
            manifest = replace(_write_disks(tar, manifest, where, parts.block_size, progress),
                               domain_xml_sha256=hashlib.sha256(domain_xml).hexdigest(),
                               checkpoint_xml_sha256=hashlib.sha256(checkpoint_xml).hexdigest())
            manifest = manifest.signed(parts.key)
            tar.add(fmt.MANIFEST, manifest.to_json())
            runtime.phase(runtime.ENDING, "%s: all but the end of the stream written",
                          manifest.domain)
            tar.close()
        except BrokenPipeError as e:
            borg.finish("import-tar", proc)
            raise BorgError(action="import-tar", detail="borg stopped reading the stream") from e
        finally:
            progress.close()
        try:
            archive_id = borg.finish_import(proc)
        except BorgError as e:
            if not _committed(borg, name):
                raise
            log.warning("%s: borg failed after it committed %s", manifest.domain, name)
            return Written(manifest, CommittedThenFailed(action="import-tar", detail=e.message,
                                                         archive=str(name)), None)
    runtime.phase(runtime.BORG_FINISHED, "%s: %s committed", manifest.domain, name)
    return Written(manifest, None, None if archive_id is None else
                   ArchiveInfo(name, Summary.from_comment(comment, str(name)), archive_id))


@dataclass(frozen=True)
class ImageInput:
    """What one image archive is built from: a disk's (version 6) or a sealed
    layer's (version 7)."""

    endpoint: Endpoint                      # the disk's or the layer's NBD export
    ranges: list[tuple[int, int, str]]      # its input map (core.extent.input_map)
    reuse_from: str | None                  # the image archive the same ranges are in
    # A sealed layer's: the same ranges are in the layer below's image, which
    # this run builds just before (reuse_from is then None).
    reuse_below: bool = False


def write_images(borg: Repository, store: ImageStore, name: ArchiveName, manifest: Manifest,
                 parts: Parts, inputs: dict[str, ImageInput], scratch: str | None,
                 progress: bool = False,
                 sealed: dict[str, list[tuple[int, ImageInput]]] | None = None,
                 confirm: Callable[[], None] | None = None) -> Written:
    """Build each disk's image archive (disks in target order) from inputs, after
    those of its layers sealed[target] lists ((index into its layers, input),
    deepest first), then write the record name (write_archive) naming each by
    ID; return as write_archive does (confirm, if given, is called before the
    record's borg starts). scratch: the directory for the files
    nbdfuse shows (None: the system's temporary directory); progress: a
    progress bar per image on a terminal (what Borg has been through of it:
    read, or taken from the previous image).

    On failure the image archives made are deleted (best effort: what is left
    goes at the domain's next run) and the error raised.
    """
    made: list[str] = []
    try:
        disks = {}
        # named by the domain, so that a mount left by a killed run says whose it is
        with tempfile.TemporaryDirectory(prefix=f"borg-vm-image.{manifest.domain}.",
                                         dir=scratch) as tmp:
            for t, d in sorted(manifest.disks.items()):
                assert d.image is not None, "a record of images has an image per disk"
                layers = list(d.chain)
                below = None
                for i, inp in (sealed or {}).get(t, []):
                    below = _image(store, fmt.image_archive_name(name, t, layers[i].name),
                                   f"{t} layer {layers[i].name}", d.virtual_size,
                                   replace(inp, reuse_from=below) if inp.reuse_below else inp,
                                   os.path.join(tmp, f"{t}.{i}"), name, parts, progress, made)
                    layers[i] = replace(layers[i], image=below)
                image = _image(store, fmt.image_archive_name(name, t), t, d.virtual_size,
                               inputs[t], os.path.join(tmp, t), name, parts, progress, made)
                disks[t] = replace(d, image=replace(d.image, id=image), layers=tuple(layers))
        # The record reads nothing: it can be written again if borg refused it.
        return store.again_if_raced(functools.partial(
            write_archive, borg, name, replace(manifest, disks=disks), parts, _no_data,
            Progress.for_terminal("", 0, False), confirm))
    except BaseException:
        if made:
            log.info("%s: deleting the images of the failed run", manifest.domain)
            try:
                store.delete_ids(made)
            except BorgError as e:
                log.error("%s: could not delete %s: %s", manifest.domain, ", ".join(made),
                          e.message)
        raise


def _image(store: ImageStore, image: str, what: str, size: int, inp: ImageInput, where: str,
           record: ArchiveName, parts: Parts, progress: bool, made: list[str]) -> str:
    """Build image archive image (of what, size bytes) from inp, nbdfuse showing
    the export at where; add its ID to made and return it."""
    log.info("%s: %s into %s (%s bytes to read)", record.domain, what, image,
             extent.data_bytes(inp.ranges))
    bar = Progress.for_terminal(f"{record.domain} {what}", size, progress)
    # Scattered ranges are read exactly; a full read keeps the kernel's read-ahead.
    scattered = any(state == extent.SAME for _s, _n, state in inp.ranges)
    with nbdfuse.exposed(inp.endpoint, where, read_ahead=not scattered) as path:
        try:
            created = store.create_image(
                image, path, inp.ranges, reuse_from=inp.reuse_from,
                comment=f"borg-vm image of {what} of {record}",
                timestamp=parts.when.isoformat(timespec="seconds"),
                compression=parts.compression, block_size=parts.block_size,
                progress=bar.reach if bar.enabled else None)
        finally:
            bar.close()
    made.append(created.id)
    if created.size != size:
        raise BorgError(action="create", detail=f"{image} holds {created.size} bytes, the "
                        f"disk {size}")
    return created.id


def _no_data(target: str, layer: int) -> Where:
    raise AssertionError(f"a record of images reads no data ({target}, layer {layer})")


def _write_disks(tar: TarWriter, manifest: Manifest, where: Callable[[str, int], Where],
                 block_size: int, progress: Progress) -> Manifest:
    """Write every disk's data members (its top data, then its sealed layers, disks
    in target order; none of a disk whose image is an archive of its own); return
    the manifest with each record's digest."""
    disks = {}
    for t, d in sorted(manifest.disks.items()):
        if d.image is not None:
            disks[t] = d
            continue
        top = _write_extents(tar, where(t, 0), d.extents, block_size, progress,
                             functools.partial(fmt.member_name, t))
        sealed = tuple(replace(f, sha256=_write_extents(
            tar, where(t, f.layer), f.extents, block_size, progress,
            functools.partial(fmt.sealed_member_name, t, f.layer)))
            for f in d.sealed)
        disks[t] = replace(d, sha256=top, sealed=sealed)
    return replace(manifest, disks=disks)


def _committed(borg: Repository, name: ArchiveName) -> bool:
    """Return True if the repository holds archive name (False if it cannot say)."""
    try:
        return str(name) in {a.name for a in borg.list_archives()}
    except BorgError as e:
        log.error("cannot tell whether borg committed %s: %s", name, e.message)
        return False


def _write_extents(tar: TarWriter, where: Where, extents: Sequence[extent.Extent],
                   block_size: int, progress: Progress, member: Callable[[int], str]) -> str:
    """Write the data extents of one disk of a source as tar members named
    member(offset of their first byte), small pieces packed (format/packing.py);
    return the sha256 of the data."""
    digest = hashlib.sha256()
    members = packing.pack(extents, packing.Packing.for_block_size(block_size))
    starts = {m[0].start: m for m in members}
    requests = (r for m in members for piece in m
                for r in extent.requests(piece, where.source.read_request))
    with where.source.reads(where.target, requests, PREFETCH_HOLD) as raw, \
            prefetch.ahead(_hashed(raw, digest), PREFETCH_DEPTH) as reads:
        for offset, data in reads:
            pieces = starts.get(offset)
            if pieces is not None:
                name = member(offset)
                if len(pieces) > 1:
                    tar.add(fmt.map_member_name(name), packing.map_to_json(pieces))
                tar.begin(name, sum(p.length for p in pieces))
            tar.write(data)
            progress.advance(len(data))
    return digest.hexdigest()


def _hashed(reads: Iterable[tuple[int, memoryview]], digest: hashlib._Hash
            ) -> Iterator[tuple[int, memoryview]]:
    """Pass reads through, hashing them in order (on the reading thread, so the
    thread that feeds borg only feeds it)."""
    for offset, data in reads:
        digest.update(data)
        yield offset, data
