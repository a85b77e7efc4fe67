"""An nbdkit python plugin serving one disk, read-only, from a borg-vm disk map.

Not imported by borg-vm: nbdkit loads this file (``nbdkit python
nbdkit_plugin.py map=FILE``, see adapters/nbdkit.py). FILE holds a disk's
map as ``PieceMap.write`` writes it (format/piecemap.py), under the header
``{"target": T, "archives": [DIR, ...]}``: DIR is archive i of the disk's
chain (0: the full) in a ``borg mount``, the map says which member of which
archive holds each byte.
A read is answered from those member files (Borg reads and decrypts the
chunks it touches, nothing else) or with zeros; block status reports the
zero pieces as holes, so qemu-img and nbdcopy skip them.

The plugin trusts the map: borg-vm checked every member it names (a regular
file of the right size, see services/serving/mount.py) before starting nbdkit.
"""

import builtins
import collections
import errno
import os
import sys
from typing import Any

import nbdkit

# borg_vm lives two directories up; nbdkit's interpreter does not know the venv.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from borg_vm.format import names as fmt  # noqa: E402
from borg_vm.format.piecemap import PieceMap  # noqa: E402

API_VERSION = 2
# Open member files kept (requests are serialized, so an evicted one is never
# in use); well below the usual limit of 1024 open files.
OPEN_MEMBERS = 256
ZEROS = bytes(1024 * 1024)

_disk: dict[str, Any] = {}   # the map's header ("target", "archives") and "map"
# path -> fd, least recently used first
_open: collections.OrderedDict[str, int] = collections.OrderedDict()


def config(key, value):
    if key != "map":
        raise ValueError(f"unknown parameter {key!r} (this plugin takes map=FILE)")
    with builtins.open(value, "rb") as f:   # open() is nbdkit's below
        header, disk_map = PieceMap.read(f)
    _disk.update(target=header["target"], archives=header["archives"], map=disk_map)


def config_complete():
    if "map" not in _disk:
        raise ValueError("map=FILE is required")


def thread_model():
    # borg mount answers one FUSE request at a time anyway.
    return nbdkit.THREAD_MODEL_SERIALIZE_ALL_REQUESTS


def open(readonly):   # noqa: A001 (nbdkit's name)
    return {}


def get_size(h):
    return _disk["map"].size


def can_write(h):
    return False


def can_multi_conn(h):
    return True


def can_extents(h):
    return True


def pread(h, buf, offset, flags):
    view = memoryview(buf)
    for piece, lo, hi in _disk["map"].spans(offset, len(buf)):
        out = view[lo - offset:hi - offset]
        if piece.zero:
            _zero(out)
        else:
            _read(_member(piece), out, lo - piece.base)


def extents(h, count, offset, flags):
    zero = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(start, length, zero if is_zero else 0)
            for start, length, is_zero in _disk["map"].block_status(offset, count)]


def close(h):
    pass


def _zero(out):
    while len(out):
        n = min(len(out), len(ZEROS))
        out[:n] = ZEROS[:n]
        out = out[n:]


def _member(piece):
    """Return an open fd of the member file a data piece is in."""
    path = os.path.join(_disk["archives"][piece.layer],
                        fmt.member_name(_disk["target"], piece.member))
    fd = _open.pop(path, None)
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        while len(_open) >= OPEN_MEMBERS:
            os.close(_open.popitem(last=False)[1])
    _open[path] = fd
    return fd


def _read(fd, out, position):
    while len(out):
        n = os.preadv(fd, [out], position)
        if n == 0:
            nbdkit.set_error(errno.EIO)
            raise OSError(errno.EIO, f"member file ends before byte {position}")
        out, position = out[n:], position + n
