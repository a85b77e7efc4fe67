"""--quiesce: the guest's filesystems frozen, through its QEMU guest agent,
while the backup job starts, so the point in time it exports is one at which
they were consistent on disk (journals flushed, no write half done).

The freeze spans only the job's start (checkpoint and NBD exports, ~100 ms),
not the reading of the data: the job's exports keep that instant however the
guest writes afterwards. libvirt 9.0 has no quiesce flag for backupBegin
(only for snapshots and checkpoints made on their own), hence virDomainFSFreeze
and virDomainFSThaw around it. Every freeze has a thaw guard (see
adapters/libvirt.py): if borg-vm dies while the guest is frozen, the guard
thaws it at once, and it never stays frozen longer than the freeze timeout.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from borg_vm.adapters.libvirt import Domain
from borg_vm.core import domxml
from borg_vm.errors import FreezeExpired, GuestAgentMissing, QuiesceError, QuiesceFailed

log = logging.getLogger(__name__)

ON = "on"
TRY = "try"
FREEZE_TIMEOUT = 10.0
FREEZE_TIMEOUT_ENV = "BORG_VM_FREEZE_TIMEOUT"


@dataclass
class Quiesce:
    ms: float | None = None   # how long the guest was frozen; None: it was not


@contextlib.contextmanager
def frozen(dom: Domain, mode: str | None, agent_state: str | None,
           timeout: float = FREEZE_TIMEOUT) -> Iterator[Quiesce]:
    """With mode ON or TRY, freeze the running domain's filesystems for the body
    (thawed on every way out); yield a Quiesce that holds, after the body, how
    long they were frozen. With mode None do nothing. agent_state: the state of
    the domain's guest agent channel (domxml.LiveDomain.agent_state).

    Raise a QuiesceError if they cannot be frozen, or were thawed before the
    body ended (by the guard, after `timeout` seconds); with TRY, log a warning
    and go on instead. A failed thaw is an error either way.
    """
    quiesce, freeze = Quiesce(), None
    with contextlib.ExitStack() as stack:
        if mode is not None:
            try:
                _check_agent(dom, agent_state)
                freeze = stack.enter_context(dom.frozen(timeout))
            except QuiesceError as e:
                _fail_or_warn(mode, e)
        yield quiesce
    if freeze is None or mode is None:   # frozen only with a mode
        return
    quiesce.ms = freeze.ms
    log.info("%s: %d filesystem%s frozen for %.0f ms", dom.name, freeze.frozen,
             "" if freeze.frozen == 1 else "s", freeze.ms)
    if freeze.frozen and not freeze.thawed:
        _fail_or_warn(mode, FreezeExpired(name=dom.name, timeout=f"{timeout:g}",
                                          variable=FREEZE_TIMEOUT_ENV))


def _check_agent(dom: Domain, state: str | None) -> None:
    """Raise GuestAgentMissing if the domain has no agent channel (state None),
    QuiesceFailed if libvirt knows its agent is not connected."""
    if state is None:
        raise GuestAgentMissing(name=dom.name, channel=domxml.AGENT_CHANNEL)
    if state == "disconnected":
        raise QuiesceFailed(name=dom.name, detail="its guest agent is not connected")


def _fail_or_warn(mode: str, e: QuiesceError) -> None:
    if mode != TRY:
        raise e
    log.warning("%s Backing up without freezing (--quiesce=try).", e.message)
