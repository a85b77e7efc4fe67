"""The restore action: reassemble a domain's disks as of one checkpoint, as a
chain of images (one per archive), one flattened image, or the disk's
snapshot layers (services/restore/plan.py plans all three).

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

import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from borg_vm.adapters.borg import Repository
from borg_vm.core import domxml, host_resources
from borg_vm.core import vmstate as core_vmstate
from borg_vm.errors import (
    ImageWriteError,
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
from borg_vm.services import catalog, catalog_cache
from borg_vm.services.restore import images, vmstate
from borg_vm.services.restore.plan import (
    DiskPlan,
    chain_plans,
    extract_order,
    image_layer_plans,
    image_steps,
    layer_plans,
    passes,
    write,
    write_images,
)

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

    A named checkpoint this host saw listed before (catalog_cache) is restored
    from what it saw while the repository is listed again (unless a passphrase
    may still have to be asked for: borg.may_ask): nothing is moved
    into place unless the listing confirms it (else, or if the restore failed
    and the listing does not confirm it, the restore runs again from the listing).
    """
    guess = (catalog_cache.restore_point(borg, domain, opts.checkpoint)
             if opts.checkpoint is not None and not opts.allow_unauthenticated
             and not borg.may_ask else None)
    if guess is None:
        return _restore(borg, domain, opts, catalog.restore_point(
            borg, domain, opts.checkpoint, opts.allow_unauthenticated))
    log.debug("%s: restoring %s as this host last listed it while the repository is "
              "listed again", domain, opts.checkpoint)
    with concurrent.futures.ThreadPoolExecutor(1, "borg-list") as pool:
        listing = pool.submit(catalog.restore_point, borg, domain, opts.checkpoint)

        def confirm(used: list[ArchiveInfo]) -> None:
            # The listing's own error (the point is gone, or no longer authentic) first.
            if not catalog_cache.confirms(listing.result(), guess, used):
                raise catalog_cache.Unconfirmed()

        done = catalog_cache.attempt(lambda: _restore(borg, domain, opts, guess, confirm),
                                     lambda: confirm([guess[1]]))
        if done is not None:
            return done
        log.info("%s: the repository changed since this host last listed it: restoring "
                 "%s as listed now", domain, opts.checkpoint)
        return _restore(borg, domain, opts, listing.result())


def _restore(borg: Repository, domain: str, opts: RestoreOptions, point: catalog_cache.Point,
             confirm: Callable[[list[ArchiveInfo]], None] | None = None) -> RestoreResult:
    """Restore point = (the archives a chain may use, the top): see restore. confirm,
    if given, is called with the archives read before anything is moved into place."""
    archives, top = point
    store = catalog.image_store(borg, top)
    wanted = top_files(top)
    targets = opts.disks or tuple(sorted(top.summary.disks))
    manifests: dict[str, Manifest] = {}
    files: dict[str, bytes] = {}
    if opts.layers and store is not None:
        plans, files = image_layer_plans(borg, top, targets, opts.format, wanted)
    elif opts.layers:
        # The top's small members come with its manifest: one borg fewer.
        plans, manifests, files = layer_plans(borg, archives, top, targets, opts.format, wanted)
    else:
        plans = chain_plans(archives, top, targets, opts.format, opts.flatten)
    steps = passes(plans) if store is None else []
    reads = [images.read_for(arc, keys, manifests.get(arc.archive)) for arc, keys in steps]
    del manifests   # planned: let go of their extents (millions, in a hostile one)
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
    with contextlib.ExitStack() as started:
        found = started.enter_context(reader.read_ahead(borg, small + reads))
        extracts = None if store is None else started.enter_context(
            images.ImageExtracts(store, extract_order(plans)))
        if small:
            with next(found) as top_members:
                files = reader.small_files(top_members, top.archive, wanted)
        made = _from_top(top, files, wanted, plans, to, opts, nvram)
        del files   # the top's manifest, read again with its data: not held meanwhile
        with target_dir(to), _staging(to) as stage:
            total = (sum(a.summary.disks[d.target].data_bytes for d in plans
                         for a in d.archives) if store is None else
                     sum(made.sizes[d.target] * len(image_steps(d)) for d in plans))
            progress = Progress.for_terminal(f"restore {domain}", total, opts.progress)
            try:
                if extracts is None:
                    write(found, plans, steps, made.sizes, stage, progress)
                else:
                    write_images(extracts, plans, made.sizes, stage, progress)
                if confirm is not None:
                    confirm([top, *(a for d in plans for a in d.archives)])
                with open(os.open(os.path.join(stage, xml_name),
                                  os.O_WRONLY | os.O_CREAT | os.O_EXCL, images.PRIVATE), "w") as f:
                    f.write(made.xml + "\n")   # a text file; ElementTree ends at the root's tag
                with contextlib.ExitStack() as undo:
                    placed = vmstate.place(made.state, made.xml, made.uuid,
                                           nvram and os.path.join(stage, nvram), undo.callback)
                    # (claiming a name takes a directory entry: ENOSPC is possible)
                    _move_in(stage, to, outputs, opts.force)
                    undo.pop_all()
            except (NbdError, ImageWriteError) as e:
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
    state = {n: os.path.join(to, os.path.basename(p)) if n == core_vmstate.NVRAM else p
             for n, p in placed.items()}   # the UEFI variables were moved in from stage
    return RestoreResult(
        domain, top.name.checkpoint,
        {d.target: {"image": os.path.join(to, d.top),
                    "chain": [os.path.join(to, p) for p in dict.fromkeys(d.images)],
                    **({"layers": list(d.names)} if opts.layers else {})}
         for d in plans},
        os.path.join(to, xml_name), state)


@dataclass(frozen=True)
class _Top:
    """What a restore takes from its top archive's small members."""

    xml: str                      # the restored domain's (see _xml)
    changes: list[str]            # what _xml removed or changed of the host's
    sizes: dict[str, int]         # target -> the size of its images
    state: dict[str, bytes]       # the domain's state, by name (vmstate.py)
    uuid: str | None              # the restored domain's, if it has TPM state


def _from_top(top: ArchiveInfo, files: dict[str, bytes], wanted: tuple[str, ...],
              plans: list[DiskPlan], to: str, opts: RestoreOptions,
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
                _state(manifest, files), new_uuid)


def restored_xml(borg: Repository, top: ArchiveInfo, images: dict[str, tuple[str, str]],
                 keep_host_resources: bool, name: str, nvram: str | None = None
                 ) -> tuple[str, list[str], dict[str, bytes]]:
    """Return the XML of a domain called name on the restored images and on nvram,
    the file its UEFI variables are to be written to, if the archive holds them
    (see _xml), what was removed from it or changed of the host's resources, and
    the domain's state top holds, by name (vmstate.place puts it in place).

    Raise FormatError naming top if it fails reader.check_archive.
    """
    wanted = top_files(top)
    files = reader.read_small(borg, top.archive, wanted)
    manifest = reader.check_archive(top, files, wanted)
    return (*_xml(top, manifest, files, images, keep_host_resources, name, nvram),
            _state(manifest, files))


def _state(manifest: Manifest, files: dict[str, bytes]) -> dict[str, bytes]:
    """The domain's state an archive holds (its small members files), by name."""
    return {n: files[fmt.state_member(n)] for n in manifest.state}


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
