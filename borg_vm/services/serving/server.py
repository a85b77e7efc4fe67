"""The server of a domain booted from the repository: a ``borg-vm mount`` of the
backed-up domain's disks that runs in the background, on sockets in the boot's
run directory, for as long as the booted domain reads from the repository.

::

    /run/borg-vm/boot-UUID/      0711: QEMU, whatever its user, reaches the sockets
        TARGET.sock              a disk's NBD export, 0600, owned by QEMU's user
        server.lock              locked for exactly as long as the server runs
        server.pid               the server's pid
        served.json              what it serves (its --json line), once it serves
        server.log               what it logs; each start appends
        libvirt.uri              the libvirt the booted domain is defined in
        booting.lock             locked while borg-vm boot sets the boot up

The server is started detached (a session of its own, no death signal), so it
outlives the borg-vm that started it (boot, boot --resume); boot --finish stops
it. The starting borg-vm takes server.lock and hands the locked file to the
server as an inherited descriptor the server never uses: the lock is held
while the server process lives and released by the kernel when it exits or is
killed. So "is it running" needs no pid, and the pid in server.pid is signalled
only through a pidfd opened while the lock still proves the process is ours.

A killed server's borg mount gets SIGINT and unmounts; its nbdkit stops
accepting but lingers while QEMU keeps its connection open (until QEMU's next
request, which it answers with an error). The next start of the server (a
borg-vm mount) kills it and removes what the killed server left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from borg_vm import runtime
from borg_vm.adapters import nbdkit, subproc
from borg_vm.adapters.borg import Repository
from borg_vm.errors import ServerFailed

log = logging.getLogger(__name__)

LOCK = "server.lock"
PID = "server.pid"
SERVED = "served.json"
LOG = "server.log"
URI = "libvirt.uri"
PRIVATE = 0o600
# How often we look at the server (starting, stopping) and at QEMU's connections.
POLL_SECONDS = 0.05
# How long the server may take to serve once it holds the repository lock (borg
# mount, then nbdkit: both have their own limits, well below this).
START_SECONDS = 300
# How long the server may take to stop after SIGTERM (nbdkit finishes its
# requests, borg unmounts) before it is killed.
STOP_SECONDS = 60


def path(run: str, name: str) -> str:
    return os.path.join(run, name)


def running(run: str) -> bool:
    """Return True if the server of the boot run directory run is running."""
    return bool(runtime.lock_held(path(run, LOCK)))


def start(run: str, borg: Repository, domain: str, checkpoint: str, sockets: dict[str, str],
          owner: tuple[int, int] | None) -> dict:
    """Start the server of domain's disks as of checkpoint on sockets (in run), handed
    to owner (uid, gid); return what it serves (borg-vm mount's --json document) once
    every export listens. Raise ServerFailed if it exits first (something else holds a
    socket, for one), or is running already."""
    argv = [sys.executable, "-m", "borg_vm", "mount", domain, "--repo", borg.repo,
            "--socket", run, "--checkpoint", checkpoint,
            "--lock-wait", str(borg.lock_wait), "--json",
            *[arg for t in sorted(sockets) for arg in ("--disk", t)],
            *(["--socket-owner", f"{owner[0]}:{owner[1]}"] if owner else [])]
    with contextlib.ExitStack() as files:
        lock = _open(files, run, LOCK, os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServerFailed(name=domain, detail="is running already",
                               log=path(run, LOG)) from None
        out = _open(files, run, SERVED, os.O_WRONLY | os.O_TRUNC)
        err = _open(files, run, LOG, os.O_WRONLY | os.O_APPEND)
        with borg.child_env() as (env, fds):
            server = subproc.detach(argv, stdout=out, stderr=err, env=env,
                                    pass_fds=fds + (lock,))
        with open(_open(files, run, PID, os.O_WRONLY | os.O_TRUNC), "w", closefd=False) as f:
            f.write(f"{server.pid}\n")
    log.debug("server of %s started, pid %d", domain, server.pid)
    return _wait_serving(run, domain, server, borg.lock_wait + START_SECONDS)


def _open(files: contextlib.ExitStack, run: str, name: str, flags: int) -> int:
    """Open (creating, 0600) a file of the run directory; closed when files closes."""
    fd = os.open(path(run, name), flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE)
    files.callback(os.close, fd)
    return fd


def _wait_serving(run: str, domain: str, server: subproc.Detached, timeout: float) -> dict:
    """Return the server's --json document once it wrote it; raise ServerFailed if it
    exits first or takes longer than timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with open(path(run, SERVED), encoding="utf-8") as f:
            line = f.readline()
        if line.endswith("\n"):
            return json.loads(line)
        code = server.exit_code()
        if code is not None:
            raise ServerFailed(name=domain, detail=f"exited {code} before serving: "
                               + log_tail(run), log=path(run, LOG))
        if time.monotonic() > deadline:
            stop(run)
            raise ServerFailed(name=domain, detail=f"did not serve within {timeout:.0f} s",
                               log=path(run, LOG))
        time.sleep(POLL_SECONDS)


def set_libvirt_uri(run: str, uri: str) -> None:
    """Record which libvirt the booted domain is defined in."""
    with open(os.open(path(run, URI), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                      PRIVATE), "w", encoding="utf-8") as f:
        f.write(uri)


def libvirt_uri(run: str) -> str | None:
    """Return the libvirt URI recorded in the run directory, None if none is."""
    try:
        with open(path(run, URI), encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def log_tail(run: str, lines: int = 3) -> str:
    """Return the last lines of the server's log, joined (what it said when it died)."""
    try:
        with open(path(run, LOG), encoding="utf-8", errors="replace") as f:
            tail = [line.strip() for line in f if line.strip()][-lines:]
    except FileNotFoundError:
        return "no log"
    return "; ".join(tail) or "nothing in its log"


def pid(run: str) -> int | None:
    """Return the pid the server was started with, or None if unknown."""
    try:
        with open(path(run, PID), encoding="ascii") as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def stop(run: str) -> None:
    """Stop the server (SIGTERM, then SIGKILL after STOP_SECONDS) and wait until it
    has exited; a server not running is fine."""
    number = pid(run)
    if number is None:
        return
    try:
        pidfd = os.pidfd_open(number)
    except ProcessLookupError:
        return
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            # Checked after the pidfd was opened: if the lock is still held, the
            # process the pidfd names is the server, not a later one with its pid.
            if not running(run):
                return
            signal.pidfd_send_signal(pidfd, sig)
            if _poll(lambda: not running(run), STOP_SECONDS):
                return
            log.warning("the server (pid %d) did not stop within %d s of %s", number,
                        STOP_SECONDS, sig.name)
    finally:
        os.close(pidfd)


def wait_connected(sockets: list[str], timeout: float) -> bool:
    """Return True once every socket has a client connected (QEMU), False if one
    still has none after timeout seconds."""
    return _poll(lambda: all(nbdkit.connections(s) for s in sockets), timeout)


def _poll(done: Callable[[], bool], timeout: float) -> bool:
    """Return True as soon as done() is, False if it is not after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True
