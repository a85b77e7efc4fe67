"""An NBD export shown as a regular file: libnbd's nbdfuse in its "naked" mode
(the mount point is a file, and the file is the export), read-only.

Borg 2's ``create --map`` reads one input path, a regular file or a block
device, never stdin; a backup job's export is an NBD server. nbdfuse makes
the export that file without the kernel's nbd module (which containers and
many hosts lack). Borg reads 1 MiB at a time and nbdfuse hands each read to
libnbd; what the map calls zero or same is never read.

nbdfuse runs as our child in the foreground: it writes its PID file once the
file is mounted, and ends when the file is unmounted (as root, umount(8):
fusermount3 may not be installed), which is how ``exposed`` stops it.

The kernel reads ahead of what a reader asks of a FUSE file, as of any file:
for an incremental, whose map reads scattered ranges, that read 7% more of
the disk than the ranges held (bench/GENERATIONS.md). ``exposed`` can turn
read-ahead off for the file (its FUSE connection's read_ahead_kb).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator

from borg_vm.adapters import subproc
from borg_vm.adapters.borg import mounted
from borg_vm.core.disk_source import Endpoint
from borg_vm.errors import NbdError

log = logging.getLogger(__name__)

START_SECONDS = 30        # from start to mounted (it connects to the server first)
POLL_SECONDS = 0.02
STOP_SECONDS = 10         # from umount to nbdfuse's exit


@contextlib.contextmanager
def exposed(endpoint: Endpoint, path: str, read_ahead: bool = True) -> Iterator[str]:
    """Show the NBD export at endpoint (an NBD URI, e.g. nbd+unix:///vda?socket=S,
    or a server nbdfuse starts) as the regular file path, read-only, for the
    block; yield path. The file is created (it must not exist) and removed
    after. Without read_ahead, the kernel reads only what a reader asks for
    (best effort). Raise NbdError if nbdfuse cannot mount it."""
    uri = endpoint.uri or " ".join(endpoint.command)
    server = [endpoint.uri] if endpoint.uri else ["[", *endpoint.command, "]"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="borg-vm-nbdfuse.") as tmp:
            pidfile = os.path.join(tmp, "pid")
            argv = ["nbdfuse", "--readonly", "--pidfile", pidfile, path, *server]
            with subproc.stream(argv, parent_death_signal=signal.SIGTERM) as proc:
                try:
                    _wait_mounted(proc, pidfile, uri, path)
                    if not read_ahead:
                        _no_read_ahead(path)
                    yield path
                finally:
                    _unmount(proc, path)
    finally:
        os.unlink(path)


def _wait_mounted(proc: subproc.Stream, pidfile: str, uri: str, path: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not os.path.exists(pidfile):
        if proc.exited(POLL_SECONDS) or time.monotonic() > deadline:
            proc.terminate()
            detail = "".join(proc.stderr_lines()).strip() or (
                f"not mounted after {START_SECONDS} s")
            raise NbdError(action="show as a file", where=uri, detail=detail)
    log.debug("nbdfuse: %s shows %s", path, uri)


def _no_read_ahead(path: str) -> None:
    """Set the read-ahead of the FUSE connection path is mounted on to nothing
    (its backing device's read_ahead_kb in sysfs); log where it cannot be."""
    dev = os.stat(path).st_dev
    knob = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(knob, "w") as f:
            f.write("0")
    except OSError as e:
        log.debug("nbdfuse: %s keeps its read-ahead (%s: %s)", path, knob, e.strerror)


def _unmount(proc: subproc.Stream, path: str) -> None:
    """Unmount path (nbdfuse then exits); if it does not exit, end it, and detach
    what is left mounted (a FUSE file whose server is gone)."""
    if not proc.exited(0):
        refused = ""
        try:
            subproc.run(["umount", path])
        except subproc.CommandFailed as e:
            refused = f" (umount: {e.stderr.strip()})"
        if not proc.exited(STOP_SECONDS):
            # Not a warning: borg has read what it needed and the file is
            # unmounted (or detached below); what is left is a process to end.
            # Seen on a loaded host, its cause not found yet.
            log.info("nbdfuse did not exit within %d s of the unmount%s; ending it",
                     STOP_SECONDS, refused)
            proc.terminate()
    if mounted(path):
        subproc.run(["umount", "--lazy", path])
