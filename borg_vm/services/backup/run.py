"""The backup action: one domain, one run, one archive.

Order of events (commit last)::

    lock domain (list the repository meanwhile), end a crashed run's job ->
    plan level -> begin pull backup (creates checkpoint C; --quiesce freezes
    the guest for this step only, see quiesce.py) -> block status per disk ->
    stream tar into `borg import-tar NAME` -> manifest -> end of the tar
    stream -> borg commits, exits 0 -> end job -> delete older borg-vm
    checkpoints -> delete what crashed runs left in the repository

borg commits NAME only when it reads the end of the stream, which is written
last (adapters/borg.py import_tar: borg holds its stdin open, so a run cut
short, even by SIGKILL, is never an end of file it could take for the end).
Any failure before that: borg is stopped and rolls back, the job aborted,
checkpoint C deleted; the parent checkpoint is untouched, so the next run is
still incremental from the last good archive.

A run reaches the disks through a session (core/disk_source.py ``Session``): the
libvirt pull-backup job above for a running domain (``running_session``), or
for a shut-off one the images and their persistent bitmaps
(``offline.session``); the stream into Borg is the same for both.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import time
from typing import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from borg_vm import prefetch, runtime
from borg_vm.adapters.borg import Repository
from borg_vm.adapters.libvirt import Domain, Hypervisor
from borg_vm.adapters.disk_sources import PullBackupSource
from borg_vm.format import manifest as fmt
from borg_vm.core import domxml, extent, plan
from borg_vm.format import packing
from borg_vm.format.manifest import ArchiveInfo, ArchiveName, DiskRecord, FrozenRecord, Manifest
from borg_vm.core.disk_source import DiskSource, Session
from borg_vm.format.tarstream import TarWriter
from borg_vm.errors import (BorgError, CheckpointInconsistent, CommittedThenFailed, DomainStopped,
                      LibvirtError, NbdError, NoDisksToBackUp, QemuImgError, UnknownDisk)
from borg_vm.progress import Progress
from borg_vm.services import catalog as repository
from borg_vm.services.backup import checkpoint_recovery as recover
from borg_vm.services.backup import quiesce
from borg_vm.services.backup import backing as snapshots
from borg_vm.services.backup import offline
from borg_vm.services.backup.quiesce import FREEZE_TIMEOUT

log = logging.getLogger(__name__)

PREFETCH_DEPTH = 4
# Views the consumer side may hold at once: the queue, the one being put
# into it and the one being written.
PREFETCH_HOLD = PREFETCH_DEPTH + 2


@dataclass(frozen=True)
class BackupOptions:
    level: str = plan.AUTO
    exclude_disks: tuple[str, ...] = ()
    scratch_dir: str | None = None
    compression: str = "lz4"
    progress: bool = True
    block_size: int = fmt.BLOCK_SIZE
    read_alignment: int = 0
    full_every: plan.FullEvery | None = None
    quiesce: str | None = None            # quiesce.ON, quiesce.TRY or None
    freeze_timeout: float = FREEZE_TIMEOUT


@dataclass
class DiskResult:
    level: str
    virtual_size: int
    read: int = 0
    data: int = 0
    zero: int = 0
    frozen: int = 0   # data read from layers frozen since the parent (their final changes)


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


def select_disks(dom: Domain, live_xml: str, exclude: tuple[str, ...]) -> list[plan.Disk]:
    """Return the domain's disks to back up; raise UnknownDisk/NoDisksToBackUp on bad input."""
    specs = domxml.parse_disks(live_xml)
    known = {s.target for s in specs}
    for target in exclude:
        if target not in known:
            raise UnknownDisk(name=dom.name, target=target, known=", ".join(sorted(known)))
    disks, skipped = [], []
    for s in specs:
        reason = "excluded" if s.target in exclude else s.skip_reason()
        if reason:
            skipped.append(f"{s.target}: {reason}")
            log.info("%s: not backing up disk %s (%s)", dom.name, s.target, reason)
            continue
        d = plan.Disk(s.target, s.source, s.format or "raw", dom.disk_capacity(s.target))
        if not d.incremental_capable:
            log.warning("%s: disk %s is %s, not qcow2: it gets a full backup every run",
                        dom.name, d.target, d.format)
        disks.append(d)
    if not disks:
        raise NoDisksToBackUp(name=dom.name, detail="; ".join(skipped) or "it has none")
    return disks


def end_stale_job(dom: Domain) -> None:
    """Abort a backup job a crashed borg-vm run left behind; refuse to touch anyone else's."""
    job = dom.backup_job_xml()
    if job is None:
        return
    sockets = domxml.backup_sockets(job)
    if sockets and all(runtime.is_ours(s) for s in sockets):
        log.warning("%s: aborting a backup job left by a crashed borg-vm run", dom.name)
        dom.abort_job()
        return
    raise LibvirtError(action="start a backup", name=dom.name,
                       detail="another backup job is running on this domain")


def backup(hv: Hypervisor, borg: Repository, name: str, opts: BackupOptions) -> BackupResult:
    """Back up one domain (running or shut off) into one new archive; return what was done.

    Raise a BorgVmError subclass (nothing recorded, nothing lost) on failure.
    """
    started = time.monotonic()
    dom = hv.domain(name)
    with runtime.domain_lock(dom.uuid, name):
        # The repository's list takes a borg process (part of every run's fixed
        # cost, bench/NOTES.md "Full backup (item 1)"): it runs while libvirt
        # answers the questions below; the thread ends with it.
        with concurrent.futures.ThreadPoolExecutor(1, "borg-list") as pool:
            listed = pool.submit(repository.archives, borg, dom.name)
            runtime.remove_stale(dom.uuid)
            end_stale_job(dom)
            xml = dom.xml()  # the live XML of a running domain, the definition of a shut-off one
            disks = select_disks(dom, xml, opts.exclude_disks)
            own = {c for c in dom.checkpoints() if fmt.is_own_checkpoint(c)}
            archives, partial = listed.result()
        result = _backup_locked(dom, borg, opts, xml, disks, own, archives)
        _delete_leftovers(dom, borg, partial)
    result.duration = time.monotonic() - started
    return result


def _delete_leftovers(dom: Domain, borg: Repository, partial: list[str]) -> None:
    """Delete what crashed runs left in the repository (borg checkpoint archives,
    older borg-vm's partial archives), now that the new archive reused their
    chunks. Best effort: the backup is done; the next run tries again."""
    if not partial:
        return
    log.warning("%s: deleting unfinished archives of crashed runs: %s", dom.name,
                ", ".join(partial))
    try:
        borg.delete(partial)
    except BorgError as e:
        log.error("%s: could not delete %s: %s", dom.name, ", ".join(partial), e.message)


def _backup_locked(dom: Domain, borg: Repository, opts: BackupOptions, xml: str,
                   disks: list[plan.Disk], own: set[str],
                   archives: list[ArchiveInfo]) -> BackupResult:
    lost = _recover_checkpoint(dom, borg, opts, archives, own)
    p = plan.plan(opts.level, dom.name, dom.uuid, disks, archives, own, opts.full_every,
                  datetime.now(timezone.utc))
    if lost and p.level == fmt.FULL and p.parent is None:
        p = replace(p, reason=f"{p.reason}, and could not be brought back: {lost}")
    try:
        return _run(dom, borg, opts, disks, archives, p, xml)
    except CheckpointInconsistent as e:
        if opts.level != plan.AUTO:
            raise
        log.warning("%s", e.message)
        dom.delete_checkpoint(p.parent_checkpoint, broken=True)
        reason = f"checkpoint {p.parent_checkpoint} is inconsistent: {e.kwargs['detail']}"
        full = plan.Plan(fmt.FULL, reason, None, {d.target: fmt.FULL for d in disks})
        return _run(dom, borg, opts, disks, archives, full, xml)


def _recover_checkpoint(dom: Domain, borg: Repository, opts: BackupOptions,
                        archives: list[ArchiveInfo], own: set[str]) -> str | None:
    """If libvirt lost the newest archive's checkpoint, bring it back from the
    archive (services/backup/checkpoint_recovery.py) and add it to own; return why it could not be."""
    parent = plan.latest(archives, dom.name)
    if (opts.level == fmt.FULL or parent is None or parent.summary.uuid != dom.uuid
            or parent.name.checkpoint in own):
        return None
    lost = recover.checkpoint(dom, borg, parent)
    if lost is None:
        own.add(parent.name.checkpoint)
    return lost


def _run(dom: Domain, borg: Repository, opts: BackupOptions, disks: list[plan.Disk],
         archives: list[ArchiveInfo], p: plan.Plan, xml: str) -> BackupResult:
    log.info("%s: %s backup: %s", dom.name, p.level, p.reason)
    when = datetime.now(timezone.utc)
    taken = set(dom.checkpoints()) | {a.name.checkpoint for a in archives}
    layers = snapshots.of_disks(dom, disks, p)
    name = plan.archive_name(dom.name, snapshots.top_layer(layers), when, taken)
    checkpoint = name.checkpoint
    by_target = {d.target: d for d in disks}
    begin = running_session if dom.is_active() else offline.session
    chains = {t: list(x.chain) for t, x in layers.items()}
    runtime.phase(runtime.PLANNED, "%s: %s backup into %s", dom.name, p.level, name)
    with begin(dom, p, checkpoint, disks, xml, opts, when, chains) as session:
        runtime.phase(runtime.JOB_STARTED, "%s: checkpoint %s", dom.name, checkpoint)
        manifest, late = _stream(dom, borg, opts, p, name, when, session, by_target, layers)
    if late is not None:   # the archive is good, so the run ended as one that made it
        raise late
    runtime.phase(runtime.DONE, "%s: job ended, older checkpoints deleted", dom.name)
    result = BackupResult(str(name), dom.name, name.snapshot_name, checkpoint, p.level,
                          p.reason, frozen_ms=session.frozen_ms)
    for t, d in manifest.disks.items():
        frozen = sum(f.data_bytes for f in d.frozen)
        result.disks[t] = DiskResult(d.level, d.virtual_size, read=d.data_bytes + frozen,
                                     data=d.data_bytes, zero=d.zero_bytes, frozen=frozen)
    return result


@contextlib.contextmanager
def running_session(dom: Domain, p: plan.Plan, checkpoint: str, disks: list[plan.Disk],
                    live_xml: str, opts: BackupOptions, when: datetime,
                    _chains: dict) -> Iterator[Session]:
    """Begin a libvirt pull-mode backup job that creates `checkpoint`; yield its Session.

    On normal exit (the archive has its final name) end the job and delete the
    domain's older borg-vm checkpoints; on an exception abort the job and
    delete the new checkpoint.
    """
    by_target = {d.target: d for d in disks}
    with runtime.run_dir(dom.uuid, domxml.qemu_owner(live_xml)) as rundir:
        socket = os.path.join(rundir, "nbd.sock")
        export = {d.target: (os.path.join(opts.scratch_dir or rundir,
                                          f"{d.target}.{checkpoint}.scratch"),
                             "incremental" if p.disk_levels[d.target] == fmt.INC else "full")
                  for d in disks}
        targets = _all_targets(live_xml)
        job = domxml.backup_xml(socket, {t: export.get(t) for t in targets},
                                p.parent_checkpoint if p.level == fmt.INC else None)
        cp = domxml.checkpoint_xml(checkpoint, f"borg-vm backup of {dom.name}",
                                   {t: t in by_target and by_target[t].incremental_capable
                                    for t in targets})
        begun = False  # libvirt creates nothing when backupBegin fails
        try:
            with contextlib.ExitStack() as job_running:
                # --quiesce: the guest is frozen while the job starts, no longer
                with quiesce.frozen(dom, opts.quiesce, live_xml, opts.freeze_timeout) as q:
                    job_running.enter_context(dom.pull_backup(job, cp, p.parent_checkpoint))
                    begun = True
                yield Session(PullBackupSource(socket), lambda: dom.checkpoint_xml(checkpoint),
                              q.ms)
        except BaseException as e:
            if begun:
                _undo_checkpoint(dom, checkpoint, disks)
                if isinstance(e, NbdError) and _stopped(dom):
                    raise DomainStopped(name=dom.name, detail=e.message) from e
            raise
        finally:
            _remove_scratch(export)
    for old in sorted(c for c in dom.checkpoints()
                      if fmt.is_own_checkpoint(c) and c != checkpoint):
        # Superseded: if its bitmaps are gone (QEMU was killed since a failed run
        # made it), its metadata goes alone.
        dom.delete_checkpoint(old, broken=True)


def _all_targets(live_xml: str) -> list[str]:
    return [s.target for s in domxml.parse_disks(live_xml)
            if s.device == "disk" and s.target]


def _remove_scratch(export: dict[str, tuple[str, str]]) -> None:
    for path, _mode in export.values():
        if os.path.exists(path):
            os.unlink(path)


def _undo_checkpoint(dom: Domain, checkpoint: str, disks: list[plan.Disk]) -> None:
    """After a failure: end the job and delete the new checkpoint (through libvirt, or
    if the domain stopped meanwhile, its metadata and any bitmap in the images). Best
    effort, logged, so the original error is what the user sees."""
    log.warning("%s: backup failed; removing checkpoint %s", dom.name, checkpoint)
    try:
        dom.abort_job()
        offline.drop_checkpoint(dom, checkpoint,
                                [d.source for d in disks if d.incremental_capable])
    except (LibvirtError, QemuImgError) as e:
        log.error("%s: could not remove checkpoint %s: %s", dom.name, checkpoint, e.message)


def _stopped(dom: Domain) -> bool:
    """Return True if the domain is known to have stopped (its QEMU went away)."""
    try:
        return not dom.is_active()
    except LibvirtError:
        return False


def _stream(dom: Domain, borg: Repository, opts: BackupOptions, p: plan.Plan, name: ArchiveName,
            when: datetime, session: Session, disks: dict[str, plan.Disk],
            layers: dict[str, snapshots.DiskLayers]
            ) -> tuple[Manifest, CommittedThenFailed | None]:
    """Read every disk's extents from the session's source, and the final changes
    of its layers frozen since the parent, into one archive under its final
    name; return its manifest, and (see _write_archive) borg's failure after
    it committed the archive, if it failed so."""
    with snapshots.frozen_source(layers) as old:
        source = session.source
        maps = {t: _extent_map(source, t, p.disk_levels[t] == fmt.INC, opts)
                for t in sorted(disks)}
        frozen = {t: tuple(FrozenRecord(i, fmt.INC if bitmap else fmt.FULL, tuple(
            _extent_map(old, snapshots.key(t, i), bool(bitmap), opts)[1]))
            for i, bitmap in layers[t].frozen) for t in sorted(disks)}
        log.debug("%s: block status read: %s", dom.name,
                  ", ".join(f"{t} {len(e)} extents" for t, (_s, e) in maps.items()))
        manifest = Manifest(
            domain=dom.name, uuid=dom.uuid, snapshot=name.snapshot,
            checkpoint=name.checkpoint, level=p.level, parent_checkpoint=p.parent_checkpoint,
            parent_archive=p.parent.archive if p.parent else None,
            time=when.strftime("%Y-%m-%dT%H:%M:%SZ"), block_size=opts.block_size,
            disks={t: DiskRecord(p.disk_levels[t], disks[t].format, disks[t].source, size,
                                 tuple(ext), layers=layers[t].records(), frozen=frozen[t])
                   for t, (size, ext) in maps.items()})
        return _write_archive(dom, borg, opts, name, when, session, old, manifest)


def _write_archive(dom: Domain, borg: Repository, opts: BackupOptions, name: ArchiveName,
                   when: datetime, session: Session, old: DiskSource,
                   manifest: Manifest) -> tuple[Manifest, CommittedThenFailed | None]:
    """Stream the members the manifest lists into borg import-tar, the manifest last,
    then end the stream: borg commits the archive; return the manifest with its
    digests.

    borg failing after the end of the stream (killed in its commit, a lost ssh
    connection) may have committed the archive or not: the repository says
    which. If it did, the archive is complete and the run goes on as one that
    made it (its checkpoint kept), and borg's failure is returned, to be
    reported once the job ended; if not, or the repository cannot say, it is
    raised here."""
    source = session.source
    total = sum(d.data_bytes + sum(f.data_bytes for f in d.frozen)
                for d in manifest.disks.values())
    progress = Progress.for_terminal(f"{dom.name}", total, opts.progress)
    with borg.import_tar(str(name), comment=manifest.summary().to_comment(),
                         timestamp=when.strftime("%Y-%m-%dT%H:%M:%S"),
                         compression=opts.compression,
                         chunker_params=f"fixed,{opts.block_size}") as proc:
        try:
            tar = TarWriter(proc.stdin, int(when.timestamp()))
            tar.add(fmt.DOMAIN_XML, dom.xml(inactive=True).encode())
            tar.add(fmt.CHECKPOINT_XML, session.checkpoint_xml().encode())
            runtime.phase(runtime.STREAMING, "%s: into borg import-tar %s", dom.name, name)
            disks = {}
            for t, d in sorted(manifest.disks.items()):
                top = _stream_extents(tar, source, t, d.extents, opts, progress,
                                      lambda offset: fmt.member_name(t, offset))
                frozen = tuple(replace(f, sha256=_stream_extents(
                    tar, old, snapshots.key(t, f.layer), f.extents, opts, progress,
                    lambda offset: fmt.frozen_member_name(t, f.layer, offset)))
                    for f in d.frozen)
                disks[t] = replace(d, sha256=top, frozen=frozen)
            manifest = replace(manifest, disks=disks)
            tar.add(fmt.MANIFEST, manifest.to_json())
            runtime.phase(runtime.ENDING, "%s: all but the end of the stream written", dom.name)
            tar.close()
        except BrokenPipeError:
            borg.finish("import-tar", proc)
            raise BorgError(action="import-tar", detail="borg stopped reading the stream")
        finally:
            progress.close()
        try:
            borg.finish("import-tar", proc)
        except BorgError as e:
            if not _committed(borg, name):
                raise
            log.warning("%s: borg failed after it committed %s", dom.name, name)
            return manifest, CommittedThenFailed(action="import-tar", detail=e.message,
                                                 archive=str(name))
    runtime.phase(runtime.BORG_FINISHED, "%s: %s committed", dom.name, name)
    return manifest, None


def _committed(borg: Repository, name: ArchiveName) -> bool:
    """Return True if the repository holds archive name (False if it cannot say)."""
    try:
        return str(name) in {a.name for a in borg.list_archives()}
    except BorgError as e:
        log.error("cannot tell whether borg committed %s: %s", name, e.message)
        return False


def _extent_map(source: DiskSource, target: str, incremental: bool,
                opts: BackupOptions) -> tuple[int, list[extent.Extent]]:
    """Return (virtual size, extents to record) of one disk of the source."""
    m = source.extent_map(target, incremental=incremental)
    if m.dirty is not None:
        planned = extent.plan_incremental(m.allocation, m.dirty)
    else:
        planned = extent.plan_full(m.allocation)
    return m.size, extent.widen_data(planned, opts.read_alignment, m.size)


def _stream_extents(tar: TarWriter, source: DiskSource, target: str,
                    extents: tuple[extent.Extent, ...], opts: BackupOptions,
                    progress: Progress, member: Callable[[int], str]) -> str:
    """Write the data extents of the source's disk `target` as tar members named
    member(offset of their first byte), small pieces packed (format/packing.py);
    return the sha256 of the data."""
    digest = hashlib.sha256()
    members = packing.pack(extents, packing.Packing.for_block_size(opts.block_size))
    starts = {m[0].start: m for m in members}
    requests = (r for m in members for piece in m
                for r in extent.requests(piece, source.read_request))
    with source.reads(target, requests, PREFETCH_HOLD) as raw, \
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


def _hashed(reads, digest):
    """Pass reads through, hashing them in order (on the reading thread, so the
    thread that feeds borg only feeds it: faster full backups, bench/NOTES.md
    "Full backup (item 1)")."""
    for offset, data in reads:
        digest.update(data)
        yield offset, data

