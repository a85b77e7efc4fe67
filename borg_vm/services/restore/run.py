"""The restore action: reassemble a domain's disks as of one checkpoint.

Chain mode (default), one image per archive, each backed by the one before::

    web01.vda.borgvm-C1.qcow2   <- web01.vda.borgvm-C2.qcow2 <- web01.vda.borgvm-C3.qcow2
    (full: base image)             (inc: overlay)               (inc: overlay, the top)

Flatten mode: one image, every archive of the chain applied in order.

Layers mode (services/restore/layers.py): one image per snapshot layer, as libvirt's
chain was at that checkpoint, the sealed layers complete.

The archive is only as trustworthy as the repository: the top archive's
domain.xml and manifest are read and checked before anything is written, no
member is held in memory unless the format caps its size (see members), and the restored
domain XML leaves out what it named of the host (core.host_resources).

Images are written in a hidden directory inside --to and moved into place
only when every disk was written and verified against its manifest, so a
failed restore leaves --to as it was (and removes it if it created it). A
file that appeared in --to meanwhile (a concurrent restore's) is not replaced
unless --force (see _move_in).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from borg_vm import runtime
from borg_vm.adapters.borg import Repository
from borg_vm.core import chain, domxml, host_resources
from borg_vm.core import vmstate as core_vmstate
from borg_vm.errors import (
    NbdError,
    RestoreTargetExists,
    RestoreTargetFull,
    RestoreTargetUnusable,
)
from borg_vm.format import names as fmt
from borg_vm.format import reader
from borg_vm.format.manifest import Manifest
from borg_vm.format.summary import ArchiveInfo
from borg_vm.progress import Progress
from borg_vm.services import catalog
from borg_vm.services.restore import images, layers, vmstate

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
    keep_host_resources: bool = False
    layers: bool = False
    allow_unauthenticated: bool = False


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
    """Return where each requested disk of top is restored to. Pure.

    Raise BrokenChain, UnknownDisk, or FormatError if a disk changes size along
    its chain (chain.restore_chain).
    """
    targets = opts.disks or tuple(sorted(top.summary.disks))
    plans = []
    for t in targets:
        arcs = tuple(chain.restore_chain(archives, top, t))
        stem = f"{top.name.domain}.{t}"
        if opts.flatten:
            path = f"{stem}.{top.name.checkpoint}.{_ext(opts.format)}"
            images, formats = (path,) * len(arcs), (opts.format,) * len(arcs)
        else:
            formats = (opts.format,) + ("qcow2",) * (len(arcs) - 1)
            images = tuple(f"{stem}.{a.name.checkpoint}.{_ext(f)}"
                           for a, f in zip(arcs, formats, strict=True))
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
    vm_state: dict[str, str] = field(default_factory=dict)   # name -> file (vmstate.py)

    def to_json(self) -> dict:
        return {"domain": self.domain, "checkpoint": self.checkpoint, "disks": self.disks,
                "domain_xml": self.domain_xml, "vm_state": self.vm_state}


def top_files(top: ArchiveInfo) -> tuple[str, ...]:
    """What a restore reads of its top archive before it writes anything: its
    domain.xml, manifest and state."""
    return (fmt.DOMAIN_XML, fmt.MANIFEST, *fmt.state_members(top.summary))


def restore(borg: Repository, domain: str, opts: RestoreOptions) -> RestoreResult:
    """Restore domain's disks (and a definable domain XML) into opts.to, files 0600.

    The XML names no host resource unless opts.keep_host_resources (what was
    removed or changed is logged as one warning). Raise ArchiveNotFound, BrokenChain,
    UnknownDisk, RestoreTargetExists, RestoreTargetUnusable, FormatError,
    IntegrityError or a Borg/qemu error; on any failure opts.to is as it was.
    """
    archives, top = catalog.restore_point(borg, domain, opts.checkpoint,
                                          opts.allow_unauthenticated)
    wanted = top_files(top)
    layered: list[layers.LayeredDisk] = []
    chained: list[DiskPlan] = []
    if opts.layers:
        targets = opts.disks or tuple(sorted(top.summary.disks))
        # The top's small members come with its manifest: one borg fewer.
        layered, manifests, files = layers.plan(borg, archives, top, targets, opts.format,
                                                wanted)
        passes = layers.passes(layered)
        reads = [images.read_for(arc, keys, manifests[arc.archive]) for arc, keys in passes]
        del manifests   # planned: let go of their extents (millions, in a hostile one)
    else:
        chained = plan_disks(archives, top, opts)
        order = _chain_order(chained)
        reads = [images.read_for(arc, [(d.target, 0) for d in chained if arc in d.archives])
                 for arc in order]
        files = {}
    plans: list[layers.LayeredDisk] | list[DiskPlan] = layered if opts.layers else chained
    stem = f"{domain}.{top.name.checkpoint}"
    xml_name = f"{stem}.xml"
    nvram = vmstate.nvram_name(stem) if core_vmstate.NVRAM in top.summary.state else None
    outputs = sorted({p for d in plans for p in d.images} | {xml_name}
                     | ({nvram} if nvram is not None else set()))
    existing = [os.path.join(opts.to, p) for p in outputs
                if os.path.lexists(os.path.join(opts.to, p))]
    if existing and not opts.force:
        raise RestoreTargetExists(paths=", ".join(existing))
    to = os.path.abspath(opts.to)
    # The small members first: a damaged or hostile archive fails here, before
    # anything is created or written (while the first data archive's borg starts).
    small = [] if files else [reader.Read(top.archive, wanted)]
    with reader.read_ahead(borg, small + reads) as found:
        if small:
            with next(found) as top_members:
                files = reader.small_files(top_members, top.archive, wanted)
        made = _from_top(top, files, wanted, plans, to, opts, nvram)
        del files   # the top's manifest, read again with its data: not held meanwhile
        with target_dir(to), _staging(to) as stage:
            total = sum(a.summary.disks[d.target].data_bytes for d in plans for a in d.archives)
            progress = Progress.for_terminal(f"restore {domain}", total, opts.progress)
            try:
                if opts.layers:
                    layers.write(found, layered, passes, made.sizes, stage, progress)
                else:
                    _write_chain(found, chained, order, stage, made.sizes, progress)
                with open(os.open(os.path.join(stage, xml_name),
                                  os.O_WRONLY | os.O_CREAT | os.O_EXCL, images.PRIVATE), "w") as f:
                    f.write(made.xml + "\n")   # a text file; ElementTree ends at the root's tag
                if nvram:
                    vmstate.write_nvram(os.path.join(stage, nvram),
                                        made.state[core_vmstate.NVRAM])
                tpm = _place_tpm(made)
                try:
                    # (claiming a name takes a directory entry: ENOSPC is possible)
                    _move_in(stage, to, outputs, opts.force)
                except BaseException:
                    if tpm:
                        vmstate.remove_tpm(tpm)
                    raise
            except NbdError as e:
                if e.kwargs.get("errno") == errno.ENOSPC:
                    raise RestoreTargetFull(path=to, detail=e.message) from e
                raise
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise RestoreTargetFull(path=to, detail=e.strerror) from e
                raise
            finally:
                progress.close()
    warn_changed(made.changes)
    state = {n: p for n, p in ((core_vmstate.NVRAM, nvram and os.path.join(to, nvram)),
                               (core_vmstate.TPM, tpm)) if p}
    return RestoreResult(
        domain, top.name.checkpoint,
        {d.target: {"image": os.path.join(to, d.top),
                    "chain": [os.path.join(to, p) for p in dict.fromkeys(d.images)],
                    **({"layers": list(d.names)} if isinstance(d, layers.LayeredDisk) else {})}
         for d in plans},
        os.path.join(to, xml_name), state)


def _place_tpm(made: _Top) -> str | None:
    """Place the top's TPM state (if any) for the restored domain (vmstate.place_tpm);
    return its file, None if there is none."""
    raw = made.state.get(core_vmstate.TPM)
    if raw is None or made.uuid is None:
        return None
    return vmstate.place_tpm(made.xml, made.uuid, raw)


@dataclass(frozen=True)
class _Top:
    """What a restore takes from its top archive's small members."""

    xml: str                      # the restored domain's (see _xml)
    changes: list[str]            # what _xml removed or changed of the host's
    sizes: dict[str, int]         # target -> the size of its images
    state: dict[str, bytes]       # the domain's state, by name (vmstate.py)
    uuid: str | None              # the restored domain's, if it has TPM state


def _from_top(top: ArchiveInfo, files: dict[str, bytes], wanted: tuple[str, ...],
              plans: list[DiskPlan] | list[layers.LayeredDisk], to: str, opts: RestoreOptions,
              nvram: str | None) -> _Top:
    """Return what a restore takes from top's small members (files, the members
    wanted, checked: reader.check_archive); nvram: the file for its UEFI
    variables, if it holds them."""
    manifest = reader.check_archive(top, files, wanted)
    new_uuid = str(uuid.uuid4()) if core_vmstate.TPM in manifest.state else None
    xml, changes = _xml(top, manifest, files,
                        {d.target: (os.path.join(to, d.top), d.formats[-1]) for d in plans},
                        opts.keep_host_resources, f"{top.name.domain}-restored",
                        nvram and os.path.join(to, nvram), new_uuid)
    # Images are as big as the top's manifest says: every archive of a chain
    # claims that size (chain.restore_chain), each claim checked against its
    # manifest as it is read.
    return _Top(xml, changes, {d.target: manifest.disks[d.target].virtual_size for d in plans},
                {n: files[fmt.state_member(n)] for n in manifest.state}, new_uuid)


def _chain_order(plans: list[DiskPlan]) -> list[ArchiveInfo]:
    """Return the archives the chain (or flattened) images are written from, oldest first."""
    return sorted({a.archive: a for d in plans for a in d.archives}.values(),
                  key=lambda a: a.order)


def _write_chain(found: Iterator, plans: list[DiskPlan], order: list[ArchiveInfo], stage: str,
                 sizes: dict[str, int], progress: Progress) -> None:
    """Write the chain (or flattened) images, each disk's sizes[target] bytes: one
    pass per archive of order, each writing every disk it holds, from the next
    stream of found."""
    for arc in order:
        layers = {(d.target, 0): _prepare_layer(d, d.archives.index(arc), stage, sizes[d.target])
                  for d in plans if arc in d.archives}
        images.apply_archive(next(found), arc, layers, progress)
        runtime.phase(runtime.APPLIED, "%s written into %s", arc.archive, stage)


def restored_xml(borg: Repository, top: ArchiveInfo, images: dict[str, tuple[str, str]],
                 keep_host_resources: bool, name: str, nvram: str | None = None
                 ) -> tuple[str, list[str], dict[str, bytes]]:
    """Return the XML of a domain called name on the restored images and on nvram,
    the file its UEFI variables are to be written to, if the archive holds them
    (see _xml), what was removed from it or changed of the host's resources, and
    top's small members read from Borg (its state among them).

    Raise FormatError naming top if it fails reader.check_archive.
    """
    wanted = top_files(top)
    files = reader.read_small(borg, top.archive, wanted)
    manifest = reader.check_archive(top, files, wanted)
    return (*_xml(top, manifest, files, images, keep_host_resources, name, nvram), files)


def _xml(top: ArchiveInfo, manifest: Manifest, files: dict[str, bytes],
         images: dict[str, tuple[str, str]],
         keep_host_resources: bool, name: str, nvram: str | None = None,
         new_uuid: str | None = None) -> tuple[str, list[str]]:
    """Return the XML of a domain called name on the restored images (see
    domxml.restored_domain_xml), its UEFI variables in nvram (if the archive holds
    them) and its UUID new_uuid (if given), from top's domain.xml in files and
    its manifest (both checked: reader.check_archive), and what was removed from it or changed of
    the host's resources (see host_resources.strip) unless keep_host_resources.
    Warn about state the domain used that the archive lacks."""
    text = reader.domain_xml(top.archive, files)
    vmstate.warn_missing(top.archive, text, manifest)
    if core_vmstate.NVRAM not in manifest.state:
        nvram = None
    xml = domxml.restored_domain_xml(text, name, images, nvram, new_uuid)
    if keep_host_resources:
        return xml, []
    return host_resources.strip(xml, {path for path, _ in images.values()}
                                | ({nvram} if nvram is not None else set()))


def warn_changed(changes: list[str]) -> None:
    """Log one warning naming what was removed from, or changed in, a restored domain's
    XML (see host_resources.strip)."""
    if changes:
        log.warning("removed or changed host resources in the restored domain XML "
                    "(--keep-host-resources keeps them as archived): %s", ", ".join(changes))


@contextlib.contextmanager
def target_dir(path: str) -> Iterator[None]:
    """Make directory path (and its missing parents) for the block; if the block
    fails, remove the directories it made, so --to is left as it was.

    Raise RestoreTargetUnusable if something in the way is not a directory or
    the file system refuses (read-only, /proc, /sys).
    """
    created: list[str] = []
    try:
        _make_dirs(path, created)
        yield
    except BaseException:
        for d in reversed(created):
            with contextlib.suppress(OSError):  # not empty: not only ours, so kept
                os.rmdir(d)
        raise


def _make_dirs(path: str, created: list[str]) -> None:
    """Create directory path and its missing parents, appending each to created."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise RestoreTargetUnusable(path=(missing or [path])[0], detail=(
            f"{path} is not a directory" if missing else "it is not a directory"))
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except OSError as e:
            raise RestoreTargetUnusable(path=missing[0],
                                        detail=f"cannot create {d} ({e.strerror})") from e
        created.append(d)


def _move_in(stage: str, to: str, names: list[str], force: bool) -> None:
    """Move the files names from stage into directory to, all of them or none.

    Without force each name is claimed first (an empty file made with O_EXCL),
    and only then is it replaced by the staged file: what appeared in to since
    the restore checked it (another restore's image, a file of someone's) is
    never replaced; RestoreTargetExists names it, and the names claimed are
    removed again. With force, files in the way are replaced. Restores into one
    directory move in one at a time (a flock on it), so of two racing restores
    the one that finishes first keeps its files whole.
    """
    fd = os.open(to, os.O_RDONLY | os.O_DIRECTORY)
    claimed: list[str] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not force:
            taken = [p for n in names if not _claim(p := os.path.join(to, n), claimed)]
            if taken:
                raise RestoreTargetExists(paths=", ".join(taken))
        for n in names:
            os.replace(os.path.join(stage, n), os.path.join(to, n))
    except BaseException:
        for path in claimed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise
    finally:
        os.close(fd)


def _claim(path: str, claimed: list[str]) -> bool:
    """Create an empty file at path (readable by its owner only) and append path to
    claimed; return False if something is already there."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, images.PRIVATE))
    except FileExistsError:
        return False
    claimed.append(path)
    return True


STAGING_PREFIX = ".borg-vm-restore-"


@contextlib.contextmanager
def _staging(directory: str) -> Iterator[str]:
    """Yield a new hidden directory inside directory to write the images in, removed
    on the way out; a restore holds its flock meanwhile, so one left by a restore
    that was killed (no one holds it) is removed first."""
    _remove_stale_staging(directory)
    try:
        stage = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory)
        fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise RestoreTargetUnusable(path=directory,
                                    detail=f"cannot create files in it ({e.strerror})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        os.close(fd)


def _remove_stale_staging(directory: str) -> None:
    """Remove staging directories of killed restores: those whose flock no one holds."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not name.startswith(STAGING_PREFIX):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue   # not a directory (or gone): not ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue   # a restore running now
        else:
            log.info("removing %s, left by a restore that was killed", path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _prepare_layer(d: DiskPlan, i: int, stage: str, size: int) -> images.Layer:
    """Create the image (size bytes) for layer i of a disk's chain (unless flatten
    reuses it)."""
    path = os.path.join(stage, d.images[i])
    if i == 0 or d.images[i] != d.images[i - 1]:
        backing = os.path.join(stage, d.images[i - 1]) if i else None
        images.create_image(path, d.formats[i], size, backing)
    log.info("restoring %s of %s into %s", d.target, d.archives[i].archive, d.images[i])
    return images.Layer(path, d.formats[i], zeros=i > 0)
