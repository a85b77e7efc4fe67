"""Reading a domain's state beyond its disks (core/vmstate.py: its UEFI variable
store, its emulated TPM's state) at the disks' point in time: for a running
domain while its backup job starts (with --quiesce, while the guest is frozen),
for a shut-off one as the run opens its images. Small, so read whole every run
(Borg deduplicates what did not change).
"""

from __future__ import annotations

import logging
import os
import stat

from borg_vm.core import vmstate
from borg_vm.errors import StateUnreadable
from borg_vm.format import names as fmt

log = logging.getLogger(__name__)


def read(name: str, domain_xml: str, uuid: str) -> dict[str, bytes]:
    """Return {state name: contents} of the state domain name (its XML and UUID)
    has. State it names but that does not exist yet (a domain that never ran) is
    left out, and said. Raise StateUnreadable if a file cannot be read, is not a
    regular file or is bigger than the format holds."""
    state = {}
    for n, path in vmstate.state_paths(domain_xml, uuid).items():
        raw = _read(name, n, path)
        if raw is None:
            log.info("%s: no %s at %s yet (the domain has not run since it was defined): "
                     "none backed up", name, vmstate.LABELS[n], path)
        else:
            state[n] = raw
    return state


def _read(name: str, n: str, path: str) -> bytes | None:
    """Return the contents of state file path (None if there is none yet)."""
    cap = fmt.STATE[n]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _unreadable(name, n, path, e.strerror or str(e)) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _unreadable(name, n, path, "not a regular file")
    with open(fd, "rb") as f:
        try:
            raw = f.read(cap + 1)
        except OSError as e:
            raise _unreadable(name, n, path, e.strerror or str(e)) from e
    if len(raw) > cap:
        raise _unreadable(name, n, path, f"bigger than the {cap} bytes borg-vm stores")
    return raw


def _unreadable(name: str, n: str, path: str, detail: str) -> StateUnreadable:
    return StateUnreadable(what=vmstate.LABELS[n], name=name, path=path, detail=detail)
