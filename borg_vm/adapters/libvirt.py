"""libvirt: the only module that imports the libvirt binding.

Domains, their checkpoints, pull-mode backup jobs and the guest agent's
filesystem freeze. libvirt errors become borg-vm errors here, with the domain
and the action in the message.

A guest frozen by a borg-vm that dies before thawing it would stay frozen, its
writes blocked, until someone thaws it by hand: so every freeze has a thaw
guard, this module run as a process of its own (``python -m
borg_vm.adapters.libvirt URI UUID TIMEOUT``, in its own session) that thaws
the guest when borg-vm's pipe to it closes without a word (borg-vm was killed)
or TIMEOUT seconds after the freeze began (borg-vm hangs)::

    borg-vm                                 guard
    start guard  ------------------------>  connect to libvirt
                 <-------------- "ready"
    "freezing"   ------------------------>  start the TIMEOUT clock
    fsFreeze                                |
    backupBegin                             |  EOF or TIMEOUT: fsThaw, exit
    fsThaw                                  |
    "thawed"     ------------------------>  exit, touching nothing

The connection outlives a restart of the libvirt daemon (an upgrade, a
crash): libvirt keeps a running backup job across it, and a run that could
not reach the daemon again would leave the job running and its checkpoints
behind. A call that finds the connection lost connects again (waiting up to
RECONNECT_TIMEOUT for the daemon to answer) and is made once more.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import libvirt

from borg_vm.adapters import subproc
from borg_vm.core import bootxml
from borg_vm.errors import (
    CheckpointInconsistent,
    DomainExists,
    DomainNotFound,
    LibvirtConnectError,
    LibvirtError,
    QuiesceFailed,
)

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
RECONNECT_TIMEOUT = 60   # seconds a restarting daemon has to answer again
RECONNECT_POLL = 0.5
_INCONSISTENT_HINTS = ("inconsistent", "missing or broken bitmap")
PAUSED_IO_ERROR = "paused (I/O error)"
SHUT_OFF = "shut off"
_STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_SHUTOFF: SHUT_OFF,
           libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down", libvirt.VIR_DOMAIN_CRASHED: "crashed",
           libvirt.VIR_DOMAIN_BLOCKED: "running", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended"}


def _silence_default_handler() -> None:
    # libvirt prints every error to stderr unless a handler is set; ours are
    # raised as exceptions with their message, so printing them too is noise.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@contextlib.contextmanager
def connect(uri: str = DEFAULT_URI) -> Iterator[Hypervisor]:
    """Yield a connection to libvirt at uri; raise LibvirtConnectError if it fails."""
    _silence_default_handler()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise LibvirtConnectError(uri=uri, detail=e.get_error_message()) from e
    hv = Hypervisor(conn, uri)
    try:
        yield hv
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            hv.conn.close()


class Hypervisor:
    def __init__(self, conn: libvirt.virConnect, uri: str):
        self.conn = conn
        self.uri = uri

    def reconnected(self) -> bool:
        """If the connection was lost, open a new one and return True (raise
        LibvirtConnectError if the daemon does not answer within RECONNECT_TIMEOUT);
        return False if the connection works."""
        try:
            self.conn.getLibVersion()   # isAlive() may not have noticed yet
            return False
        except libvirt.libvirtError:
            pass
        log.info("lost the connection to libvirt at %s; connecting again", self.uri)
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while True:
            try:
                self.conn = libvirt.open(self.uri)
                return True
            except libvirt.libvirtError as e:
                if time.monotonic() >= deadline:
                    raise LibvirtConnectError(uri=self.uri, detail=e.get_error_message()) from e
            time.sleep(RECONNECT_POLL)

    def domains(self) -> dict[str, str]:
        """Return every domain libvirt knows, running or shut off: name -> UUID, by name."""
        try:
            return dict(sorted((d.name(), d.UUIDString()) for d in self.conn.listAllDomains(0)))
        except libvirt.libvirtError as e:
            raise LibvirtError(action="list domains", name="*",
                               detail=e.get_error_message()) from e

    def domain(self, name: str) -> Domain:
        """Return the named domain; raise DomainNotFound if there is none."""
        try:
            return Domain(_Reconnecting(self, self.conn.lookupByName(name)))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainNotFound(name=name, uri=self.uri) from e
            raise LibvirtError(action="look up the domain", name=name,
                               detail=e.get_error_message()) from e

    def exists(self, name: str) -> bool:
        """Return True if libvirt knows a domain of that name, running or not."""
        try:
            self.domain(name)
        except DomainNotFound:
            return False
        return True

    def has_uuid(self, uuid: str) -> bool:
        """Return True if libvirt knows a domain with that UUID, running or not."""
        try:
            self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise LibvirtError(action="look up the domain", name=uuid,
                               detail=e.get_error_message()) from e
        return True

    def define(self, xml: str, name: str) -> Domain:
        """Define a persistent domain named name from xml; raise DomainExists if one of
        that name (or UUID) exists, LibvirtError if libvirt refuses the XML."""
        if self.exists(name):
            raise DomainExists(name=name, uri=self.uri)
        try:
            return Domain(_Reconnecting(self, self.conn.defineXML(xml)))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED and self.exists(name):
                raise DomainExists(name=name, uri=self.uri) from e
            raise LibvirtError(action="define the domain", name=name,
                               detail=e.get_error_message()) from e

    def qemu_user(self, virt_type: str) -> tuple[int, int] | None:
        """Return the (uid, gid) QEMU runs domains of virt_type (kvm, qemu) as, unless
        their XML says otherwise; None if libvirt does not say."""
        try:
            caps = self.conn.getCapabilities()
        except libvirt.libvirtError as e:
            raise LibvirtError(action="read the host capabilities", name="*",
                               detail=e.get_error_message()) from e
        return bootxml.dac_base_label(caps, virt_type)


class _Reconnecting:
    """A virDomain whose calls survive a lost connection: the call connects again
    (Hypervisor.reconnected), looks the domain up by its UUID and is made again."""

    def __init__(self, hv: Hypervisor, dom: libvirt.virDomain):
        self._hv = hv
        self._dom = dom
        self._uuid = dom.UUIDString()

    def __getattr__(self, method: str):
        def call(*args):
            try:
                return getattr(self._dom, method)(*args)
            except libvirt.libvirtError:
                if not self._hv.reconnected():
                    raise
            self._dom = self._hv.conn.lookupByUUIDString(self._uuid)
            return getattr(self._dom, method)(*args)
        return call


@dataclass
class Freeze:
    frozen: int                 # filesystems the guest agent froze
    thawed: int | None = None   # of them, those the thaw found still frozen
    ms: float | None = None     # from the freeze call to the thaw's return


class Domain:
    def __init__(self, dom: libvirt.virDomain | _Reconnecting):
        self._dom = dom
        self.name = dom.name()
        self.uuid = dom.UUIDString()

    def _fail(self, action: str, e: libvirt.libvirtError) -> LibvirtError:
        return LibvirtError(action=action, name=self.name, detail=e.get_error_message())

    def is_active(self) -> bool:
        try:
            return bool(self._dom.isActive())
        except libvirt.libvirtError as e:
            raise self._fail("read the domain's state", e) from e

    def start(self) -> None:
        try:
            self._dom.create()
        except libvirt.libvirtError as e:
            raise self._fail("start the domain", e) from e

    def remove(self) -> None:
        """Stop the domain (if it runs) and undefine it: the undo of a domain borg-vm
        defined itself, never used on another."""
        try:
            if self._dom.isActive():
                self._dom.destroy()
            self._dom.undefine()
        except libvirt.libvirtError as e:
            raise self._fail("remove the domain", e) from e

    def paused_by_io_error(self) -> bool:
        """Return True if QEMU paused the domain because a disk request failed."""
        return self.state() == PAUSED_IO_ERROR

    def state(self) -> str:
        """Return the domain's state in a word or two: running, paused (I/O error),
        paused, shut off, ..."""
        try:
            state, reason = self._dom.state()
        except libvirt.libvirtError as e:
            raise self._fail("read the domain's state", e) from e
        if state == libvirt.VIR_DOMAIN_PAUSED:
            return PAUSED_IO_ERROR if reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR else "paused"
        return _STATES.get(state, "in an unknown state")

    def disk_errors(self) -> list[str]:
        """Return the targets of the disks whose last request failed (QEMU's I/O status)."""
        try:
            return sorted(self._dom.diskErrors())
        except libvirt.libvirtError as e:
            raise self._fail("read the disks' errors", e) from e

    def resume(self) -> None:
        try:
            self._dom.resume()
        except libvirt.libvirtError as e:
            raise self._fail("resume the domain", e) from e

    def block_pull(self, target: str) -> None:
        """Start copying into the disk's image what its backing chain holds, then
        drop the chain (virsh blockpull); block_job follows it."""
        try:
            self._dom.blockPull(target, 0, 0)
        except libvirt.libvirtError as e:
            raise self._fail(f"start pulling disk {target}", e) from e

    def block_job(self, target: str) -> tuple[int, int] | None:
        """Return (bytes done, bytes to do) of the disk's block job, None if it has none."""
        try:
            info = self._dom.blockJobInfo(target, 0)
        except libvirt.libvirtError as e:
            raise self._fail(f"follow the block job of disk {target}", e) from e
        return (info["cur"], info["end"]) if info else None

    def abort_block_job(self, target: str) -> None:
        """Cancel the disk's block job (what it copied stays); a job already gone is fine."""
        try:
            self._dom.blockJobAbort(target, 0)
        except libvirt.libvirtError as e:
            if self.block_job(target) is not None:
                raise self._fail(f"cancel the block job of disk {target}", e) from e

    def remove_metadata(self, uri: str) -> None:
        """Remove borg-vm's element of namespace uri from <metadata>, in the running
        domain and its persistent definition."""
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (
            libvirt.VIR_DOMAIN_AFFECT_LIVE if self._dom.isActive() else 0)
        try:
            self._dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, uri, flags)
        except libvirt.libvirtError as e:
            raise self._fail("remove borg-vm's metadata", e) from e

    def xml(self, inactive: bool = False) -> str:
        """Return the live domain XML (or the persistent definition if inactive)."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        try:
            return self._dom.XMLDesc(flags)
        except libvirt.libvirtError as e:
            raise self._fail("read the domain XML", e) from e

    def disk_capacity(self, target: str) -> int:
        """Return the virtual size in bytes of the disk at target."""
        try:
            return self._dom.blockInfo(target, 0)[0]
        except libvirt.libvirtError as e:
            raise self._fail(f"read the size of disk {target}", e) from e

    def checkpoints(self) -> list[str]:
        """Return the names of all checkpoints of the domain."""
        try:
            return [c.getName() for c in self._dom.listAllCheckpoints(0)]
        except libvirt.libvirtError as e:
            raise self._fail("list checkpoints", e) from e

    def checkpoint_xml(self, name: str) -> str:
        try:
            return self._dom.checkpointLookupByName(name, 0).getXMLDesc(0)
        except libvirt.libvirtError as e:
            raise self._fail(f"read checkpoint {name}", e) from e

    def delete_checkpoint(self, name: str, broken: bool = False) -> None:
        """Delete one checkpoint and its bitmaps; a checkpoint already gone is fine.

        With broken (its bitmaps are known to be missing or inconsistent), fall
        back to deleting libvirt's metadata only when the bitmaps cannot be
        removed, since there is nothing left worth keeping.
        """
        try:
            self._dom.checkpointLookupByName(name, 0).delete(0)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                return
            if not broken:
                raise self._fail(f"delete checkpoint {name}", e) from e
            if self.is_active():
                log.info("%s: removing only the metadata of broken checkpoint %s (%s)",
                            self.name, name, e.get_error_message())
            else:   # libvirt deletes no checkpoint of a shut-off domain: the expected path
                log.info("%s is shut off: removing libvirt's record of checkpoint %s",
                         self.name, name)
                log.debug("%s: libvirt: %s", self.name, e.get_error_message())
            try:
                self._dom.checkpointLookupByName(name, 0).delete(
                    libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
            except libvirt.libvirtError as e2:
                raise self._fail(f"delete checkpoint {name}", e2) from e2
        log.info("deleted checkpoint %s of %s", name, self.name)

    def snapshot_xmls(self) -> list[str]:
        """Return the XML of every snapshot libvirt has metadata for."""
        try:
            return [snap.getXMLDesc(0) for snap in self._dom.listAllSnapshots(0)]
        except libvirt.libvirtError as e:
            raise self._fail("list snapshots", e) from e

    def redefine_checkpoint(self, xml: str, validate: bool = False) -> None:
        """Record a checkpoint whose bitmaps the images already hold (libvirt's
        metadata only: how a shut-off domain gets one). With validate (a running
        domain only), libvirt first checks that QEMU has its bitmaps, enabled and
        persistent; raise LibvirtError if not."""
        flags = libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
        if validate:
            flags |= libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
        try:
            self._dom.checkpointCreateXML(xml, flags)
        except libvirt.libvirtError as e:
            raise self._fail("record a checkpoint", e) from e

    def forget_checkpoint(self, name: str) -> None:
        """Delete libvirt's metadata of a checkpoint, leaving any bitmaps (libvirt
        cannot delete bitmaps of a shut-off domain); a checkpoint already gone is fine."""
        try:
            self._dom.checkpointLookupByName(name, 0).delete(
                libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise self._fail(f"delete checkpoint {name}", e) from e

    def backup_job_xml(self) -> str | None:
        """Return the XML of the domain's running backup job, or None if there is none."""
        try:
            return self._dom.backupGetXMLDesc(0)
        except libvirt.libvirtError:
            return None

    def abort_job(self) -> None:
        """End the domain's backup job (how a pull-mode backup is finished); idempotent."""
        try:
            self._dom.abortJob()
        except libvirt.libvirtError as e:
            if self.backup_job_xml() is not None:
                raise self._fail("end the backup job", e) from e

    @contextlib.contextmanager
    def frozen(self, timeout: float) -> Iterator[Freeze]:
        """Freeze the guest's filesystems through its agent for the body, with a
        thaw guard that thaws them after `timeout` seconds or if this process
        dies; yield a Freeze, which says after the body how many filesystems the
        thaw found still frozen. Raise QuiesceFailed if the agent cannot freeze
        (then nothing is left frozen) or thaw them."""
        with _thaw_guard(self._dom.connect().getURI(), self.uuid, self.name, timeout):
            started = time.monotonic()
            freeze = Freeze(self._agent("freeze", self._dom.fsFreeze))
            log.debug("%s: froze %d filesystem(s)", self.name, freeze.frozen)
            try:
                yield freeze
            finally:
                freeze.thawed = self._agent("thaw", self._dom.fsThaw)
                freeze.ms = (time.monotonic() - started) * 1000
                log.debug("%s: thawed %d filesystem(s)", self.name, freeze.thawed)

    def _agent(self, what: str, call: Callable[[None, int], int]) -> int:
        """Call fsFreeze or fsThaw (all filesystems); return its count."""
        try:
            return call(None, 0)
        except libvirt.libvirtError as e:
            raise QuiesceFailed(name=self.name,
                                detail=f"{what} failed: {e.get_error_message()}") from e

    @contextlib.contextmanager
    def pull_backup(self, backup_xml: str, checkpoint_xml: str,
                    parent: str | None) -> Iterator[None]:
        """Start a pull-mode backup job creating a checkpoint; end the job on exit.

        Raise CheckpointInconsistent if the parent checkpoint's bitmaps are
        unusable (QEMU was killed), LibvirtError for other failures.
        """
        try:
            self._dom.backupBegin(backup_xml, checkpoint_xml, 0)
        except libvirt.libvirtError as e:
            text = e.get_error_message() or ""
            if parent and (e.get_error_code() == libvirt.VIR_ERR_CHECKPOINT_INCONSISTENT
                           or any(h in text for h in _INCONSISTENT_HINTS)):
                raise CheckpointInconsistent(checkpoint=parent, name=self.name,
                                             detail=text) from e
            raise self._fail("start the backup job", e) from e
        try:
            yield
        finally:
            self.abort_job()


GUARD_READY = b"ready\n"
GUARD_FREEZING = b"freezing\n"
GUARD_DONE = b"thawed\n"


@contextlib.contextmanager
def _thaw_guard(uri: str, uuid: str, name: str, timeout: float) -> Iterator[None]:
    """Run a thaw guard (see the module docstring) for the domain while the body
    runs: its clock starts now; tell it all is thawed when the body returns
    normally. Raise QuiesceFailed if the guard cannot start."""
    argv = [sys.executable, "-m", __name__, uri, uuid, str(timeout)]
    with subproc.stream(argv, stdin=True, stdout=True) as guard:
        if guard.stdout.readline() != GUARD_READY:
            guard.wait()
            raise QuiesceFailed(name=name, detail="its thaw guard did not start: "
                                + "".join(guard.stderr_lines()[-3:]).strip())
        guard.stdin.write(GUARD_FREEZING)
        yield
        with contextlib.suppress(BrokenPipeError):  # it thawed at its timeout and left
            guard.stdin.write(GUARD_DONE)
        try:
            guard.finish()
        except subproc.CommandFailed as e:
            raise QuiesceFailed(name=name, detail=f"its thaw guard failed: {e}") from e


def _guard(uri: str, uuid: str, timeout: float) -> None:
    """The thaw guard's life: connect, say ready, then thaw the domain's guest
    unless told within `timeout` seconds of "freezing" that it is thawed.
    SIGTERM and SIGHUP (a service stopped, a session closed) thaw it too."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    _silence_default_handler()
    dom = libvirt.open(uri).lookupByUUIDString(uuid)
    sys.stdout.buffer.write(GUARD_READY)
    sys.stdout.flush()
    # Unbuffered: a buffer could swallow "thawed" behind "freezing", unseen by select.
    stdin, told = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False), b""
    try:
        if stdin.readline() == GUARD_FREEZING and select.select([stdin], [], [], timeout)[0]:
            told = stdin.readline()
    finally:
        if told != GUARD_DONE:
            dom.fsThaw(None, 0)


if __name__ == "__main__":
    _guard(sys.argv[1], sys.argv[2], float(sys.argv[3]))
