"""qemu-img and qemu-nbd: the only module that builds their command lines."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from borg_vm.adapters import subproc
from borg_vm.errors import QemuImgError

QEMU_IMG = "qemu-img"
QEMU_NBD = "qemu-nbd"

# Runs an argv where the images are (this machine, or a hypervisor over ssh:
# services/hosts.py) and returns its stdout; raises subproc.CommandFailed.
Runner = Callable[[Sequence[str]], bytes]


def _local(argv: Sequence[str]) -> bytes:
    return subproc.run(argv).stdout


def _run(action: str, argv: list[str], run: Runner = _local) -> bytes:
    try:
        return run(argv)
    except subproc.CommandFailed as e:
        raise QemuImgError(action=action, detail=e.stderr.strip() or str(e)) from e


def create(path: str, fmt: str, size: int, backing: str | None = None,
           backing_format: str | None = None) -> None:
    """Create an empty image of fmt and size; with backing (an image file, or an
    nbd+unix:// URI with its backing_format), a qcow2 overlay on it.

    A backing file is recorded relative to the overlay's directory when it
    sits beside it, so a restored chain can be moved as a whole.
    """
    if fmt == "raw" and backing is None:
        _create_sparse(path, size)
        return
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    if backing is not None:
        assert fmt == "qcow2", "only qcow2 images have backing files"
        if "://" in backing:
            assert backing_format, "a backing URI needs its format"
            rel = backing
        elif os.path.dirname(os.path.abspath(backing)) == os.path.dirname(os.path.abspath(path)):
            rel = os.path.basename(backing)
        else:
            rel = os.path.abspath(backing)
        argv += ["-b", rel, "-F", backing_format or info(backing)["format"]]
    _run("create", argv + [path, str(size)])


def _create_sparse(path: str, size: int) -> None:
    """Create (or empty) a raw image: a sparse file of size bytes.

    Not qemu-img: it allocates a raw image's first 4 KiB (for O_DIRECT
    alignment probing), so `qemu-img map` of a restored disk would show data
    where the disk had none.
    """
    try:
        with open(path, "wb") as f:
            f.truncate(size)
    except OSError as e:
        raise QemuImgError(action="create", detail=f"{path}: {e.strerror}") from e


def info(path: str) -> dict:
    """Return `qemu-img info --output=json` of an image."""
    return json.loads(_run("info", [QEMU_IMG, "info", "--output=json", "-U", path]))


def nbd_server_argv(path: str, fmt: str, direct: bool = False) -> list[str]:
    """Return qemu-nbd argv serving path writable over a socket-activated NBD connection.

    With direct, the image is written with O_DIRECT (--cache=none: a 2 GiB
    restore cost qemu-nbd ~2.5 s of CPU instead of ~5.3 s through the page
    cache here), else through the page cache; either way the restore flushes
    once at the end. Zero writes may unmap, so zeros stay unallocated.
    """
    return [QEMU_NBD, "-f", fmt, "--cache=none" if direct else "--cache=writeback",
            "--discard=unmap", "--detect-zeroes=unmap", path]


# --- persistent dirty bitmaps of images (shut-off domains) ---------------------

@dataclass(frozen=True)
class Layer:
    """One image of a disk's backing chain and its persistent bitmaps (name -> flags)."""

    path: str
    format: str
    bitmaps: dict[str, tuple[str, ...]]


def backing_chain(path: str, fmt: str, run: Runner = _local) -> list[Layer]:
    """Return the image's backing chain, top first, with each layer's bitmaps
    (qemu-img run by run: where the image is).

    Read with -U (no lock): the caller holds the domain's lock and the image
    is not in use, or only reads what a writer cannot make inconsistent.
    """
    doc = json.loads(_run("info", [QEMU_IMG, "info", "--output=json", "--backing-chain", "-U",
                                   "-f", fmt, path], run))
    return [Layer(layer["filename"], layer["format"],
                  {b["name"]: tuple(b.get("flags", ()))
                   for b in layer.get("format-specific", {}).get("data", {}).get("bitmaps", [])})
            for layer in doc]


def bitmap_add(path: str, name: str, disabled: bool = False, run: Runner = _local) -> None:
    """Add a persistent bitmap to a qcow2 image (enabled: it records writes from now on)."""
    _run("bitmap", [QEMU_IMG, "bitmap", "--add", *(["--disable"] if disabled else []),
                    "-f", "qcow2", path, name], run)


def bitmap_remove(path: str, name: str, run: Runner = _local) -> None:
    _run("bitmap", [QEMU_IMG, "bitmap", "--remove", "-f", "qcow2", path, name], run)


def bitmap_merge(path: str, target: str, source: str, source_path: str,
                 source_format: str, run: Runner = _local) -> None:
    """Merge bitmap `source` of image source_path (path itself or a backing layer)
    into bitmap `target` of the qcow2 image at path."""
    # Naming the image itself with -b would open it twice, and its own lock refuses that.
    other = [] if os.path.abspath(source_path) == os.path.abspath(path) else [
        "-b", source_path, "-F", source_format]
    _run("bitmap", [QEMU_IMG, "bitmap", "--merge", source, *other, "-f", "qcow2", path, target],
         run)


def nbd_reader_argv(path: str, fmt: str, bitmap: str | None = None) -> list[str]:
    """Return qemu-nbd argv serving path read-only over a socket-activated connection,
    exporting a persistent bitmap as the context qemu:dirty-bitmap:BITMAP.

    Read-only without force-share, qemu-nbd takes the image's lock: while it
    serves, QEMU cannot open the image for writing (a domain start fails
    cleanly instead of changing what is being read).
    """
    return [QEMU_NBD, "-r", "-f", fmt, *(["-B", bitmap] if bitmap else []), path]
