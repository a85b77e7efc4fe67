"""libvirt: the only module that imports the libvirt binding.

Domains, their checkpoints and pull-mode backup jobs. libvirt errors become
borg-vm errors here, with the domain and the action in the message.

The connection outlives a restart of the libvirt daemon (an upgrade, a
crash): libvirt keeps a running backup job across it, and a run that could
not reach the daemon again would leave the job running and its checkpoints
behind. A call that finds the connection lost connects again (waiting up to
RECONNECT_TIMEOUT for the daemon to answer) and is made once more.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

import libvirt

from ..errors import (CheckpointInconsistent, DomainNotFound, LibvirtConnectError,
                     LibvirtError)

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"
RECONNECT_TIMEOUT = 60   # seconds a restarting daemon has to answer again
RECONNECT_POLL = 0.5
_INCONSISTENT_HINTS = ("inconsistent", "missing or broken bitmap")


def _silence_default_handler() -> None:
    # libvirt prints every error to stderr unless a handler is set; ours are
    # raised as exceptions with their message, so printing them too is noise.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@contextlib.contextmanager
def connect(uri: str = DEFAULT_URI) -> Iterator["Hypervisor"]:
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
    def __init__(self, conn: "libvirt.virConnect", uri: str):
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
        log.warning("lost the connection to libvirt at %s; connecting again", self.uri)
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

    def domain_names(self) -> list[str]:
        """Return the names of every domain libvirt knows, running or shut off."""
        try:
            return sorted(d.name() for d in self.conn.listAllDomains(0))
        except libvirt.libvirtError as e:
            raise LibvirtError(action="list domains", name="*",
                               detail=e.get_error_message()) from e

    def domain(self, name: str) -> "Domain":
        """Return the named domain; raise DomainNotFound if there is none."""
        try:
            return Domain(_Reconnecting(self, self.conn.lookupByName(name)))
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainNotFound(name=name, uri=self.uri) from e
            raise LibvirtError(action="look up the domain", name=name,
                               detail=e.get_error_message()) from e


class _Reconnecting:
    """A virDomain whose calls survive a lost connection: the call connects again
    (Hypervisor.reconnected), looks the domain up by its UUID and is made again."""

    def __init__(self, hv: Hypervisor, dom: "libvirt.virDomain"):
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


class Domain:
    def __init__(self, dom: "libvirt.virDomain | _Reconnecting"):
        self._dom = dom
        self.name = dom.name()
        self.uuid = dom.UUIDString()

    def _fail(self, action: str, e: "libvirt.libvirtError") -> LibvirtError:
        return LibvirtError(action=action, name=self.name, detail=e.get_error_message())

    def is_active(self) -> bool:
        try:
            return bool(self._dom.isActive())
        except libvirt.libvirtError as e:
            raise self._fail("read the domain's state", e) from e

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
            log.warning("%s: removing only the metadata of broken checkpoint %s (%s)",
                        self.name, name, e.get_error_message())
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
