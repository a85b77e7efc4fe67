"""The restore action: reassemble a domain's disks as of one checkpoint.

Chain mode (default), one image per archive, each backed by the one before::

    web01.vda.borgvm-C1.qcow2   <- web01.vda.borgvm-C2.qcow2 <- web01.vda.borgvm-C3.qcow2
    (full: base image)             (inc: overlay)               (inc: overlay, the top)

Flatten mode: one image, every archive of the chain applied in order.

Images are written in a hidden directory inside --to and moved into place
only when every disk was written and verified against its manifest, so a
failed restore leaves --to as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from . import archive as fmt
from . import chain, domxml, extent, qemu_img, repository
from .archive import ArchiveInfo, DiskRecord, Manifest
from .borg import Borg
from .errors import FormatError, IntegrityError, RestoreTargetExists
from .nbd_client import Export, open_command
from .progress import Progress
from .tarstream import Member, TarFormatError, read_members

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreOptions:
    to: str
    checkpoint: str | None = None
    flatten: bool = False
    disks: tuple[str, ...] = ()
    format: str = "qcow2"
    force: bool = False
    progress: bool = True


@dataclass(frozen=True)
class DiskPlan:
    """Where one disk goes: the images to write, one per archive of its chain (chain
    mode) or the same single image for all (flatten)."""

    target: str
    archives: tuple[ArchiveInfo, ...]
    images: tuple[str, ...]
    formats: tuple[str, ...]

    @property
    def top(self) -> str:
        return self.images[-1]


def plan_disks(archives: list[ArchiveInfo], top: ArchiveInfo, opts: RestoreOptions
               ) -> list[DiskPlan]:
    """Return where each requested disk of top is restored to. Pure."""
    targets = opts.disks or tuple(sorted(top.summary.disks))
    plans = []
    for t in targets:
        arcs = tuple(chain.disk_chain(archives, top, t))
        stem = f"{top.name.domain}.{t}"
        if opts.flatten:
            path = f"{stem}.{top.name.checkpoint}.{_ext(opts.format)}"
            images, formats = (path,) * len(arcs), (opts.format,) * len(arcs)
        else:
            formats = (opts.format,) + ("qcow2",) * (len(arcs) - 1)
            images = tuple(f"{stem}.{a.name.checkpoint}.{_ext(f)}" for a, f in zip(arcs, formats))
        plans.append(DiskPlan(t, arcs, images, formats))
    return plans


def _ext(fmt_: str) -> str:
    return "qcow2" if fmt_ == "qcow2" else "img"


@dataclass
class RestoreResult:
    domain: str
    checkpoint: str
    disks: dict[str, dict]
    domain_xml: str

    def to_json(self) -> dict:
        return {"domain": self.domain, "checkpoint": self.checkpoint, "disks": self.disks,
                "domain_xml": self.domain_xml}


def restore(borg: Borg, domain: str, opts: RestoreOptions) -> RestoreResult:
    """Restore domain's disks (and a definable domain XML) into opts.to.

    Raise ArchiveNotFound, BrokenChain, UnknownDisk, RestoreTargetExists,
    IntegrityError or a Borg/qemu error; on any failure opts.to is unchanged.
    """
    archives, _partial = repository.archives(borg, domain)
    top = chain.select(archives, domain, opts.checkpoint)
    plans = plan_disks(archives, top, opts)
    xml_name = f"{domain}.{top.name.checkpoint}.xml"
    outputs = sorted({p for d in plans for p in d.images} | {xml_name})
    existing = [os.path.join(opts.to, p) for p in outputs
                if os.path.lexists(os.path.join(opts.to, p))]
    if existing and not opts.force:
        raise RestoreTargetExists(paths=", ".join(existing))
    os.makedirs(opts.to, exist_ok=True)
    with _staging(opts.to) as stage:
        manifests = {name: repository.manifest(borg, name)
                     for name in {a.archive for d in plans for a in d.archives}}
        total = sum(manifests[a.archive].disks[d.target].data_bytes
                    for d in plans for a in d.archives)
        progress = Progress.for_terminal(f"restore {domain}", total, opts.progress)
        try:
            for d in plans:
                _restore_disk(borg, d, manifests, stage, progress)
        finally:
            progress.close()
        top_manifest = manifests[top.archive]
        xml = domxml.restored_domain_xml(
            borg.extract_file(top.archive, fmt.DOMAIN_XML).decode(), f"{domain}-restored",
            {d.target: (os.path.join(os.path.abspath(opts.to), d.top), d.formats[-1])
             for d in plans})
        with open(os.path.join(stage, xml_name), "w") as f:
            f.write(xml)
        for p in outputs:
            os.replace(os.path.join(stage, p), os.path.join(opts.to, p))
    full = lambda p: os.path.join(os.path.abspath(opts.to), p)  # noqa: E731
    return RestoreResult(
        domain, top_manifest.checkpoint,
        {d.target: {"image": full(d.top), "chain": [full(p) for p in dict.fromkeys(d.images)]}
         for d in plans},
        full(xml_name))


@contextlib.contextmanager
def _staging(directory: str):
    stage = tempfile.mkdtemp(prefix=".borg-vm-restore-", dir=directory)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _restore_disk(borg: Borg, d: DiskPlan, manifests: dict[str, Manifest], stage: str,
                  progress: Progress) -> None:
    """Write every layer of one disk's chain into stage."""
    for i, (arc, image, fmt_) in enumerate(zip(d.archives, d.images, d.formats)):
        record = manifests[arc.archive].disks[d.target]
        path = os.path.join(stage, image)
        if i == 0:
            qemu_img.create(path, fmt_, record.virtual_size)
        elif image != d.images[i - 1]:
            qemu_img.create(path, fmt_, record.virtual_size,
                            backing=os.path.join(stage, d.images[i - 1]))
        log.info("restoring %s of %s into %s", d.target, arc.archive, image)
        with open_command(qemu_img.nbd_server_argv(path, fmt_), where=image) as out:
            _apply(borg, arc.archive, d.target, record, out, progress, zeros=i > 0)
            out.flush()


def _apply(borg: Borg, archive: str, target: str, record: DiskRecord, out: Export,
           progress: Progress, zeros: bool) -> None:
    """Write one archive's data (and, on top of older layers, its zero extents) of a disk.

    Raise IntegrityError unless the data members cover exactly the manifest's
    data extents and hash to its digest.
    """
    digest = hashlib.sha256()
    # A layer with only zero extents has no data members to export (and borg
    # warns when a path matches nothing).
    written = _write_data(borg, archive, target, out, digest, progress) if record.data_bytes else []
    expected = [e for e in record.extents if e.kind == extent.DATA]
    try:
        same = extent.merge(written) == extent.merge(expected)
    except ValueError as e:
        raise IntegrityError(target=target, archive=archive, detail=str(e)) from e
    if not same:
        raise IntegrityError(target=target, archive=archive, detail="data extents differ")
    if digest.hexdigest() != record.sha256:
        raise IntegrityError(target=target, archive=archive, detail="sha256 differs")
    if zeros:
        for e in record.extents:
            if e.kind == extent.ZERO:
                out.zero(e.start, e.length)


def _write_data(borg: Borg, archive: str, target: str, out: Export, digest,
                progress: Progress) -> list[extent.Extent]:
    """Stream the disk's data members out of the archive into out; return what they covered."""
    written = []
    with borg.export_tar(archive, [fmt.disk_prefix(target)]) as proc:
        try:
            for member in read_members(proc.stdout):
                written.extend(_write_member(member, target, out, digest, progress))
        except TarFormatError as e:
            borg.finish("export-tar", proc)
            raise FormatError(archive=archive, detail=str(e)) from e
        borg.finish("export-tar", proc)
    return written


def _write_member(member: Member, target: str, out: Export, digest, progress: Progress
                  ) -> list[extent.Extent]:
    """Write one data member of target to out at its offset; return the extent it covered."""
    parsed = fmt.parse_member(member.name)
    if parsed is None or parsed[0] != target or member.size == 0:
        return []
    offset = parsed[1]
    for piece in member.chunks():
        out.pwrite(piece, offset)
        digest.update(piece)
        offset += len(piece)
        progress.advance(len(piece))
    return [extent.Extent(parsed[1], member.size, extent.DATA)]
