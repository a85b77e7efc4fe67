"""The mount action: serve a domain's disks as of a checkpoint as read-only NBD
exports, reading data from the repository only as it is read.

::

    borg mount (FUSE)              nbdkit + nbdkit_plugin.py          clients
    RUN/archives/A1/disk/vda/...   vda's map: byte -> (archive,  -->  qemu-img, nbdcopy,
    RUN/archives/A2/disk/vda/...     member, offset) or zeros         QEMU, nbdinfo
                                   (format/piecemap.py)

One ``borg mount`` of the domain's archives (each archive is loaded by Borg
when first touched, each chunk read and decrypted when read), one nbdkit per
disk on its own unix socket. Before anything is served, every archive of each
disk's chain is checked as restore checks it, short of hashing the data: its
manifest parses and agrees with the archive's name and comment (and the top's
domain.xml is what libvirt writes: reader.check_archive), the disk keeps
its size along the chain, and its data members are regular files covering
exactly the manifest's data extents (a pack's as its map lists them, the map
checked as restore checks it). The SHA-256 of a disk's data cannot be
checked without reading all of it (``borg-vm verify`` does); Borg checks every
chunk it reads (its id hash, and its MAC when encrypted).

A point whose disks are complete images (format version 6, Borg 2) is served
more simply: each disk's image archive, named by the ID the point's
authenticated record gives, mounted alone (``borg mount -a aid:ID`` at
RUN/archives.TARGET), and its one file served as it is by nbdkit's file
plugin, once it is a regular file of the disk's size.

Runs in the foreground until SIGINT or SIGTERM, then stops the servers and
unmounts; a mount left by a borg-vm that was killed is unmounted by the next.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from borg_vm import runtime
from borg_vm.adapters import nbdkit, subproc
from borg_vm.adapters.borg import ImageStore, Repository, mounted
from borg_vm.core import chain
from borg_vm.errors import (
    BorgError,
    FormatError,
    IntegrityError,
    Interrupted,
    NbdkitError,
    SocketInUse,
    SocketPathUnusable,
    UsageError,
)
from borg_vm.format import names as fmt
from borg_vm.format import piecemap, reader
from borg_vm.format.manifest import DiskRecord, Manifest
from borg_vm.format.summary import ArchiveInfo
from borg_vm.services import catalog

log = logging.getLogger(__name__)

ARCHIVES = "archives"      # the borg mount, in the mount's run directory
SOCKET_SUFFIX = ".sock"
PIDFILE_SUFFIX = ".pid"     # nbdkit's, in the mount's run directory
MAP_SUFFIX = ".map"         # a disk's map for its nbdkit (piecemap.PieceMap.write)
# A unix socket path is at most 107 bytes on Linux (sun_path is 108 with its NUL).
MAX_SOCKET_PATH = 107
# While serving, how long each wait on one server lasts before looking at the next.
WATCH_SECONDS = 0.5


@dataclass(frozen=True)
class MountOptions:
    socket: str
    checkpoint: str | None = None
    disks: tuple[str, ...] = ()
    owner: tuple[int, int] | None = None   # (uid, gid) the sockets are handed to
    allow_unauthenticated: bool = False


@dataclass
class Served:
    domain: str
    checkpoint: str
    disks: dict[str, dict]   # target -> {"socket", "uri", "size"}

    def to_json(self) -> dict:
        return {"domain": self.domain, "checkpoint": self.checkpoint, "disks": self.disks}


def uri(socket_path: str) -> str:
    """Return the NBD URI of the export nbdkit serves on socket_path."""
    return f"nbd+unix:///?socket={socket_path}"


def mount(borg: Repository, domain: str, opts: MountOptions, ready: Callable[[Served], None]
          ) -> Served:
    """Serve domain's disks as of opts.checkpoint (default: the newest) until SIGINT
    or SIGTERM; call ready(Served) once every export listens. Return what was served.

    Raise ArchiveNotFound, BrokenChain, UnknownDisk, FormatError or IntegrityError
    (a chain that fails the checks: nothing is served), SocketInUse, a Borg or
    nbdkit error, or NbdkitError/BorgError if a server dies while serving.
    """
    archives, top = catalog.restore_point(borg, domain, opts.checkpoint,
                                          opts.allow_unauthenticated)
    targets = opts.disks or tuple(sorted(top.summary.disks))
    chains = {t: chain.restore_chain(archives, top, t) for t in targets}   # [top]: an image
    store = catalog.image_store(borg, top)
    if store is not None:
        return _mount_images(borg, store, top, targets, opts, ready)
    _clean_stale(borg)   # first: a killed mount's nbdkit may still hold a socket
    with _socket_paths(opts.socket, targets) as sockets, runtime.mount_dir() as run:
        mnt = os.path.join(run, ARCHIVES)
        os.mkdir(mnt, 0o700)
        try:
            with borg.mount(mnt, borg.archive_glob(domain + ".")) as borg_proc:
                maps = {t: _disk_map(mnt, links, t) for t, links in chains.items()}
                served = Served(domain, top.name.checkpoint, {
                    t: {"socket": sockets[t], "uri": uri(sockets[t]), "size": m.size}
                    for t, (m, _dirs) in maps.items()})
                with _servers(run, sockets, maps, opts.owner) as servers:
                    _serve(servers, [borg_proc], lambda: ready(served))
        finally:
            _remove_files(run)
            with contextlib.suppress(OSError):
                os.rmdir(mnt)
    return served


def _mount_images(borg: Repository, store: ImageStore, top: ArchiveInfo,
                  targets: tuple[str, ...], opts: MountOptions,
                  ready: Callable[[Served], None]) -> Served:
    """mount of a point whose disks are complete images (format version 6): each
    disk's image archive, named by the ID top's authenticated record gives, mounted
    alone by Borg 2 and its one file served as it is by nbdkit's file plugin."""
    _clean_stale(borg)
    with _socket_paths(opts.socket, targets) as sockets, runtime.mount_dir() as run, \
            contextlib.ExitStack() as stack:
        stack.callback(_remove_files, run)
        borgs, servers, disks = [], {}, {}
        for t in targets:
            disk = top.summary.disks[t]
            assert disk.image is not None, "a record of images names an image per disk"
            mnt = os.path.join(run, f"{ARCHIVES}.{t}")
            os.mkdir(mnt, 0o700)
            stack.callback(_rmdir, mnt)
            borgs.append(stack.enter_context(store.mount_image(disk.image.id, mnt)))
            path = _image_file(mnt, top, t, disk.virtual_size)
            servers[t] = stack.enter_context(nbdkit.serve_file(
                sockets[t], path, os.path.join(run, t + PIDFILE_SUFFIX)))
            _hand_over(sockets[t], opts.owner)
            disks[t] = {"socket": sockets[t], "uri": uri(sockets[t]), "size": disk.virtual_size}
        served = Served(top.name.domain, top.name.checkpoint, disks)
        _serve(servers, borgs, lambda: ready(served))
    return served


def _image_file(mnt: str, top: ArchiveInfo, target: str, size: int) -> str:
    """Return the path of target's image in its mounted image archive; raise
    IntegrityError unless it is a regular file of the disk's size."""
    path = os.path.join(mnt, fmt.image_archive_name(top.name, target), target)
    try:
        st = os.stat(path)
    except OSError as e:
        raise IntegrityError(target=target, archive=top.archive,
                             detail=f"its image archive holds no file {target}: "
                                    f"{e.strerror}") from e
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        raise IntegrityError(target=target, archive=top.archive,
                             detail=f"its image holds {st.st_size} bytes, the disk {size}")
    return path


def _rmdir(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


@contextlib.contextmanager
def _socket_paths(path: str, targets: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Yield each disk's socket: path itself for one disk (unless path is a
    directory), else path/TARGET.sock (the directory made 0700 if missing, and
    removed on the way out if this made it and it is empty: nbdkit removes its
    sockets). Raise SocketInUse if one exists and is not a stale socket (which is
    removed), SocketPathUnusable if a directory it needs is missing or not one."""
    path = os.path.abspath(path)
    made = False
    if len(targets) == 1 and not os.path.isdir(path):
        sockets = {targets[0]: path}
    else:
        made = _socket_dir(path)
        sockets = {t: os.path.join(path, t + SOCKET_SUFFIX) for t in targets}
    try:
        for p in sockets.values():
            if len(p.encode()) > MAX_SOCKET_PATH:
                raise UsageError(detail=f"socket path {p} is longer than {MAX_SOCKET_PATH} "
                                        "bytes, the most a unix socket may have")
            _check_parent(p)
            _check_free(p)
        yield sockets
    finally:
        if made:
            with contextlib.suppress(OSError):   # not empty: someone put a file there
                os.rmdir(path)


def _socket_dir(path: str) -> bool:
    """Make the directory of several disks' sockets (0700) unless it exists; return
    whether this made it. Raise SocketPathUnusable if path is something else or
    cannot be made."""
    _check_parent(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise SocketPathUnusable(path=path, detail=(
                "it is not a directory (with several disks, --socket names the directory "
                "of their sockets, PATH/TARGET.sock)")) from None
        return False
    except OSError as e:
        raise SocketPathUnusable(path=path, detail=f"cannot create it ({e.strerror})") from e
    return True


def _check_parent(path: str) -> None:
    """Raise SocketPathUnusable unless the directory path is in exists."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise SocketPathUnusable(path=path, detail=(
            f"{parent} is not a directory" if os.path.lexists(parent)
            else f"{parent} does not exist"))


def _check_free(path: str) -> None:
    """Raise SocketInUse unless nothing is at path or it is a socket nobody listens on
    (left by a killed server; removed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(path=path, detail="exists and is not a socket")
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
    raise SocketInUse(path=path, detail="is a socket in use")


def _clean_stale(borg: Repository) -> None:
    """Unmount and remove what mounts of killed borg-vm runs left behind."""
    for path in runtime.stale_mount_dirs():
        log.info("removing %s, left by a borg-vm mount that was killed", path)
        try:
            for pidfile in glob.glob(os.path.join(path, "*" + PIDFILE_SUFFIX)):
                if nbdkit.kill_stale(pidfile):
                    log.info("killed its nbdkit %s", os.path.basename(pidfile))
            # the archives of a chain, or each disk's image archive (ARCHIVES.TARGET)
            mnts = [n for n in os.listdir(path)
                    if n == ARCHIVES or n.startswith(ARCHIVES + ".")]
            for name in mnts:
                if mounted(os.path.join(path, name)):
                    borg.umount(os.path.join(path, name))
            runtime.remove_mount_dir(path, tuple(mnts))
        except (BorgError, NbdkitError, OSError) as e:
            log.warning("cannot remove %s: %s", path, e)


def _disk_map(mnt: str, links: list[ArchiveInfo], target: str
              ) -> tuple[piecemap.PieceMap, list[str]]:
    """Return the map of disk target across its chain (full first) in the borg mount,
    and each archive's directory there. Raise FormatError or IntegrityError if an
    archive fails the checks."""
    layers, dirs = [], []
    for i, a in enumerate(links):
        root = os.path.join(mnt, a.archive)
        # The top's domain.xml too, as restore checks it: what one refuses, so does the other.
        names = (fmt.DOMAIN_XML, fmt.MANIFEST) if i == len(links) - 1 else (fmt.MANIFEST,)
        record = _record(reader.check_archive(a, reader.small_files_in(root, a.archive, names),
                                              names), a, target)
        try:
            layers.append(piecemap.layer_pieces(i, record.extents,
                                                reader.pieces_in(root, a.archive, target)))
        except ValueError as e:
            raise IntegrityError(target=target, archive=a.archive, detail=str(e)) from e
        dirs.append(root)
    size = record.virtual_size   # the top's: every archive of the chain claims it
    return piecemap.PieceMap(size, piecemap.resolve(layers, size)), dirs


def _record(manifest: Manifest, a: ArchiveInfo, target: str) -> DiskRecord:
    record = manifest.disks.get(target)
    if record is None:
        raise FormatError(archive=a.archive, detail=f"manifest has no disk {target}")
    return record


@contextlib.contextmanager
def _servers(run: str, sockets: dict[str, str],
             maps: dict[str, tuple[piecemap.PieceMap, list[str]]],
             owner: tuple[int, int] | None) -> Iterator[dict[str, subproc.Stream]]:
    """Start one nbdkit per disk (its socket readable and writable by its owner only,
    owner (uid, gid) if given); yield them; stop them all on the way out."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for t, (disk_map, dirs) in maps.items():
            map_file = os.path.join(run, f"{t}{MAP_SUFFIX}")
            with open(os.open(map_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                disk_map.write(f, {"target": t, "archives": dirs})
            servers[t] = stack.enter_context(
                nbdkit.serve(sockets[t], map_file, os.path.join(run, t + PIDFILE_SUFFIX)))
            _hand_over(sockets[t], owner)
        yield servers


def _hand_over(socket_path: str, owner: tuple[int, int] | None) -> None:
    """Make a served socket its owner's alone (owner (uid, gid) if given).
    Whoever may connect reads the guest's data; connecting takes write
    permission, which nbdkit gives no one else (umask 022) already."""
    os.chmod(socket_path, 0o600)
    if owner is not None:
        os.chown(socket_path, *owner)


def _serve(servers: dict[str, subproc.Stream], borgs: list[subproc.Stream],
           ready: Callable[[], None]) -> None:
    """Call ready(), then return on SIGINT or SIGTERM (from the call of ready() on:
    the exports listen, so a stop is the normal end), shielded from a second one
    while the caller stops everything; raise NbdkitError or BorgError if a server
    exits first."""
    try:
        ready()
        while True:
            for proc in [*servers.values(), *borgs]:
                if proc.exited(WATCH_SECONDS):
                    if proc in borgs:
                        raise BorgError(action="mount", detail="borg mount exited: " + (
                            "; ".join(proc.stderr_lines()[-3:]).strip() or
                            f"exit code {proc.proc.returncode}"))
                    raise nbdkit.failure(proc)
    except Interrupted as e:
        log.info("stopping (%s)", e.kwargs["signal"])
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _remove_files(run: str) -> None:
    """Remove the map and pid files of the run directory (never through the mount)."""
    for name in os.listdir(run):
        path = os.path.join(run, name)
        if name.endswith((MAP_SUFFIX, PIDFILE_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

