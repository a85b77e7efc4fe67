"""The backup action: one domain, one run, one archive.

Order of events (commit last)::

    lock domain (list the repository meanwhile), end a crashed run's job ->
    plan level -> begin pull backup (creates checkpoint C; --quiesce freezes
    the guest for this step only, see quiesce.py) -> block status per disk ->
    stream tar into `borg import-tar NAME` -> manifest -> end of the tar
    stream -> borg commits, exits 0 -> end job -> delete older borg-vm
    checkpoints -> delete what crashed runs left in the repository

The plan needs the repository's archives of the domain. If this host saw them
before (services/catalog_cache.py: its last listing and the archives its
backups committed since), the run plans from those while the repository is
listed again, and starts no borg that writes (Borg 1.4: the import-tar; Borg 2:
the record, after the images) until the listing confirms them; if it does not,
the run is undone as any failed run is and runs again from the listing.

borg commits NAME only when it reads the end of the stream, which is written
last (adapters/borg/cli.py import_tar: borg holds its stdin open, so a run cut
short, even by SIGKILL, is never an end of file it could take for the end).
Any failure before that: borg is stopped and rolls back, the job aborted,
checkpoint C deleted; the parent checkpoint is untouched, so the next run is
still incremental from the last good archive.

A run reaches the disks through a session (services/backup/context.py): the
libvirt pull-backup job above for a running domain (``running.session``), or
for a shut-off one the images and their persistent bitmaps
(``offline.session``); the archive is written the same way for both
(format/writer.py).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from borg_vm import runtime
from borg_vm.adapters.borg import Repository
from borg_vm.adapters.libvirt import Domain, Hypervisor
from borg_vm.core import domxml, extent, plan
from borg_vm.core import layers as layers_
from borg_vm.core.disk_source import DiskSource
from borg_vm.errors import (
    BorgError,
    CheckpointInconsistent,
    NoDisksToBackUp,
    UnknownDisk,
)
from borg_vm.format import names as fmt
from borg_vm.format import writer
from borg_vm.format.manifest import DiskRecord, Manifest, SealedRecord
from borg_vm.format.names import IMAGES_VERSION, ArchiveName, Level
from borg_vm.format.summary import ArchiveInfo, ImageRecord
from borg_vm.progress import Progress
from borg_vm.services import catalog, catalog_cache
from borg_vm.services.backup import backing, checkpoint_recovery, offline, running
from borg_vm.services.backup.context import BackupOptions, BackupRun, Session
from borg_vm.services.hosts import LOCAL, Host

log = logging.getLogger(__name__)

__all__ = ["BackupOptions", "BackupResult", "backup"]


@dataclass
class DiskResult:
    level: str
    virtual_size: int
    read: int = 0
    data: int = 0
    zero: int = 0
    # data read from layers sealed since the parent (their final changes); the
    # JSON key of --json output, kept
    frozen: int = 0


@dataclass
class BackupResult:
    archive: str
    domain: str
    snapshot: str
    checkpoint: str
    level: str
    reason: str
    duration: float = 0.0
    disks: dict[str, DiskResult] = field(default_factory=dict)
    frozen_ms: float | None = None   # how long --quiesce kept the guest frozen

    def to_json(self) -> dict:
        return {"archive": self.archive, "domain": self.domain, "snapshot": self.snapshot,
                "checkpoint": self.checkpoint, "level": self.level, "reason": self.reason,
                "duration": round(self.duration, 3),
                "frozen_ms": None if self.frozen_ms is None else round(self.frozen_ms, 1),
                "disks": {t: vars(d) for t, d in sorted(self.disks.items())}}


def select_disks(dom: Domain, live: domxml.LiveDomain, exclude: tuple[str, ...]
                 ) -> tuple[plan.Disk, ...]:
    """Return the domain's disks to back up; raise UnknownDisk/NoDisksToBackUp on bad input."""
    known = {s.target for s in live.disks}
    for target in exclude:
        if target not in known:
            raise UnknownDisk(name=dom.name, target=target, known=", ".join(sorted(known)))
    disks, skipped = [], []
    for s in live.disks:
        reason = "excluded" if s.target in exclude else s.skip_reason()
        if reason:
            skipped.append(f"{s.target}: {reason}")
            log.info("%s: not backing up disk %s (%s)", dom.name, s.target, reason)
            continue
        assert s.source, "skip_reason skips a disk without a source"
        d = plan.Disk(s.target, s.source, s.format or "raw", dom.disk_capacity(s.target))
        if not d.incremental_capable:
            log.warning("%s: disk %s is %s, not qcow2: it gets a full backup every run",
                        dom.name, d.target, d.format)
        disks.append(d)
    if not disks:
        raise NoDisksToBackUp(name=dom.name, detail="; ".join(skipped) or "it has none")
    return tuple(disks)


def backup(hv: Hypervisor, borg: Repository, name: str, opts: BackupOptions,
           host: Host = LOCAL) -> BackupResult:
    """Back up one domain (running or shut off) of hypervisor hv, on machine host
    (services/hosts.py), into one new archive; return what was done.

    Raise a BorgVmError subclass (nothing recorded, nothing lost) on failure.
    """
    started = time.monotonic()
    dom = hv.domain(name)
    with host.domain_lock(dom.uuid, name):
        # The repository's list takes a borg process (part of every run's fixed
        # cost, bench/NOTES.md "Full backup (item 1)"): it runs while libvirt
        # answers the questions below, and while a run planned from what this
        # host saw begins; the thread ends with it.
        with concurrent.futures.ThreadPoolExecutor(1, "borg-list") as pool:
            listed = pool.submit(catalog.archives, borg, dom.name)
            host.remove_stale(dom.uuid)
            running.end_stale_job(dom, host)
            # the live XML of a running domain, the definition of a shut-off one
            live = domxml.LiveDomain.parse(dom.xml())
            disks = select_disks(dom, live, opts.exclude_disks)
            own = _own_checkpoints(dom)
            seen = None if borg.may_ask else catalog_cache.seen(borg, dom.name)
            result = None
            if seen is not None and not _needs_recovery(dom, opts, seen.archives, own):
                log.debug("%s: planning from what this host last saw while the repository "
                          "is listed again", dom.name)
                result = _from_seen(BackupRun(
                    dom, opts, live, disks, tuple(seen.archives), seen.keyring.signing_key,
                    frozenset(a.name.checkpoint for a in seen.archives),
                    functools.partial(_confirm, listed, seen), host), borg, own,
                    functools.partial(_confirm, listed, seen, None))
                own = _own_checkpoints(dom)   # as the run left them, if it is to run again
            found = listed.result()
        if result is None:
            result = _backup_locked(BackupRun(dom, opts, live, disks, tuple(found.archives),
                                              found.keyring.signing_key,
                                              frozenset(found.checkpoints()), host=host),
                                    borg, own)
        # (the listing may have run beside this run's images: they are no leftovers)
        _delete_leftovers(dom, borg, found.leftovers(ArchiveName.parse(result.archive)))
    result.duration = time.monotonic() - started
    return result


def _own_checkpoints(dom: Domain) -> set[str]:
    return {c for c in dom.checkpoints() if fmt.is_own_checkpoint(c)}


def _needs_recovery(dom: Domain, opts: BackupOptions, archives: list[ArchiveInfo],
                    own: set[str]) -> bool:
    """Return True if a run planned from archives would bring a lost checkpoint
    back from the repository (_recover_checkpoint): that waits for the listing."""
    parent = plan.latest(archives, dom.name)
    return (opts.level != Level.FULL and parent is not None and parent.summary.uuid == dom.uuid
            and parent.name.checkpoint not in own)


def _confirm(listed: concurrent.futures.Future[catalog.Catalog], seen: catalog_cache.Seen,
             name: ArchiveName | None) -> None:
    """Raise catalog_cache.Unconfirmed unless the listing (its own error first) holds the very
    archives seen, signs with the same key and has no archive of name's checkpoint
    (but the images of this run, which it may list)."""
    found = listed.result()
    if (found.archives != seen.archives or found.keyring.signing_key != seen.keyring.signing_key
            or (name is not None and name.checkpoint in found.checkpoints(name))):
        raise catalog_cache.Unconfirmed()


def _from_seen(run: BackupRun, borg: Repository, own: set[str],
               confirmed: Callable[[], None]) -> BackupResult | None:
    """Back up along a run planned from what this host saw (run.confirm given);
    return None if the listing did not confirm it (confirmed raises): the run
    was undone, and is to run again from the listing."""
    done = catalog_cache.attempt(lambda: _backup_locked(run, borg, own), confirmed)
    if done is not None:
        return done
    log.info("%s: the repository changed since this host last listed it: backing up "
             "as listed now", run.dom.name)
    return None


def _delete_leftovers(dom: Domain, borg: Repository, partial: list[str]) -> None:
    """Delete what crashed runs left in the repository (borg checkpoint archives,
    older borg-vm's partial archives), now that the new archive reused their
    chunks. Best effort: the backup is done; the next run tries again."""
    if not partial:
        return
    log.info("%s: deleting unfinished archives of crashed runs: %s", dom.name,
                ", ".join(partial))
    try:
        borg.delete(partial)
    except BorgError as e:
        log.error("%s: could not delete %s: %s", dom.name, ", ".join(partial), e.message)


def _backup_locked(run: BackupRun, borg: Repository, own: set[str]) -> BackupResult:
    dom, opts = run.dom, run.opts
    lost = _recover_checkpoint(run, borg, own)
    p = plan.plan(opts.level, dom.name, dom.uuid, list(run.disks), list(run.archives), own,
                  opts.full_every, datetime.now(UTC), images=borg.images is not None)
    if lost and p.level == Level.FULL and p.parent is None:
        p = replace(p, reason=f"{p.reason}, and could not be brought back: {lost}")
    try:
        return _run(run, borg, p)
    except CheckpointInconsistent as e:
        parent = p.parent_checkpoint
        if opts.level != plan.AUTO or parent is None:   # a full has no checkpoint to drop
            raise
        reason = f"checkpoint {parent} is inconsistent: {e.kwargs['detail']}"
        full = plan.Plan(Level.FULL, reason, None, {d.target: Level.FULL for d in run.disks})
        log.warning("%s: %s backup: %s", dom.name, full.level, full.reason)
        dom.delete_checkpoint(parent, broken=True)
        return _run(run, borg, full, announced=True)


def _recover_checkpoint(run: BackupRun, borg: Repository, own: set[str]) -> str | None:
    """If libvirt lost the newest archive's checkpoint, bring it back from the
    archive (services/backup/checkpoint_recovery.py) and add it to own; return
    why it could not be."""
    dom = run.dom
    parent = plan.latest(list(run.archives), dom.name)
    if parent is None or not _needs_recovery(dom, run.opts, list(run.archives), own):
        return None
    lost = checkpoint_recovery.checkpoint(dom, borg, parent)
    if lost is None:
        own.add(parent.name.checkpoint)
    return lost


def _run(run: BackupRun, borg: Repository, p: plan.Plan, announced: bool = False
         ) -> BackupResult:
    """Back up along plan p and log it (unless announced) once it is sure: raise
    CheckpointInconsistent, before that and with nothing recorded, if p's parent
    checkpoint turns out unusable."""
    dom = run.dom
    when = datetime.now(UTC)
    taken = set(dom.checkpoints()) | run.taken
    active = dom.is_active()
    layers = backing.of_disks(dom, run.disks, p, run.host)
    name = plan.archive_name(dom.name, backing.top_layer(layers), when, taken)
    checkpoint = name.checkpoint
    runtime.phase(runtime.PLANNED, "%s: %s backup into %s", dom.name, p.level, name)
    opened = (running.session(run, p, checkpoint) if active else
              offline.session(run, p, checkpoint, when,
                              {t: x.chain for t, x in layers.items()}))
    with opened as session:
        # Only now is the plan sure: opening the session finds an unusable parent.
        if not announced:
            log.info("%s: %s backup: %s", dom.name, p.level, p.reason)
        runtime.phase(runtime.JOB_STARTED, "%s: checkpoint %s", dom.name, checkpoint)
        written, frozen = _write(run, borg, p, name, when, session, layers)
    manifest, late = written.manifest, written.late
    if written.archive is not None:
        catalog_cache.save(borg, dom.name, [*run.archives, written.archive])
    if late is not None:   # the archive is good, so the run ended as one that made it
        raise late
    runtime.phase(runtime.DONE, "%s: job ended, older checkpoints deleted", dom.name)
    result = BackupResult(str(name), dom.name, name.snapshot_name, checkpoint, p.level,
                          p.reason, frozen_ms=session.frozen_ms)
    for t, d in manifest.disks.items():
        result.disks[t] = DiskResult(d.level, d.virtual_size, read=d.data_bytes + frozen[t],
                                     data=d.data_bytes, zero=d.zero_bytes, frozen=frozen[t])
    return result


def _write(run: BackupRun, borg: Repository, p: plan.Plan, name: ArchiveName, when: datetime,
           session: Session, layers: dict[str, backing.DiskLayers]
           ) -> tuple[writer.Written, dict[str, int]]:
    """Map every disk's extents in the session's source, and the final changes of
    its layers sealed since the parent, plan the manifest and write the archive
    (format/writer.py); or, into a repository of complete images, each disk's
    image (and its sealed layers') and the record naming them. Return what was
    written and the bytes read of each disk's sealed layers."""
    dom, opts = run.dom, run.opts
    source = session.source
    confirm = None if run.confirm is None else functools.partial(run.confirm, name)
    maps = {t: _extent_map(source, t, p.disk_levels[t] == Level.INC, opts)
            for t in sorted(run.by_target)}
    log.debug("%s: block status read: %s", dom.name,
              ", ".join(f"{t} {len(e)} extents" for t, (_s, e) in maps.items()))
    disks = run.by_target
    manifest = Manifest(
        domain=dom.name, uuid=dom.uuid, snapshot=name.snapshot,
        checkpoint=name.checkpoint, level=p.level, parent_checkpoint=p.parent_checkpoint,
        parent_archive=p.parent.archive if p.parent else None,
        parent_id=p.parent.id if p.parent else None,
        time=when.strftime("%Y-%m-%dT%H:%M:%SZ"), block_size=opts.block_size,
        disks={t: DiskRecord(p.disk_levels[t], disks[t].format, disks[t].source, size,
                             tuple(ext), layers=layers[t].records())
               for t, (size, ext) in maps.items()})
    parts = writer.Parts(domain_xml=dom.xml(inactive=True),
                         checkpoint_xml=session.checkpoint_xml, when=when,
                         compression=opts.compression, block_size=opts.block_size,
                         key=run.key, state=session.state)
    if borg.images is not None:
        images, inputs = _images(manifest, p, source)
        with backing.sealed_source(layers, run.host.nbd_servers(dom.uuid)) as old:
            images, to_build = _sealed_images(images, p, old, layers,
                                              plan.latest(list(run.archives), dom.name), opts)
            written = writer.write_images(borg, borg.images, name, images, parts, inputs,
                                          opts.scratch_dir, opts.progress, to_build, confirm)
        return written, {t: sum(extent.data_bytes(inp.ranges) for _i, inp in to_build.get(t, []))
                         for t in written.manifest.disks}
    with backing.sealed_source(layers, run.host.nbd_servers(dom.uuid)) as old:
        sealed = {t: tuple(SealedRecord(i, Level.INC if bitmap else Level.FULL, tuple(
            _extent_map(old, backing.key(t, i), bool(bitmap), opts)[1]))
            for i, bitmap in layers[t].sealed) for t in sorted(run.by_target)}
        manifest = replace(manifest, disks={t: replace(d, sealed=sealed[t])
                                            for t, d in manifest.disks.items()})

        def where(target: str, layer: int) -> writer.Where:
            return (writer.Where(source, target) if not layer
                    else writer.Where(old, backing.key(target, layer)))

        total = sum(d.data_bytes + sum(f.data_bytes for f in d.sealed)
                    for d in manifest.disks.values())
        written = writer.write_archive(borg, name, manifest, parts, where,
                                       Progress.for_terminal(dom.name, total, opts.progress),
                                       confirm)
        return written, {t: sum(f.data_bytes for f in d.sealed)
                         for t, d in written.manifest.disks.items()}


def _images(manifest: Manifest, p: plan.Plan, source: DiskSource
            ) -> tuple[Manifest, dict[str, writer.ImageInput]]:
    """Return the record of complete images a run of plan p writes (format
    version 6: each disk's image, read where the manifest's extents say, the
    rest taken from the parent's image) and each image's input."""
    disks, inputs = {}, {}
    for t, d in manifest.disks.items():
        inc = d.level == Level.INC
        before = p.parent.summary.disks[t].image if inc and p.parent else None
        assert before is not None or not inc, "an incremental image needs its parent's"
        image = (ImageRecord("", before.full_time, before.runs + 1) if before is not None
                 else ImageRecord("", manifest.time, 0))
        disks[t] = replace(d, extents=(), image=image, counts=(d.data_bytes, d.zero_bytes))
        inputs[t] = writer.ImageInput(source.endpoint(t),
                                      extent.input_map(d.virtual_size, d.extents, inc),
                                      before.id if before is not None else None)
    return replace(manifest, disks=disks, version=IMAGES_VERSION), inputs


def _sealed_images(manifest: Manifest, p: plan.Plan, old: DiskSource,
                   layers: dict[str, backing.DiskLayers], latest: ArchiveInfo | None,
                   opts: BackupOptions
                   ) -> tuple[Manifest, dict[str, list[tuple[int, writer.ImageInput]]]]:
    """Return the record with each disk's sealed layers carrying the images the
    latest record named of them while they stay as they were (core.layers.carried),
    and the inputs of the images to build of the layers sealed since the parent
    (deepest first, by index into the disk's layers): each read where its bitmap
    says it changed since the parent, the rest taken from the image below it (the
    parent's image, for the parent's top), or read whole without a usable bitmap."""
    disks, sealed = {}, {}
    same_domain = latest is not None and latest.summary.uuid == manifest.uuid
    for t, d in manifest.disks.items():
        chain = [x.path for x in d.chain]
        then = latest.summary.disks.get(t) if latest is not None and same_domain else None
        keep = (layers_.carried(chain, [then.source, *(x for x, _ in then.layers)],
                                dict(then.layers)) if then is not None else {})
        disks[t] = replace(d, layers=tuple(replace(x, image=keep.get(i))
                                           for i, x in enumerate(d.chain)))
        parent = p.parent.summary.disks.get(t) if p.parent is not None else None
        todo = []
        for i, bitmap in sorted(layers[t].sealed, reverse=True):
            size, extents = _extent_map(old, backing.key(t, i), bool(bitmap), opts)
            deepest = parent is not None and chain[i] == parent.source
            reuse = parent.image if bitmap and deepest and parent is not None else None
            todo.append((i, writer.ImageInput(
                old.endpoint(backing.key(t, i)), extent.input_map(size, extents, bool(bitmap)),
                reuse.id if reuse is not None else None,
                reuse_below=bool(bitmap) and not deepest)))
        if todo:
            sealed[t] = todo
    return replace(manifest, disks=disks), sealed


def _extent_map(source: DiskSource, target: str, incremental: bool,
                opts: BackupOptions) -> tuple[int, list[extent.Extent]]:
    """Return (virtual size, extents to record) of one disk of the source."""
    m = source.extent_map(target, incremental=incremental)
    if m.dirty is not None:
        planned = extent.plan_incremental(m.allocation, m.dirty)
    else:
        planned = extent.plan_full(m.allocation)
    return m.size, extent.widen_data(planned, opts.read_alignment, m.size)
