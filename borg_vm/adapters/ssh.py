"""ssh to a hypervisor: one authenticated connection (an OpenSSH ControlMaster)
that carries every command borg-vm runs there and every socket it forwards.

    ssh -M -N -S CTL -o ControlPersist=no HOST      the master, held for the run;
                                                    the kernel ends it if borg-vm dies
    ssh -S CTL HOST 'qemu-img info ...'             a command over it (argv quoted
                                                    for the far side's shell)
    ssh -S CTL -O forward -L LOCAL.sock:REMOTE.sock a unix socket there, reachable
                                                    here (-W cannot forward one)
    ssh -S CTL -O exit HOST                         the end

Every ssh argv comes from the libvirt URI (core/libvirt_uri.py), so the user,
port, key and ssh program are those libvirt uses. A command run while the
master is gone connects on its own: cleanup after a lost connection still
reaches the hypervisor if it can be reached at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import time
from collections.abc import Iterator, Sequence

from borg_vm.adapters import subproc
from borg_vm.core.libvirt_uri import SshTarget
from borg_vm.errors import SshError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 60.0   # seconds the master has to log in
CONNECT_POLL = 0.05
EXIT_TIMEOUT = 10.0
CONTROL_SOCKET = "ctl"


class Connection:
    """A running ControlMaster to target, its control socket in a private directory."""

    def __init__(self, target: SshTarget, directory: str):
        self.target = target
        self.control = os.path.join(directory, CONTROL_SOCKET)

    def _argv(self, *options: str) -> list[str]:
        return self.target.argv("-S", self.control, *options)

    def command(self, argv: Sequence[str]) -> list[str]:
        """Return the ssh argv that runs argv on the hypervisor over the connection
        (quoted for the far side's shell)."""
        return [*self._argv(), shlex.join(argv)]

    def run(self, argv: Sequence[str], ok_codes: tuple[int, ...] = (0,)) -> bytes:
        """Run argv on the hypervisor; return its stdout. Raise subproc.CommandFailed
        (ssh's own failures exit 255) if it exits with a code outside ok_codes."""
        return subproc.run(self.command(argv), ok_codes=ok_codes).stdout

    @contextlib.contextmanager
    def forward(self, local: str, remote: str) -> Iterator[str]:
        """Forward unix socket local (made now; it must not exist) to the hypervisor's
        socket remote for the block; yield local. Raise SshError if ssh refuses."""
        spec = f"{local}:{remote}"
        self._control("forward a socket", "forward", "-L", spec)
        try:
            yield local
        finally:
            with contextlib.suppress(SshError):   # a master gone took its forwards along
                self._control("cancel a forward", "cancel", "-L", spec)
            with contextlib.suppress(FileNotFoundError):   # ssh leaves the file
                os.unlink(local)

    def _control(self, action: str, command: str, *options: str) -> None:
        try:
            subproc.run(self._argv("-O", command, *options))
        except subproc.CommandFailed as e:
            raise SshError(host=self.target.host, action=action,
                           detail=e.stderr.strip() or str(e)) from e

    def alive(self) -> bool:
        """Return True if the master answers on its control socket."""
        try:
            subproc.run(self._argv("-O", "check"))
        except subproc.CommandFailed:
            return False
        return True


@contextlib.contextmanager
def connect(target: SshTarget, directory: str) -> Iterator[Connection]:
    """Log in to target with a ControlMaster whose control socket is in directory
    (private to this run); yield the Connection, and end the master on exit. Raise
    SshError if it cannot log in within CONNECT_TIMEOUT."""
    conn = Connection(target, directory)
    argv = conn._argv("-M", "-N", "-o", "ControlPersist=no")
    try:
        with subproc.stream(argv, parent_death_signal=signal.SIGTERM) as master:
            _wait_ready(conn, master)
            log.debug("ssh: connected to %s", target.host)
            try:
                yield conn
            finally:
                with contextlib.suppress(SshError):
                    conn._control("end the connection", "exit")
                master.exited(EXIT_TIMEOUT)
    except subproc.CommandFailed as e:
        raise SshError(host=target.host, action="start", detail=str(e)) from e


def _wait_ready(conn: Connection, master: subproc.Stream) -> None:
    """Return once the master answers; raise SshError if it exits first (with its
    own words) or does not answer within CONNECT_TIMEOUT."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while not (os.path.exists(conn.control) and conn.alive()):
        if master.exited(0):
            raise SshError(host=conn.target.host, action="log in",
                           detail="".join(master.stderr_lines()).strip()
                           or f"ssh exited {master.proc.returncode}")
        if time.monotonic() > deadline:
            raise SshError(host=conn.target.host, action="log in",
                           detail=f"no answer within {CONNECT_TIMEOUT:g} s")
        time.sleep(CONNECT_POLL)
