"""Reading a domain's state beyond its disks (core/vmstate.py: its UEFI variable
store, its emulated TPM's state) at the disks' point in time: for a running
domain while its backup job starts (with --quiesce, while the guest is frozen),
for a shut-off one as the run opens its images; on the hypervisor's machine
(services/hosts.py), which may be another one than this. Small, so read whole every run
(Borg deduplicates what did not change).
"""

from __future__ import annotations

import logging

from borg_vm.core import vmstate
from borg_vm.errors import StateUnreadable
from borg_vm.format import names as fmt
from borg_vm.services.hosts import LOCAL, Host, Unreadable

log = logging.getLogger(__name__)


def read(name: str, domain_xml: str, uuid: str, host: Host = LOCAL) -> dict[str, bytes]:
    """Return {state name: contents} of the state domain name (its XML and UUID)
    has, read on the hypervisor's host. State it names but that does not exist yet
    (a domain that never ran) is left out, and said. Raise StateUnreadable if a file
    cannot be read, is not a regular file or is bigger than the format holds."""
    state = {}
    for n, path in vmstate.state_paths(domain_xml, uuid).items():
        raw = _read(name, n, path, host)
        if raw is None:
            log.info("%s: no %s at %s yet (the domain has not run since it was defined): "
                     "none backed up", name, vmstate.LABELS[n], path)
        else:
            state[n] = raw
    return state


def _read(name: str, n: str, path: str, host: Host) -> bytes | None:
    """Return the contents of state file path (None if there is none yet)."""
    cap = fmt.STATE[n]
    try:
        raw = host.read_file(path, cap + 1)
    except Unreadable as e:
        raise _unreadable(name, n, path, str(e)) from e
    if raw is not None and len(raw) > cap:
        raise _unreadable(name, n, path, f"bigger than the {cap} bytes borg-vm stores")
    return raw


def _unreadable(name: str, n: str, path: str, detail: str) -> StateUnreadable:
    return StateUnreadable(what=vmstate.LABELS[n], name=name, path=path, detail=detail)
