"""The hypervisor's machine, as a backup run needs it: this machine, or one
reached over ssh (adapters/ssh.py) when the libvirt URI names a remote host.

Everything a run of a running domain does besides libvirt and NBD goes through
a Host: the domain's lock, programs it runs on the images (qemu-img), files of
the domain it reads (UEFI variables, TPM state), the private run directory where
the backup job's NBD socket and scratch files live, and the leftovers of a
crashed run. The lock is runtime.domain_lock's, on the hypervisor: a borg-vm
there and backup hosts exclude each other. The NBD
socket is on the hypervisor; ``reach`` makes it reachable here::

    LocalHost   run dir   /run/borg-vm/<uuid>.<random>/  (runtime.py)
                reach     the socket itself
    SshHost     run dir   /run/borg-vm/<uuid>.<random>/  on the hypervisor, made
                          and removed over ssh, owned by QEMU's user there
                reach     a socket in this machine's private ssh directory,
                          forwarded there over the ssh connection
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shlex
import signal
import stat
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Protocol

from borg_vm import runtime
from borg_vm.adapters import ssh, subproc
from borg_vm.adapters.disk_sources import THIS_MACHINE, NbdServers
from borg_vm.core import libvirt_uri
from borg_vm.core.disk_source import Endpoint
from borg_vm.errors import NbdError, RemoteRuntimeDirUnsafe, SshError, UsageError

log = logging.getLogger(__name__)

# The runtime directory on a remote hypervisor (runtime.DEFAULT_RUNTIME_DIR there;
# BORG_VM_RUNTIME_DIR says where this machine's is).
REMOTE_RUNTIME_DIR = runtime.DEFAULT_RUNTIME_DIR
# Exit codes of the read script below.
_MISSING, _NOT_REGULAR = 3, 4
_READ_SCRIPT = ('[ -e "$1" ] || exit 3; [ -f "$1" ] || exit 4; '
                'exec head -c "$2" -- "$1"')
# Holds the flock of lock file $1 (the one at the path: runtime.domain_lock unlinks
# its file on the way out, and so does this) until its stdin ends; says "locked"
# once it holds it.
_LOCK_SCRIPT = ('exec 9>>"$1"; flock -n 9 || exit 3; '
                '[ "$(stat -L -c %d:%i /proc/self/fd/9)" = "$(stat -c %d:%i -- "$1")" ] || exit 4; '
                'echo locked; cat >/dev/null; rm -f -- "$1"')
_LOCKED = b"locked\n"
_LOCK_HELD, _LOCK_GONE = 3, 4
# Makes runtime directory $1 unless it exists; says its owner and raw mode (for
# runtime.unsafe) and who we are.
_BASE_SCRIPT = 'mkdir -p -m 0755 -- "$1" && stat -c "%u %f" -- "$1" && id -u'
# Serves NBD on socket $1 with the server argv after it (qemu-nbd, which takes
# many clients here: the reads, nbdfuse) until its stdin ends (our end of the
# ssh channel: this run ends, or dies); says "serving" once the server has
# opened the image and listens (--fork returns then, or fails with its words),
# and on its way out stops it and waits until it is gone (its image lock with it).
_SERVE_SCRIPT = ('s=$1; p=$1.pid; shift; '
                 '"$@" --socket="$s" --persistent --shared=0 --fork --pid-file="$p" || exit 3; '
                 'trap \'pid=$(cat "$p" 2>/dev/null); [ -n "$pid" ] && kill "$pid" 2>/dev/null; '
                 'while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; '
                 'rm -f -- "$s" "$p"\' EXIT; trap "exit 1" HUP INT TERM; '
                 'echo serving; cat >/dev/null')
_SERVING = b"serving\n"


class Unreadable(Exception):
    """A file of the hypervisor exists but cannot be read (str: why)."""


class Host(Protocol):
    """The machine a hypervisor runs on (see the module docstring)."""

    remote: bool
    name: str

    def domain_lock(self, uuid: str, name: str) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive lock of domain uuid (called name) there for the block,
        the one runtime.domain_lock takes; raise UsageError if another run holds it."""
        ...

    def run(self, argv: Sequence[str]) -> bytes:
        """Run argv there; return its stdout; raise subproc.CommandFailed if it fails."""
        ...

    def read_file(self, path: str, limit: int) -> bytes | None:
        """Return up to limit bytes of the regular file at path, None if there is
        none; raise Unreadable if it cannot be read or is no regular file."""
        ...

    def run_dir(self, uuid: str, owner: tuple[int, int] | None
                ) -> contextlib.AbstractContextManager[str]:
        """A fresh 0700 directory there for one run, owned by owner; removed on exit."""
        ...

    def reach(self, socket: str) -> contextlib.AbstractContextManager[str]:
        """A path here through which the unix socket there is reached."""
        ...

    def remove_files(self, paths: Sequence[str]) -> None:
        """Remove the files there (those that exist)."""
        ...

    def remove_stale(self, uuid: str) -> None:
        """Remove the run directories crashed runs of domain uuid left there."""
        ...

    def is_ours(self, path: str) -> bool:
        """Return True if path there lies in borg-vm's runtime directory."""
        ...

    def nbd_servers(self, uuid: str) -> NbdServers:
        """Where a run of domain uuid starts qemu-nbd on its images (there)."""
        ...


class LocalHost:
    """This machine."""

    remote = False
    name = "this host"

    def domain_lock(self, uuid: str, name: str) -> contextlib.AbstractContextManager[None]:
        return runtime.domain_lock(uuid, name)

    def run(self, argv: Sequence[str]) -> bytes:
        return subproc.run(argv).stdout

    def read_file(self, path: str, limit: int) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Unreadable(e.strerror or str(e)) from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Unreadable("not a regular file")
        with open(fd, "rb") as f:
            try:
                return f.read(limit)
            except OSError as e:
                raise Unreadable(e.strerror or str(e)) from e

    def run_dir(self, uuid: str, owner: tuple[int, int] | None
                ) -> contextlib.AbstractContextManager[str]:
        return runtime.run_dir(uuid, owner)

    def reach(self, socket: str) -> contextlib.AbstractContextManager[str]:
        return contextlib.nullcontext(socket)

    def remove_files(self, paths: Sequence[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def remove_stale(self, uuid: str) -> None:
        runtime.remove_stale(uuid)

    def is_ours(self, path: str) -> bool:
        return runtime.is_ours(path)

    def nbd_servers(self, uuid: str) -> NbdServers:
        return THIS_MACHINE


LOCAL = LocalHost()


class SshHost:
    """A hypervisor reached over one ssh connection; its local sockets live in
    directory (this machine's, private to the run)."""

    remote = True

    def __init__(self, conn: ssh.Connection, directory: str):
        self._conn = conn
        self._dir = directory
        self._forwards = 0
        self._base_checked = False
        self.name = conn.target.host

    @contextlib.contextmanager
    def domain_lock(self, uuid: str, name: str) -> Iterator[None]:
        """runtime.domain_lock's lock there, held by a command over ssh as long as
        its stdin is open: it ends when this run ends, or its ssh dies."""
        self._base()
        path = posixpath.join(REMOTE_RUNTIME_DIR, f"{uuid}.lock")
        for _attempt in range(runtime.LOCK_ATTEMPTS):
            with subproc.stream(self._conn.command(["sh", "-c", _LOCK_SCRIPT, "sh", path]),
                                stdin=True, stdout=True,
                                parent_death_signal=signal.SIGTERM) as held:
                if held.stdout.readline() == _LOCKED:
                    try:
                        yield
                    finally:
                        held.wait()
                    return
                code = held.wait()
            if code == _LOCK_HELD:
                break
            if code != _LOCK_GONE:
                raise SshError(host=self.name, action=f"lock domain {name!r}",
                               detail="".join(held.stderr_lines()).strip() or f"exit {code}")
        raise UsageError(detail=f"another borg-vm run is backing up {name!r} on {self.name} "
                                "right now; try again when it has finished")

    def run(self, argv: Sequence[str]) -> bytes:
        return self._conn.run(argv)

    def read_file(self, path: str, limit: int) -> bytes | None:
        try:
            return self._conn.run(["sh", "-c", _READ_SCRIPT, "sh", path, str(limit)])
        except subproc.CommandFailed as e:
            if e.returncode == _MISSING:
                return None
            if e.returncode == _NOT_REGULAR:
                raise Unreadable("not a regular file") from e
            raise Unreadable(e.stderr.strip() or str(e)) from e

    @contextlib.contextmanager
    def run_dir(self, uuid: str, owner: tuple[int, int] | None) -> Iterator[str]:
        self._base()
        path = self._run("make a run directory",
                         ["mktemp", "-d", "-p", REMOTE_RUNTIME_DIR, f"{uuid}.XXXXXXXX"]
                         ).decode().strip()
        try:
            if owner is not None:
                self._run("give the run directory to QEMU's user",
                          ["chown", f"{owner[0]}:{owner[1]}", "--", path])
            yield path
        finally:
            self._remove_tree(path)

    def reach(self, socket: str) -> contextlib.AbstractContextManager[str]:
        self._forwards += 1
        return self._conn.forward(os.path.join(self._dir, f"{self._forwards}.sock"), socket)

    def remove_files(self, paths: Sequence[str]) -> None:
        """Best effort, logged: a run that lost its hypervisor fails with why, not
        with this (scratch files in the run directory go with it, next time)."""
        try:
            self._run("remove scratch files", ["rm", "-f", "--", *paths])
        except SshError as e:
            log.error("could not remove %s on %s: %s", " ".join(paths), self.name, e.message)

    def remove_stale(self, uuid: str) -> None:
        self._base()
        found = self._run("list leftover run directories",
                          ["find", REMOTE_RUNTIME_DIR, "-mindepth", "1", "-maxdepth", "1",
                           "-type", "d", "-name", f"{uuid}.*"]).decode().split()
        for path in found:
            log.info("removing leftover run directory %s of a crashed run on %s", path,
                     self.name)
            self._remove_tree(path)

    def is_ours(self, path: str) -> bool:
        return posixpath.normpath(path).startswith(REMOTE_RUNTIME_DIR + "/")

    def nbd_servers(self, uuid: str) -> NbdServers:
        return _RemoteServers(self, uuid)

    @contextlib.contextmanager
    def serve(self, argv: Sequence[str], uuid: str) -> Iterator[Endpoint]:
        """Run the NBD server of argv (qemu-nbd, without its socket) there, on a
        socket in a run directory of domain uuid, for the block; yield the
        Endpoint of the socket forwarded here. The server ends when the block
        does, or when this connection is lost (its script watches our stdin).
        Raise NbdError with the server's own words if it does not start."""
        with self.run_dir(uuid, None) as directory:
            socket = posixpath.join(directory, "nbd.sock")
            with subproc.stream(self._conn.command(["sh", "-c", _SERVE_SCRIPT, "sh", socket,
                                                    *argv]),
                                stdin=True, stdout=True,
                                parent_death_signal=signal.SIGTERM) as served:
                if served.stdout.readline() != _SERVING:
                    code = served.wait()
                    raise NbdError(action="start", where=f"{self.name}: {shlex.join(argv)}",
                                   detail="".join(served.stderr_lines()).strip()
                                   or f"exit {code}")
                try:
                    with self.reach(socket) as local:
                        yield Endpoint(uri="nbd+unix:///?socket=" + urllib.parse.quote(local))
                finally:
                    served.wait()   # our stdin's end stops it; it removes its socket

    def _base(self) -> None:
        """Make the runtime directory there unless it exists (once per connection);
        raise RemoteRuntimeDirUnsafe unless it is a directory of the ssh user's that no
        one else can write to, as runtime.py asks of this machine's."""
        if self._base_checked:
            return
        owner, mode, me = self._run("make the runtime directory",
                                    ["sh", "-c", _BASE_SCRIPT, "sh", REMOTE_RUNTIME_DIR]).split()
        uid = int(me)
        problem = runtime.unsafe(int(mode, 16), int(owner), uid)
        if problem:
            raise RemoteRuntimeDirUnsafe(path=f"{self.name}:{REMOTE_RUNTIME_DIR}",
                                         detail=problem, uid=uid)
        self._base_checked = True

    def _remove_tree(self, path: str) -> None:
        """Remove a run directory there; best effort, logged (the next run's
        remove_stale tries again)."""
        try:
            self._run("remove a run directory", ["rm", "-rf", "--", path])
        except SshError as e:
            log.error("could not remove %s on %s: %s", path, self.name, e.message)

    def _run(self, action: str, argv: Sequence[str]) -> bytes:
        try:
            return self._conn.run(argv)
        except subproc.CommandFailed as e:
            raise SshError(host=self.name, action=action,
                           detail=e.stderr.strip() or str(e)) from e


class _RemoteServers:
    """The NBD servers a run of one domain starts on a hypervisor over ssh."""

    def __init__(self, host: SshHost, uuid: str):
        self._host = host
        self._uuid = uuid

    def nbd_server(self, argv: Sequence[str]) -> contextlib.AbstractContextManager[Endpoint]:
        return self._host.serve(argv, self._uuid)


@contextlib.contextmanager
def connect(uri: str) -> Iterator[Host]:
    """Yield the Host of the hypervisor libvirt URI uri names: LOCAL, or an SshHost
    logged in for the block. Raise RemoteUnsupported for a remote URI that is not
    qemu+ssh://, SshError if ssh cannot log in."""
    target = libvirt_uri.ssh_target(uri)
    if target is None:
        yield LOCAL
        return
    with runtime.private_dir(runtime.SSH_PREFIX) as directory, \
            ssh.connect(target, directory) as conn:
        yield SshHost(conn, directory)
