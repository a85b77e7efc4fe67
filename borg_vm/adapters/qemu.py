"""qemu-img and qemu-nbd: the only module that builds their command lines."""

from __future__ import annotations

import json
import os

from . import subproc
from ..errors import QemuImgError

QEMU_IMG = "qemu-img"
QEMU_NBD = "qemu-nbd"
FORMATS = ("qcow2", "raw")


def _run(action: str, argv: list[str]) -> bytes:
    try:
        return subproc.run(argv).stdout
    except subproc.CommandFailed as e:
        raise QemuImgError(action=action, detail=e.stderr.strip() or str(e)) from e


def create(path: str, fmt: str, size: int, backing: str | None = None) -> None:
    """Create an empty image of fmt and size; with backing, a qcow2 overlay on it.

    The backing file is recorded relative to the overlay's directory when it
    sits beside it, so a restored chain can be moved as a whole.
    """
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    if backing is not None:
        assert fmt == "qcow2", "only qcow2 images have backing files"
        rel = (os.path.basename(backing)
               if os.path.dirname(os.path.abspath(backing)) == os.path.dirname(os.path.abspath(path))
               else os.path.abspath(backing))
        argv += ["-b", rel, "-F", info(backing)["format"]]
    _run("create", argv + [path, str(size)])


def info(path: str) -> dict:
    """Return `qemu-img info --output=json` of an image."""
    return json.loads(_run("info", [QEMU_IMG, "info", "--output=json", "-U", path]))


def nbd_server_argv(path: str, fmt: str) -> list[str]:
    """Return qemu-nbd argv serving path writable over a socket-activated NBD connection.

    Writes are cached (the restore flushes once at the end) and zero writes may
    unmap, so zeros stay unallocated.
    """
    return [QEMU_NBD, "-f", fmt, "--cache=writeback", "--discard=unmap",
            "--detect-zeroes=unmap", path]
