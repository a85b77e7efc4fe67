"""Private runtime state of one backup run: a per-domain lock and a 0700 directory
for the NBD socket and scratch files, cleaned on exit and, for leftovers of
a crashed run, on the next entry.

Layout::

    /run/borg-vm/                       (BORG_VM_RUNTIME_DIR overrides); ours, and
                                        writable by no one else, or we refuse it
        <uuid>.lock                     flock held while a run of that domain works;
                                        exists only then
        <uuid>.<random>/                0700, owned by root or by QEMU's user
            nbd.sock                    the backup job's NBD server
            <target>.scratch            fleecing files (unless --scratch-dir)
        ssh.<random>/                   0700, a run's ssh connection to a remote
                                        hypervisor (services/hosts.py): its control
                                        socket and forwarded NBD sockets; the run
                                        dir above is then on the hypervisor

A run passes through phases, in order (services/backup/run.py; restore has one,
APPLIED): each is a debug line ``phase NAME: ...``, so ``--debug`` shows how
far a run got, and a fault-injection test can stop the process at one
(``BORG_VM_TEST_STOP_AT=NAME``: SIGSTOP right after the line) and strike
exactly there::

    planned        level and archive name chosen; nothing made yet
    job-started    backup job (or offline session) begun: checkpoint C exists
    streaming      borg import-tar runs and has the first members; disk data next
    ending         every member written, the manifest last; only the end of the
                   tar stream is not, so borg has committed nothing yet
    borg-finished  borg read the end, committed archive NAME and exited 0; job
                   not yet ended, older checkpoints not yet deleted
    done           job ended, older checkpoints deleted; what crashed runs left
                   in the repository (borg's .checkpoint archives) is deleted next
    applied        (restore) one archive's data written into the staged images
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import logging
import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator

from borg_vm.errors import RuntimeDirUnsafe, UsageError

log = logging.getLogger(__name__)

DEFAULT_RUNTIME_DIR = "/run/borg-vm"
# Each retry means another run removed or replaced the lock file in the moment
# between our open and our flock; more than a few in a row is not a race.
LOCK_ATTEMPTS = 5

PLANNED = "planned"
JOB_STARTED = "job-started"
STREAMING = "streaming"
ENDING = "ending"                 # backup: everything but the tar stream's end written
BORG_FINISHED = "borg-finished"   # backup: borg read the end, committed, exited 0
DONE = "done"
APPLIED = "applied"   # restore: one archive's data written into the staged images
STOP_AT_ENV = "BORG_VM_TEST_STOP_AT"


def phase(name: str, what: str, *args: object) -> None:
    """Mark that a run reached phase `name` (what % args says where): a debug line,
    and a SIGSTOP of this process if $BORG_VM_TEST_STOP_AT names the phase (tests
    of faults at that very point; SIGCONT continues the run)."""
    log.debug("phase %s: " + what, name, *args)
    if os.environ.get(STOP_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def base_dir() -> str:
    return os.environ.get("BORG_VM_RUNTIME_DIR", DEFAULT_RUNTIME_DIR)


@contextlib.contextmanager
def domain_lock(uuid: str, name: str) -> Iterator[None]:
    """Hold the exclusive lock of a domain; raise UsageError if another run holds
    it, RuntimeDirUnsafe if the runtime directory is not safely ours.

    The lock file exists only while a run holds it: it is unlinked, still
    locked, on the way out.
    """
    path = os.path.join(_safe_base_dir(), f"{uuid}.lock")
    fd = _flock(path, name)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _flock(path: str, name: str) -> int:
    """Return an fd holding the flock of the file at path, made if need be; raise
    UsageError if another run holds it.

    A run that finishes unlinks its lock file while holding it, so the file we
    opened may be gone (or replaced) by the time we lock it: only a lock on the
    file still at path counts.
    """
    for _attempt in range(LOCK_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            break
        if _is_at(fd, path):
            return fd
        os.close(fd)
    raise UsageError(detail=f"another borg-vm run is backing up {name!r} right now; "
                            "try again when it has finished")


def _is_at(fd: int, path: str) -> bool:
    """Return True if the open file fd is the file path names now."""
    try:
        there = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    ours = os.fstat(fd)
    return (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino)


def _safe_base_dir() -> str:
    """Return the runtime directory, made if missing; raise RuntimeDirUnsafe unless
    it is a real directory of ours that no one else can write to (or anyone could
    hold our locks, or swap our files)."""
    base = base_dir()
    with contextlib.suppress(FileExistsError):   # whatever it is, lstat judges it
        os.makedirs(base, mode=0o755)
    _check_ours(base)
    return base


def _check_ours(path: str) -> None:
    """Raise RuntimeDirUnsafe unless path is a real directory of ours that no one else
    can write to."""
    st = os.lstat(path)
    uid = os.geteuid()
    problem = unsafe(st.st_mode, st.st_uid, uid)
    if problem:
        raise RuntimeDirUnsafe(path=path, detail=problem, uid=uid)


def unsafe(mode: int, owner: int, uid: int) -> str | None:
    """Return what makes a runtime directory (its lstat st_mode and owner) unsafe
    for user uid, or None if it is a directory of uid's that no one else can
    write to."""
    return ("is a symbolic link" if stat.S_ISLNK(mode)
            else "is not a directory" if not stat.S_ISDIR(mode)
            else f"is owned by uid {owner}" if owner != uid
            else f"is writable by others (mode {stat.S_IMODE(mode):04o})"
            if mode & (stat.S_IWGRP | stat.S_IWOTH) else None)


def remove_stale(uuid: str) -> None:
    """Remove run directories of the domain left by crashed runs (call with the lock held)."""
    for path in glob.glob(os.path.join(base_dir(), f"{uuid}.*")):
        if os.path.isdir(path):
            log.info("removing leftover run directory %s of a crashed run", path)
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def run_dir(uuid: str, owner: tuple[int, int] | None) -> Iterator[str]:
    """Yield a fresh 0700 directory for one run, owned by owner (uid, gid) if given."""
    path = tempfile.mkdtemp(prefix=f"{uuid}.", dir=base_dir())
    try:
        if owner is not None and owner != (os.getuid(), os.getgid()):
            os.chown(path, *owner)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


MOUNT_PREFIX = "mount."
SSH_PREFIX = "ssh."
MOUNT_LOCK = "lock"


@contextlib.contextmanager
def _locked_dir(prefix: str, cleanup: Callable[[str], None]) -> Iterator[str]:
    """Yield a fresh 0700 directory named prefix*, marked as in use (a flock on
    its lock file) for the block; then call cleanup(path)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=_safe_base_dir())
    fd = os.open(os.path.join(path, MOUNT_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)
        cleanup(path)


def mount_dir() -> contextlib.AbstractContextManager[str]:
    """A fresh 0700 directory for one borg-vm mount, marked as in use (a flock
    on its lock file) for the block. The caller removes what it put in it; the
    directory is removed afterwards if that left it empty, else kept with its
    lock file, unlocked, for the next run to clean (stale_mount_dirs)."""
    return _locked_dir(MOUNT_PREFIX, _remove_if_empty)


def _remove_if_empty(path: str) -> None:
    if os.listdir(path) == [MOUNT_LOCK]:
        os.unlink(os.path.join(path, MOUNT_LOCK))
        os.rmdir(path)


@contextlib.contextmanager
def private_dir(prefix: str) -> Iterator[str]:
    """Yield a fresh 0700 directory (named prefix*) for one run's sockets, removed
    with what is in it afterwards; first remove those of crashed runs."""
    for stale in stale_dirs(prefix):
        log.info("removing leftover directory %s of a crashed run", stale)
        shutil.rmtree(stale, ignore_errors=True)
    with _locked_dir(prefix, functools.partial(shutil.rmtree, ignore_errors=True)) as path:
        yield path


def stale_mount_dirs() -> list[str]:
    """Return the mount directories whose borg-vm mount is gone (no one holds their lock)."""
    return stale_dirs(MOUNT_PREFIX)


def stale_dirs(prefix: str) -> list[str]:
    """Return the directories named prefix* whose run is gone (no one holds their lock)."""
    # A directory without its lock file is being made right now (or not by us).
    return [path for path in glob.glob(os.path.join(base_dir(), prefix + "*"))
            if lock_held(os.path.join(path, MOUNT_LOCK)) is False]


def lock_held(path: str) -> bool | None:
    """Return True if someone holds the flock of the file at path, False if no one
    does, None if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_mount_dir(path: str, mountpoints: tuple[str, ...]) -> None:
    """Remove a stale mount directory, unless one of its mountpoints is still mounted
    (then rmdir fails and it is kept: never delete through a mount)."""
    for name in mountpoints:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(os.path.join(path, name))
    for name in os.listdir(path):
        entry = os.path.join(path, name)
        if not os.path.isdir(entry) or os.path.islink(entry):
            os.unlink(entry)
    os.rmdir(path)


def is_ours(path: str) -> bool:
    """Return True if path lies in borg-vm's runtime directory."""
    return os.path.abspath(path).startswith(os.path.abspath(base_dir()) + os.sep)


BOOT_PREFIX = "boot-"
# QEMU, whichever user it runs as, reaches the sockets in a boot directory; no
# one but its owner lists it or creates anything in it.
BOOT_DIR_MODE = 0o711


def boot_dir_path(uuid: str) -> str:
    """Return where the run directory of a domain booted from the repository goes
    (uuid: the booted domain's)."""
    return os.path.join(_safe_base_dir(), BOOT_PREFIX + uuid)


def boot_dir(path: str) -> str:
    """Make the boot run directory at path (mode 0711) unless it exists; return path.
    Raise RuntimeDirUnsafe unless it is a directory of ours that no one else can
    write to."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, BOOT_DIR_MODE)
        os.chmod(path, BOOT_DIR_MODE)   # whatever the umask
    _check_ours(path)
    return path


def remove_boot_dir(path: str) -> None:
    """Remove a boot run directory and what is in it (sockets, lock, logs)."""
    shutil.rmtree(path, ignore_errors=True)


BOOTING_LOCK = "booting.lock"


@contextlib.contextmanager
def booting(path: str) -> Iterator[None]:
    """Mark the boot run directory at path as being set up (its domain may not be
    defined yet) for the block: a flock on its booting.lock."""
    fd = os.open(os.path.join(path, BOOTING_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def boot_dirs() -> list[tuple[str, str]]:
    """Return (path, UUID of the booted domain) of every boot run directory that no
    borg-vm boot is setting up right now."""
    # A directory without its lock file is being made right now.
    return [(path, os.path.basename(path)[len(BOOT_PREFIX):])
            for path in glob.glob(os.path.join(base_dir(), BOOT_PREFIX + "*"))
            if lock_held(os.path.join(path, BOOTING_LOCK)) is False]
