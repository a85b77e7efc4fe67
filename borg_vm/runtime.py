"""Private runtime state of one backup run: a per-domain lock and a 0700 directory
for the NBD socket and scratch files, cleaned on exit and, for leftovers of
a crashed run, on the next entry.

Layout::

    /run/borg-vm/                       (BORG_VM_RUNTIME_DIR overrides)
        <uuid>.lock                     flock held while a run of that domain works
        <uuid>.<random>/                0700, owned by root or by QEMU's user
            nbd.sock                    the backup job's NBD server
            <target>.scratch            fleecing files (unless --scratch-dir)
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import shutil
import tempfile
from typing import Iterator

from .errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_RUNTIME_DIR = "/run/borg-vm"


def base_dir() -> str:
    return os.environ.get("BORG_VM_RUNTIME_DIR", DEFAULT_RUNTIME_DIR)


@contextlib.contextmanager
def domain_lock(uuid: str, name: str) -> Iterator[None]:
    """Hold the exclusive lock of a domain; raise UsageError if another run holds it."""
    base = base_dir()
    os.makedirs(base, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(base, f"{uuid}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise UsageError(detail=f"another borg-vm run is backing up {name!r} "
                                    "right now; try again when it has finished") from e
        yield
    finally:
        os.close(fd)


def remove_stale(uuid: str) -> None:
    """Remove run directories of the domain left by crashed runs (call with the lock held)."""
    for path in glob.glob(os.path.join(base_dir(), f"{uuid}.*")):
        if os.path.isdir(path):
            log.warning("removing leftover run directory %s of a crashed run", path)
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


def is_ours(path: str) -> bool:
    """Return True if path lies in borg-vm's runtime directory."""
    return os.path.abspath(path).startswith(os.path.abspath(base_dir()) + os.sep)
