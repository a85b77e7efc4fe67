"""Backing up a running domain: a libvirt pull-mode backup job that exports the
disks as of its start over NBD and creates the run's checkpoint.

    begin job (checkpoint C; --quiesce freezes the guest for this step only),
    read the domain's UEFI variables and TPM state (services/backup/vmstate.py)
    -> the run reads the job's NBD exports (on a remote hypervisor through a
    socket forwarded over ssh: services/hosts.py) -> end the job -> drop older
    borg-vm checkpoints; on failure: abort the job, delete C
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
from collections.abc import Iterator

from borg_vm.adapters.disk_sources import PullBackupSource
from borg_vm.adapters.libvirt import Domain
from borg_vm.core import domxml, plan
from borg_vm.errors import DomainStopped, LibvirtError, NbdError, QemuImgError, SshError
from borg_vm.format import names as fmt
from borg_vm.format.names import Level
from borg_vm.services import catalog_cache
from borg_vm.services.backup import offline, quiesce, vmstate
from borg_vm.services.backup.context import BackupRun, Session
from borg_vm.services.hosts import Host

log = logging.getLogger(__name__)


@contextlib.contextmanager
def session(run: BackupRun, p: plan.Plan, checkpoint: str) -> Iterator[Session]:
    """Begin a libvirt pull-mode backup job that creates `checkpoint`; yield its Session.

    On normal exit (the archive is committed) end the job and delete the
    domain's older borg-vm checkpoints; on an exception abort the job and
    delete the new checkpoint.
    """
    dom, opts, host = run.dom, run.opts, run.host
    with host.run_dir(dom.uuid, run.live.qemu_owner) as rundir:
        socket = posixpath.join(rundir, "nbd.sock")
        export = {d.target: (posixpath.join(opts.scratch_dir or rundir,
                                            f"{d.target}.{checkpoint}.scratch"),
                             "incremental" if p.disk_levels[d.target] == Level.INC else "full")
                  for d in run.disks}
        targets = run.live.disk_targets
        job = domxml.backup_xml(socket, {t: export.get(t) for t in targets},
                                p.parent_checkpoint if p.level == Level.INC else None)
        cp = domxml.checkpoint_xml(checkpoint, f"borg-vm backup of {dom.name}",
                                   {t: t in run.by_target and run.by_target[t].incremental_capable
                                    for t in targets})
        begun = False  # libvirt creates nothing when backupBegin fails
        try:
            with contextlib.ExitStack() as job_running:
                # --quiesce: the guest is frozen while the job starts, no longer
                with quiesce.frozen(dom, opts.quiesce, run.live.agent_state,
                                    opts.freeze_timeout) as q:
                    job_running.enter_context(dom.pull_backup(job, cp, p.parent_checkpoint))
                    begun = True
                    state = vmstate.read(dom.name, run.live.xml, dom.uuid, host)
                reached = job_running.enter_context(host.reach(socket))
                yield Session(PullBackupSource(reached), lambda: dom.checkpoint_xml(checkpoint),
                              q.ms, state)
        except BaseException as e:
            if begun:
                _undo_checkpoint(dom, checkpoint, run.disks, host, e,
                                 guessed=run.confirm is not None)
                if isinstance(e, NbdError) and _stopped(dom):
                    raise DomainStopped(name=dom.name, detail=e.message) from e
            raise
        finally:
            host.remove_files([path for path, _mode in export.values()])
    for old in sorted(c for c in dom.checkpoints()
                      if fmt.is_own_checkpoint(c) and c != checkpoint):
        # Superseded: if its bitmaps are gone (QEMU was killed since a failed run
        # made it), its metadata goes alone.
        dom.delete_checkpoint(old, broken=True)


def end_stale_job(dom: Domain, host: Host) -> None:
    """Abort a backup job a crashed borg-vm run left behind (its sockets in the
    runtime directory on the hypervisor's host); refuse to touch anyone else's."""
    job = dom.backup_job_xml()
    if job is None:
        return
    sockets = domxml.backup_sockets(job)
    if sockets and all(host.is_ours(s) for s in sockets):
        log.info("%s: aborting a backup job left by a crashed borg-vm run", dom.name)
        dom.abort_job()
        return
    raise LibvirtError(action="start a backup", name=dom.name,
                       detail="another backup job is running on this domain")


def _undo_checkpoint(dom: Domain, checkpoint: str, disks: tuple[plan.Disk, ...], host: Host,
                     why: BaseException, *, guessed: bool) -> None:
    """After a failure (why): end the job and delete the new checkpoint (through
    libvirt, or if the domain stopped meanwhile, its metadata and any bitmap in the
    images). Best effort, logged, so the original error is what the user sees. A run
    the repository's listing did not confirm is no failure: it runs again. Nor,
    yet, is the failure of a run planned from what this host saw (guessed): what
    failed may be the guess (Borg 2's image built on an archive the repository no
    longer holds), and the listing decides: if it confirms the guess, the error
    is the run's; if not, the run runs again."""
    if isinstance(why, catalog_cache.Unconfirmed):
        log.info("%s: undoing the run planned from what this host saw; removing "
                 "checkpoint %s", dom.name, checkpoint)
    elif guessed:
        log.info("%s: the run planned from what this host saw failed; removing "
                 "checkpoint %s", dom.name, checkpoint)
    else:
        log.warning("%s: backup failed; removing checkpoint %s", dom.name, checkpoint)
    try:
        dom.abort_job()
        offline.drop_checkpoint(dom, checkpoint,
                                [d.source for d in disks if d.incremental_capable], host)
    except (LibvirtError, QemuImgError, SshError) as e:
        log.error("%s: could not remove checkpoint %s: %s", dom.name, checkpoint, e.message)


def _stopped(dom: Domain) -> bool:
    """Return True if the domain is known to have stopped (its QEMU went away)."""
    try:
        return not dom.is_active()
    except LibvirtError:
        return False
