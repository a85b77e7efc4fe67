"""The boot action: run a backed-up domain straight from the repository, then
make it independent of the repository.

::

    borg-vm boot web01 --to DIR          borg-vm boot --finish web01-restored
    ---------------------------          ------------------------------------
    server: borg-vm mount web01          virsh blockpull of every disk: what the
      (server.py, detached)            overlay lacks is copied from the
    DIR/web01-restored.vda.qcow2           repository, then the backing dropped
      backed by nbd+unix://.../vda.sock  the server stops: the repository is no
    define + start web01-restored          longer needed

The new domain's XML is the archived one as restore writes it (new name and
UUID, no MAC addresses, nothing of the host unless --keep-host-resources),
its disks local qcow2 overlays backed by the server's exports (core/bootxml.py).
The guest's writes go to the overlays; what it reads and has not written is
read from the repository on demand.

If the server dies, the guest's next read of data still in the repository
fails in QEMU, which pauses the guest (error policy 'stop'): nothing it wrote
is lost, the overlays stay consistent. ``--resume`` starts the server again on
the same sockets (what is left of the dead one is killed first) and resumes a
domain paused by the failure once QEMU has reconnected, which QEMU's NBD client
does only when it has a request (see _resume_after_reconnect).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from borg_vm import runtime
from borg_vm.adapters import libvirt as virt
from borg_vm.adapters import nbdkit
from borg_vm.adapters.borg import Repository
from borg_vm.core import bootxml, domxml
from borg_vm.core import vmstate as core_vmstate
from borg_vm.core.bootxml import BootRecord
from borg_vm.errors import (
    DomainExists,
    LibvirtError,
    NotBooted,
    NotRunning,
    PullFailed,
    QemuImgError,
    RestoreTargetExists,
    ServerFailed,
    ServerNotRunning,
)
from borg_vm.progress import Progress
from borg_vm.services import catalog
from borg_vm.services.restore import images, vmstate
from borg_vm.services.restore import run as restore
from borg_vm.services.serving import server
from borg_vm.services.serving.mount import uri

log = logging.getLogger(__name__)

# How long QEMU may take to reconnect to a restarted server: its NBD client tries
# again at each request, the first ones failing while it connects.
RECONNECT_SECONDS = 30
# How often the VM is resumed to let QEMU retry the failed request (each retry
# makes it reconnect) before --resume gives up and says the VM is still paused.
RESUME_ATTEMPTS = 3
# A pull fails when QEMU's connection to the server broke (a restarted server:
# QEMU's next request fails, the one after makes it reconnect); tries per disk.
PULL_ATTEMPTS = 3
PULL_POLL_SECONDS = 0.2
# After a pull job is gone, how long libvirt may take to show the disk without
# its backing before the pull counts as stopped.
PIVOT_SECONDS = 10


@dataclass(frozen=True)
class BootOptions:
    to: str
    name: str | None = None
    checkpoint: str | None = None
    keep_host_resources: bool = False
    allow_unauthenticated: bool = False


@dataclass
class Booted:
    name: str
    domain: str
    checkpoint: str
    disks: dict[str, dict]   # target -> {"image", "uri"}
    server: dict             # {"pid", "log"}
    vm_state: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> file

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def boot(hv: virt.Hypervisor, borg: Repository, domain: str, opts: BootOptions) -> Booted:
    """Define and start a copy of domain as of opts.checkpoint (default: the newest)
    named opts.name (default: DOMAIN-restored), its disks qcow2 overlays in opts.to
    backed by a background server reading the repository. Return what was booted.

    Raise DomainExists, ArchiveNotFound, RestoreTargetExists, FormatError,
    ServerFailed (the server did not start: its log says why) or a libvirt, Borg or
    qemu-img error; on any failure nothing is left behind.
    """
    name = opts.name or f"{domain}-restored"
    _clean_stale(hv)
    if hv.exists(name):
        raise DomainExists(name=name, uri=hv.uri)
    archives, top = catalog.restore_point(borg, domain, opts.checkpoint,
                                          opts.allow_unauthenticated)
    to = os.path.abspath(opts.to)
    overlays = {t: os.path.join(to, f"{name}.{t}.qcow2") for t in sorted(top.summary.disks)}
    existing = [p for p in overlays.values() if os.path.lexists(p)]
    if existing:
        raise RestoreTargetExists(paths=", ".join(existing))
    nvram = os.path.join(to, vmstate.nvram_name(name))
    if core_vmstate.NVRAM in top.summary.state and os.path.lexists(nvram):
        raise RestoreTargetExists(paths=nvram)
    xml, changes, state = restore.restored_xml(
        borg, top, {t: (p, "qcow2") for t, p in overlays.items()}, opts.keep_host_resources,
        name, nvram)
    new_uuid = str(uuid.uuid4())
    run = runtime.boot_dir_path(new_uuid)
    sockets = {t: os.path.join(run, f"{t}.sock") for t in overlays}
    record = BootRecord(borg.absolute_location(), domain, top.name.checkpoint, run)
    xml = bootxml.boot_domain_xml(xml, new_uuid, sockets, record)
    owner = domxml.qemu_owner(xml) or hv.qemu_user(bootxml.domain_type(xml))
    with restore.target_dir(to), _undo_on_failure() as undo, \
            runtime.booting(runtime.boot_dir(run)):
        undo(runtime.remove_boot_dir, run)
        server.set_libvirt_uri(run, hv.uri)
        undo(server.stop, run)
        server.start(run, borg, domain, top.name.checkpoint, sockets, owner)
        try:
            for t, image in overlays.items():
                undo(images.remove_file, image)
                images.create_image(image, "qcow2", top.summary.disks[t].virtual_size,
                                   backing=uri(sockets[t]), backing_format="raw")
            vm_state = vmstate.place(state, xml, new_uuid, nvram, undo)
            dom = hv.define(xml, name)
            undo(dom.remove)
            dom.start()
        except (QemuImgError, LibvirtError) as e:
            if not server.running(run):   # the reason they failed
                raise ServerFailed(name=domain, log=server.path(run, server.LOG),
                                   detail="exited while the domain was being started: "
                                   + server.log_tail(run)) from e
            raise
    restore.warn_changed(changes)
    return Booted(name, domain, top.name.checkpoint,
                  {t: {"image": overlays[t], "uri": uri(sockets[t])} for t in overlays},
                  _server(run), vm_state)


@contextlib.contextmanager
def _undo_on_failure():
    """Yield undo(fn, *args), which registers a step to take back if the block fails;
    steps are taken last first. On success nothing is undone."""
    with contextlib.ExitStack() as stack:
        yield stack.callback
        stack.pop_all()


def _clean_stale(hv: virt.Hypervisor) -> None:
    """Stop the servers, and remove the run directories, of booted domains that are
    gone: a boot killed before its domain was defined, or a booted domain undefined
    before --finish. Their servers would hold the repository's lock for ever."""
    for run, domain_uuid in runtime.boot_dirs():
        if server.libvirt_uri(run) != hv.uri or hv.has_uuid(domain_uuid):
            continue   # another libvirt's (e.g. qemu:///session), or still there
        log.info("stopping the server in %s: no domain has UUID %s any more", run,
                    domain_uuid)
        server.stop(run)
        runtime.remove_boot_dir(run)


def _server(run: str) -> dict:
    return {"pid": server.pid(run), "log": server.path(run, server.LOG)}


# --- --finish -------------------------------------------------------------------


@dataclass
class Finished:
    name: str
    disks: dict[str, dict]      # target -> {"image"}
    pulled: int                 # bytes the pull jobs went through
    duration: float
    nothing_to_do: bool = False   # it read nothing from a repository and had no record

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "duration": round(self.duration, 3)}


def finish(hv: virt.Hypervisor, name: str, progress: bool) -> Finished:
    """Pull what the booted domain name still reads from the repository into its
    overlays (virsh blockpull, disk by disk), then stop its server and drop its boot
    record: from then on the domain needs nothing but its images. Return what was
    done. A finish interrupted or failed can be run again: pulled disks stay pulled;
    and so can one that completed (a domain without a boot record that reads nothing
    from a repository has nothing to do: nothing_to_do).

    Raise NotBooted (no record, yet a disk reads from a repository), NotRunning (a
    shut-off domain cannot pull), ServerNotRunning, PullFailed or a libvirt error.
    """
    started = time.monotonic()
    _clean_stale(hv)
    dom = hv.domain(name)
    backings = bootxml.nbd_backings(dom.xml())
    images = _images(dom)
    if not backings and bootxml.boot_record(dom.xml(inactive=True)) is None:
        return Finished(name, {t: {"image": p} for t, p in images.items()}, 0,
                        time.monotonic() - started, nothing_to_do=True)
    record = _record(dom, name)
    pulled = 0
    if backings:
        if not dom.is_active():
            raise NotRunning(name=name, state=dom.state(), detail=(
                f"start it ('borg-vm boot --resume {name}') and run --finish again; its "
                "disks are pulled while it runs"))
        _check_server(record.run, name)
        pulled = _pull_all(dom, name, backings, progress)
        if dom.paused_by_io_error():   # a read from the repository failed earlier
            log.info("%s: resuming it: what it failed to read is local now", name)
            dom.resume()
    server.stop(record.run)
    dom.remove_metadata(bootxml.BOOT_NS)
    runtime.remove_boot_dir(record.run)
    return Finished(name, {t: {"image": p} for t, p in images.items()}, pulled,
                    time.monotonic() - started)


def _record(dom: virt.Domain, name: str) -> BootRecord:
    record = bootxml.boot_record(dom.xml(inactive=True))
    if record is None:
        raise NotBooted(name=name)
    return record


def _images(dom: virt.Domain) -> dict[str, str]:
    return {d.target: d.source for d in domxml.parse_disks(dom.xml())
            if d.device == "disk" and d.source}


def _check_server(run: str, name: str) -> None:
    if not server.running(run):
        raise ServerNotRunning(name=name, log=server.path(run, server.LOG),
                               detail="it exited or was killed; its log ends: "
                               + server.log_tail(run, 1))


def _pull_all(dom: virt.Domain, name: str, backings: dict[str, str], wanted: bool) -> int:
    """Pull every disk of backings, one after the other; return the bytes pulled."""
    total = sum(dom.disk_capacity(t) for t in backings)
    progress = Progress.for_terminal(f"pull {name}", total, wanted)
    try:
        for target, socket in sorted(backings.items()):
            _pull(dom, name, target, socket, progress)
    finally:
        progress.close()
    return progress.done


def _pull(dom: virt.Domain, name: str, target: str, socket: str, progress: Progress) -> None:
    """Pull one disk; try again (up to PULL_ATTEMPTS) when QEMU's connection to the
    server broke, once QEMU has reconnected. Raise PullFailed."""
    base = progress.done
    for attempt in range(1, PULL_ATTEMPTS + 1):
        dom.block_pull(target)
        try:
            while (job := dom.block_job(target)) is not None:
                progress.advance(max(0, base + job[0] - progress.done))
                time.sleep(PULL_POLL_SECONDS)
        except BaseException:
            dom.abort_block_job(target)
            raise
        if _pivoted(dom, target):
            progress.advance(max(0, base + dom.disk_capacity(target) - progress.done))
            return
        log.info("%s: pulling %s stopped (attempt %d of %d): QEMU reconnects to the server",
                 name, target, attempt, PULL_ATTEMPTS)
        # A connection QEMU kept to a server since restarted fails the first
        # request, which marks it broken; the next starts a new one.
        if attempt > 1:
            server.wait_connected([socket], RECONNECT_SECONDS)
    raise PullFailed(target=target, name=name,
                     detail=f"{PULL_ATTEMPTS} attempts failed; the server last said: "
                     + server.log_tail(os.path.dirname(socket)))


def _pivoted(dom: virt.Domain, target: str) -> bool:
    """Given a disk whose pull job is gone, return True once the live XML shows it
    without its NBD backing; False if it still has it after PIVOT_SECONDS. libvirt
    drops QEMU's finished job at once but updates the disk's chain when it has
    handled QEMU's completion event, which can come later on a busy host."""
    deadline = time.monotonic() + PIVOT_SECONDS
    while target in bootxml.nbd_backings(dom.xml()):
        if time.monotonic() > deadline:
            return False
        time.sleep(PULL_POLL_SECONDS)
    return True


# --- --resume -------------------------------------------------------------------


@dataclass
class Resumed:
    name: str
    server_started: bool
    server: dict
    state: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def resume(hv: virt.Hypervisor, borg_for: Callable[[str], Repository], name: str) -> Resumed:
    """Start the server of the booted domain name again if it is not running (on the
    same sockets, with borg_for(the recorded repository)), then start the domain if it
    is shut off, or resume it if QEMU paused it on a failed read (once QEMU has
    reconnected to the disks that failed). Return what was done and the domain's state.

    Raise NotBooted, ServerFailed or a libvirt or Borg error.
    """
    _clean_stale(hv)
    dom = hv.domain(name)
    record = _record(dom, name)
    backings = bootxml.nbd_backings(dom.xml())
    started = False
    if backings and not server.running(record.run):
        owner = domxml.qemu_owner(dom.xml()) or hv.qemu_user(bootxml.domain_type(dom.xml()))
        with runtime.booting(runtime.boot_dir(record.run)):   # gone after a reboot
            server.set_libvirt_uri(record.run, hv.uri)
            server.start(record.run, borg_for(record.repository), record.domain,
                             record.checkpoint, backings, owner)
        started = True
    if not dom.is_active():
        dom.start()
    elif dom.paused_by_io_error():
        _resume_after_reconnect(dom, backings)
    stale = [t for t, s in sorted(backings.items()) if not nbdkit.connections(s)]
    if stale and dom.is_active():
        log.warning("%s: QEMU has not reconnected to %s yet: its next read from the "
                    "repository there fails and pauses the domain; then run 'borg-vm boot "
                    "--resume %s' again", name, ", ".join(stale), name)
    return Resumed(name, started, _server(record.run), dom.state())


def _resume_after_reconnect(dom: virt.Domain, backings: dict[str, str]) -> None:
    """Resume a domain QEMU paused on a failed disk request, once QEMU has reconnected
    to the servers of the disks that failed.

    QEMU reconnects only when it has a request for the disk: resuming the domain
    retries the failed request, which starts the connection and, not yet connected,
    fails again (paused again); once connected, resuming retries it for good.
    """
    for _attempt in range(RESUME_ATTEMPTS):
        if not dom.paused_by_io_error():
            return
        failed = [backings[t] for t in dom.disk_errors() if t in backings] or \
            list(backings.values())
        connected = server.wait_connected(failed, 0)
        log.debug("resuming %s (QEMU %s connected to %s)", dom.name,
                  "is" if connected else "is not", ", ".join(failed))
        dom.resume()
        if connected:
            return
        if not server.wait_connected(failed, RECONNECT_SECONDS):
            log.debug("QEMU did not connect within %d s", RECONNECT_SECONDS)
    if dom.paused_by_io_error():
        log.warning("%s is still paused by an I/O error: QEMU did not reconnect "
                    "(see 'virsh domblkerror %s')", dom.name, dom.name)
