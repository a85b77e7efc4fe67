"""nbdkit: the only module that builds its command line. borg-vm mount serves
each disk of a chain with nbdkit's python plugin running nbdkit_plugin.py over
a disk map (Debian: nbdkit, nbdkit-plugin-python), and a complete image (Borg
2) with its file plugin."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

from borg_vm.adapters import subproc
from borg_vm.errors import NbdkitError

NBDKIT = "nbdkit"
PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nbdkit_plugin.py")
# How long nbdkit may take to load Python and the map and listen, how often we
# look, and how long it may take to finish its requests and exit on SIGTERM.
START_SECONDS = 60
POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 10


def serve_argv(socket: str, map_file: str, pidfile: str) -> list[str]:
    """Return nbdkit's argv serving the disk map_file describes, read-only, on a unix
    socket; it writes pidfile once it listens, and exits if borg-vm dies."""
    return [NBDKIT, "--foreground", "--exit-with-parent", "--readonly", "--unix", socket,
            "--pidfile", pidfile, "python", PLUGIN, f"map={map_file}"]


def serve_file_argv(socket: str, path: str, pidfile: str) -> list[str]:
    """Return nbdkit's argv serving the file at path as it is (a complete disk
    image in a borg mount), read-only, on a unix socket, as serve_argv does
    otherwise. Without block status (noextents: all of it reads as data, which
    a FUSE file without holes is anyway): the file plugin asks for it with
    lseek(SEEK_DATA), which Borg 2.0.0b23's mount over mfusepy answers with
    EINVAL now and then (a TypeError in its fgetattr), and QEMU's blockpull
    then stops."""
    return [NBDKIT, "--foreground", "--exit-with-parent", "--readonly", "--unix", socket,
            "--pidfile", pidfile, "--filter=noextents", "file", f"file={path}"]


def serve(socket: str, map_file: str, pidfile: str) -> AbstractContextManager[subproc.Stream]:
    """Serve the disk map_file describes on socket for the block; yield the running
    nbdkit (its exit means the export is gone). Raise NbdkitError if it does not
    start; on the way out it is stopped (SIGTERM) and its socket removed."""
    return _serving(serve_argv(socket, map_file, pidfile), socket, pidfile)


def serve_file(socket: str, path: str, pidfile: str) -> AbstractContextManager[subproc.Stream]:
    """Serve the file at path on socket for the block, as serve does a map."""
    return _serving(serve_file_argv(socket, path, pidfile), socket, pidfile)


@contextlib.contextmanager
def _serving(argv: list[str], socket: str, pidfile: str) -> Iterator[subproc.Stream]:
    with subproc.stream(argv) as proc:
        try:
            _wait_listening(proc, pidfile)
            yield proc
        finally:
            if not proc.stop(signal.SIGTERM, STOP_GRACE_SECONDS):
                proc.terminate()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket)


def _wait_listening(proc: subproc.Stream, pidfile: str) -> None:
    """Return when nbdkit listens (it writes its pidfile then); raise NbdkitError if
    it exits first or takes longer than START_SECONDS."""
    deadline = time.monotonic() + START_SECONDS
    while not os.path.exists(pidfile):
        if proc.exited(POLL_SECONDS):
            raise NbdkitError(action="start", detail=_why(proc))
        if time.monotonic() > deadline:
            raise NbdkitError(action="start", detail=f"not listening after {START_SECONDS} s")


def _why(proc: subproc.Stream) -> str:
    """Return what nbdkit said on stderr, else its exit code."""
    lines = [line.strip() for line in proc.stderr_lines() if line.strip()]
    return "; ".join(lines[-3:]) or f"exit code {proc.proc.returncode}"


def failure(proc: subproc.Stream) -> NbdkitError:
    """Return the error of an nbdkit that exited while it should have served."""
    return NbdkitError(action="serve", detail=_why(proc))


PROC_NET_UNIX = "/proc/net/unix"
SS_CONNECTED = "03"   # the St column of /proc/net/unix


def connections(socket: str) -> int:
    """Return how many clients are connected to the server listening on the unix
    socket at path socket (whoever serves it). Linux lists each accepted connection
    in /proc/net/unix under its listener's path, in state connected."""
    with open(PROC_NET_UNIX, encoding="utf-8", errors="replace") as f:
        next(f)   # the header
        rows = [line.rstrip("\n").split(maxsplit=7) for line in f]
    return sum(1 for row in rows if len(row) == 8 and row[5] == SS_CONNECTED
               and row[7] == socket)


# How long a killed nbdkit may take to be gone.
KILL_SECONDS = 10


def kill_stale(pidfile: str) -> bool:
    """Kill the nbdkit that wrote pidfile if it still runs; return True if there was
    one. An nbdkit whose parent died (a borg-vm mount killed) stops accepting but
    waits for its clients to hang up, for ever if a client (QEMU) keeps an idle
    connection, and holds its socket meanwhile."""
    try:
        with open(pidfile, encoding="ascii") as f:
            pid = int(f.read().strip())
        pidfd = os.pidfd_open(pid)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    try:
        # Checked through the pidfd's process: it is nbdkit, with this pidfile.
        if not _is_nbdkit_of(pid, pidfile):
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        ready, _, _ = select.select([pidfd], [], [], KILL_SECONDS)
        if not ready:
            raise NbdkitError(action="stop", detail=f"pid {pid} still runs after SIGKILL")
        return True
    finally:
        os.close(pidfd)


def _is_nbdkit_of(pid: int, pidfile: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except FileNotFoundError:
        return False
    return os.path.basename(argv[0]) == NBDKIT.encode() and os.fsencode(pidfile) in argv
