"""Reading borg-vm archives back from Borg, trusting nothing in them.

Two ways from Borg's streams, the same members in the same order (and a
third, for mount: an archive's directory in a borg mount, small_files_in and
pieces_in, checked the same way):

- 'borg export-tar': one tar stream, each member with its header;
- 'borg list' of the paths beside 'borg extract --stdout' of them: extract
  writes the bare contents one after the other, cut by the sizes list gives,
  both read in step. Borg hands out data with less CPU this way (export-tar
  copies it through Python's tarfile in 16 KiB pieces; bench/RESULTS.md,
  section 5, times both handing out the same archives into /dev/null, and
  bench/NOTES.md, "Restore (item 5)", both for one 2 GiB archive), but the
  list costs one more Borg start, so it pays for archives with much data (see
  EXTRACT_FROM).

Every Borg command starts up for a sizeable fraction of a second before it
hands anything out (bench/NOTES.md, "Full backup (item 1)": the fixed cost of
a run), so a restore reads its archives through ``read_ahead``: the next
archive's borg starts while the one before is read and written.

An archive is only as trustworthy as the repository. So only the format's
small members (domain.xml, checkpoint.xml, manifest.json, the state members,
the maps of packs) are ever held whole, each refused unread above its cap
(format.names.SMALL_MEMBERS, packing.MAX_MAP_BYTES); data members stream in
pieces and must end within their disk; any other member under disk/, and
anything but a regular file under a name of the format (a link, a device
node...), means a damaged archive; members borg-vm does not know are skipped
as they stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import cast

from borg_vm import prefetch
from borg_vm.adapters import subproc
from borg_vm.adapters.borg import Item, Repository, items
from borg_vm.adapters.rawimage import DIRECT_ALIGN
from borg_vm.core import domxml
from borg_vm.core.extent import Extent, covers_data
from borg_vm.core.extent_arrays import ExtentArray, Joiner
from borg_vm.errors import FormatError, IntegrityError, RepositoryLocked
from borg_vm.format import names as fmt
from borg_vm.format import packing
from borg_vm.format.manifest import DiskRecord, Manifest, SealedRecord
from borg_vm.format.summary import ArchiveInfo
from borg_vm.format.tarstream import Member, Readable, TarFormatError, read_members

# Archives with at least this many data bytes to read are read with 'borg list'
# + 'borg extract --stdout' (see above), smaller ones with 'borg export-tar'.
EXTRACT_FROM = 256 * 1024 * 1024
REGULAR = "-"   # borg list's item types: a regular file, a hard link
HARDLINK = "h"
# Reading a borg's output through a buffer lets restore wait for its first byte
# (see _Started); bigger reads bypass the buffer.
PEEK_BUFFER = 64 * 1024


@dataclass(frozen=True)
class Read:
    """What to read of one archive: the paths (all if none) and the data bytes they hold."""

    archive: str
    paths: tuple[str, ...]
    data_bytes: int = 0


def read_small(borg: Repository, archive: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """Return {name: contents} of the archive's named small members, in one export-tar.

    Raise FormatError if one is missing or the stream is damaged.
    """
    with read_ahead(borg, [Read(archive, names)]) as reads, next(reads) as found:
        return small_files(found, archive, names)


def small_files(found: Iterator[Member], archive: str, names: tuple[str, ...]
                ) -> dict[str, bytes]:
    """Return {name: contents} of the named small members among found.

    Raise FormatError if one is missing, not a regular file or bigger than the
    format allows.
    """
    files = {m.name: _read_small(_regular(m, archive), archive)
             for m in found if m.name in names}
    check_present(archive, files, names)
    return files


def check_archive(info: ArchiveInfo, files: dict[str, bytes],
                  names: tuple[str, ...] = (fmt.MANIFEST,)) -> Manifest:
    """The one check of what an archive holds besides its data (which Tally.check
    checks against the manifest): verify, restore, mount and boot all judge an
    archive by it.

    Given the archive as listed (its name and comment) and the small members read
    of it (files), return its manifest. Raise FormatError if a member of names
    (manifest.json always) is missing, the manifest is bad or disagrees with the
    archive's name or comment (so what was planned from the comment, image sizes
    among it, is what the manifest says) or lacks the code of the key that signed
    the comment, or another member in files differs from the manifest's digest of
    it or is not listed there, or a domain.xml or checkpoint.xml is not what
    libvirt writes (core.domxml's rules).
    """
    check_present(info.archive, files, tuple(dict.fromkeys((fmt.MANIFEST, *names))))
    manifest = Manifest.from_json(files[fmt.MANIFEST], info.archive)
    problem = manifest.disagreement(info) or next(
        (p for name in sorted(files) if name != fmt.MANIFEST
         and (p := manifest.file_problem(name, files[name]))), None)
    if problem:
        raise FormatError(archive=info.archive, detail=problem)
    if fmt.DOMAIN_XML in files:
        domain_xml(info.archive, files)
    if fmt.CHECKPOINT_XML in files:
        _xml_check(info.archive, fmt.CHECKPOINT_XML, domxml.checkpoint_to_redefine,
                   files[fmt.CHECKPOINT_XML], info.name.checkpoint)
    return manifest


def domain_xml(archive: str, files: dict[str, bytes]) -> str:
    """Return the archive's domain.xml (in files) as text; raise FormatError if it
    is not a libvirt domain's (see domxml.read_domain_xml)."""
    return _xml_check(archive, fmt.DOMAIN_XML, domxml.read_domain_xml, files[fmt.DOMAIN_XML])


def _xml_check(archive: str, name: str, parse: Callable[..., str], *args: object) -> str:
    try:
        return parse(*args)
    except ValueError as e:
        raise FormatError(archive=archive, detail=f"{name} {e}") from e


def check_present(archive: str, files: dict[str, bytes], names: tuple[str, ...]) -> None:
    """Raise FormatError naming the members of names that files lacks."""
    missing = [n for n in names if n not in files]
    if missing:
        raise FormatError(archive=archive, detail=f"no {', '.join(missing)}")


@contextlib.contextmanager
def read_ahead(borg: Repository, reads: Sequence[Read]
               ) -> Iterator[Iterator[AbstractContextManager[Iterator[Member]]]]:
    """Yield an iterator of one context manager per read, in order; each yields the
    members of its read in archive order and waits for borg after.

    The first read's borg starts at once, and each next one's when a read is
    taken from the iterator, so Borg starts up while the archive before is being
    read and written. Leaving the block stops every borg still running. A damaged
    stream raises FormatError, unless borg failed (then borg's error).
    """
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(_Started(borg, r)) for r in reads[:1]]

        def each() -> Iterator[AbstractContextManager[Iterator[Member]]]:
            for i in range(len(reads)):
                if i + 1 < len(reads):
                    started.append(stack.enter_context(_Started(borg, reads[i + 1])))
                yield started[i].members()

        yield each()


class _Started:
    """The borg commands of one read, started (so they start up); members() reads them.

    They start beside other borgs of ours, so with the brief lock wait (see
    adapters.borg.BRIEF_LOCK_WAIT); if the repository stays locked they are run
    again with the full one. As a context manager: leaving it stops them if they
    still run.
    """

    def __init__(self, borg: Repository, read: Read):
        self.borg = borg
        self.read = read
        self.extract = read.data_bytes >= EXTRACT_FROM
        self.command = "extract" if self.extract else "export-tar"
        self._stack = contextlib.ExitStack()
        self._data: subproc.Stream
        self._list: subproc.Stream | None = None

    def __enter__(self) -> _Started:
        self._start(brief=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self, brief: bool) -> None:
        r = self.read
        with contextlib.ExitStack() as stack:
            if self.extract:
                self._data = stack.enter_context(
                    self.borg.extract_stdout(r.archive, r.paths, brief=brief))
                self._list = stack.enter_context(
                    self.borg.list_items(r.archive, r.paths, brief=brief))
            else:
                self._data = stack.enter_context(
                    self.borg.export_tar(r.archive, r.paths, brief=brief))
                self._list = None
            self._stack = stack.pop_all()

    def _outputs(self) -> list[tuple[str, subproc.Stream]]:
        return [(self.command, self._data)] + ([("list", self._list)] if self._list else [])

    def _ready(self) -> dict[str, io.BufferedReader]:
        """Wait until each command writes or ends; return their outputs by command.
        Run them again with the full lock wait if one ended locked out."""
        outputs = {}
        for command, proc in self._outputs():
            outputs[command] = _buffered(proc)
            if not outputs[command].peek(1):
                try:
                    self.borg.finish(f"{command} of {self.read.archive}", proc)
                except RepositoryLocked:
                    self._stack.close()
                    self._start(brief=False)
                    return {c: _buffered(p) for c, p in self._outputs()}
        return outputs

    @contextlib.contextmanager
    def members(self) -> Iterator[Iterator[Member]]:
        """Yield the read's members; wait for its borg commands after."""
        archive = self.read.archive
        try:
            outputs = self._ready()
            try:
                if self.extract:
                    yield _listed(outputs[self.command], items(outputs["list"]), archive)
                else:
                    yield read_members(outputs[self.command])
            except TarFormatError as e:
                self.borg.finish(f"{self.command} of {archive}", self._data)
                raise FormatError(archive=archive, detail=str(e)) from e
            for command, proc in self._outputs():
                self.borg.finish(f"{command} of {self.read.archive}", proc)
        finally:
            self._stack.close()


def _buffered(proc: subproc.Stream) -> io.BufferedReader:
    """Return proc's output, buffered so that it can be peeked at."""
    # An unbuffered pipe (a FileIO), which typeshed types as IO[bytes].
    return io.BufferedReader(cast(io.RawIOBase, proc.stdout), PEEK_BUFFER)


def _listed(src: Readable, listed: Iterator[Item], archive: str) -> Iterator[Member]:
    """Yield the items listed as members, the regular files' read from src, the
    concatenation of their contents; unread data is skipped.

    Other items (directories, links, devices) come out with .regular False, as
    from a tar stream, and have no contents (list shows a symbolic link's target
    length as its size; extract writes nothing of it). A hard link that claims
    some was made by hand, and whether 'borg extract --stdout' writes those bytes
    is borg's business: FormatError, as for a stream longer or shorter than its
    members.
    """
    for item in listed:
        if not isinstance(item.size, int) or item.size < 0 or (
                item.type == HARDLINK and item.size):
            raise FormatError(archive=archive, detail=(
                f"unexpected member {item.path!r} of type {item.type!r} and size "
                f"{item.size!r}: it is damaged"))
        regular = item.type == REGULAR
        member = Member(src, item.path, item.size if regular else 0, regular=regular)
        yield member
        member.skip()
    if src.read(1):
        raise FormatError(archive=archive, detail="borg extract wrote more than its members")


def pieces(members: Iterator[Member], archive: str, sizes: dict[str, int],
           buffers: prefetch.Buffers) -> Iterator[Piece]:
    """Yield (member name, (disk target, layer) or None, offset, data) from members:
    data members in pieces at their disk offsets (following the map member of a
    pack; layer 0: the guest's view, i: sealed layer i; sizes: disk target ->
    virtual size), the format's small members whole (bytes); skip members
    borg-vm does not know, unread.

    Data pieces are read into the buffers in turn, back to back in one buffer
    while they fit (so the small pieces of a fragmented disk share a buffer and
    can be handed on together, see buffer_batches); a piece stays valid until
    its buffer is taken again, which waits for the writes that hold it
    (prefetch.Buffers.hold). They end on multiples of the
    buffers' size on the disk (aligned writes, whatever a member's offset) and
    start on DIRECT_ALIGN boundaries of their buffer.

    Raise IntegrityError for data that ends beyond its disk's size, FormatError
    for another member under disk/ or frozen/ or a map not followed by its data
    (a damaged archive).
    """
    room = _Room(buffers)
    announced: tuple[str, Sequence[Extent]] | None = None
    for member in members:
        if not member.regular:
            if fmt.in_disk_dir(member.name) or member.name in fmt.SMALL_MEMBERS:
                _regular(member, archive)
            continue
        if announced is not None and member.name != announced[0]:
            raise FormatError(archive=archive, detail=f"map of {announced[0]} is followed by "
                                                      f"{member.name!r}: it is damaged")
        packed = fmt.parse_map_member(member.name)
        parsed = _data_member(member.name)
        if packed is not None:
            check_small_size(archive, member.name, member.size)
            announced = (packed, read_map(archive, member.name, member.read()))
        elif parsed is not None:
            target, layer, offset = parsed
            spans = announced[1] if announced else one_piece(offset, member.size)
            announced = None
            check_pieces(archive, member.name, member.size, spans, target, sizes.get(target))
            for span in spans:
                for at, piece in _aligned(span, room):
                    member.read_into(piece)
                    yield member.name, (target, layer), at, piece
        elif fmt.in_disk_dir(member.name):
            raise FormatError(archive=archive, detail=f"unexpected member {member.name!r} "
                                                      f"({member.size} bytes): it is damaged")
        elif member.name in fmt.SMALL_MEMBERS:
            yield member.name, None, 0, _read_small(member, archive)
    if announced is not None:
        raise FormatError(archive=archive, detail=f"the archive ends after the map of "
                                                  f"{announced[0]}: it is damaged")


class _Room:
    """Room for pieces in buffers (all of one size), taken in turn: each piece at the
    next DIRECT_ALIGN boundary of the current buffer if it fits there, else at the
    start of the next buffer."""

    def __init__(self, buffers: prefetch.Buffers):
        self.size = buffers.size
        self._buffers = buffers
        self._buf: memoryview | None = None
        self._used = 0

    def take(self, n: int) -> memoryview:
        """Return a view of n bytes (n <= the buffers' size) for the next piece."""
        if self._buf is None or self._used + n > self.size:
            self._buf = self._buffers.take()
            self._used = 0
        view = self._buf[self._used:self._used + n]
        self._used += -(-n // DIRECT_ALIGN) * DIRECT_ALIGN
        return view


def _aligned(span: Extent, room: _Room) -> Iterator[tuple[int, memoryview]]:
    """Yield (disk offset, view for its data) covering span, each piece ending on a
    multiple of the buffers' size on the disk."""
    at = span.start
    while at < span.end:
        piece = room.take(min(span.end - at, room.size - at % room.size))
        yield at, piece
        at += len(piece)


def buffer_batches(pieces: Iterable[Piece]) -> Iterator[list[Piece]]:
    """Yield pieces' items (name, key, offset, data) in lists: the data pieces that
    share a buffer together (a list is complete when the next buffer is started),
    any other item alone. One hand-over between threads per buffer, not per
    piece: a fragmented disk's 64 KiB pieces cost thousands of them a second."""
    batch: list[Piece] = []
    held: object = None
    for item in pieces:
        data = item[3]
        buf = data.obj if item[1] is not None and isinstance(data, memoryview) else None
        if batch and (buf is None or buf is not held):
            yield batch
            batch = []
        batch.append(item)
        held = buf
        if buf is None:
            yield batch
            batch = []
    if batch:
        yield batch


Key = tuple[str, int]   # (disk target, layer): 0 the guest's view, i >= 1 a sealed layer
Piece = tuple[str, "Key | None", int, "memoryview | bytes"]


class Tally:
    """The one read-and-verify loop: what a pass over an archive's members saw,
    checked against its manifest afterwards (restore, verify).

    ``count(pieces)`` passes pieces (see ``pieces``) through, hashing the data
    of each (target, layer) in keys (every key if keys is None) and recording
    the extents it covers (as the runs they form: a fragmented disk's
    millions of pieces take 17 bytes a run), and keeping the format's small
    members whole. After the pass, ``manifest(info)`` parses and checks
    manifest.json (and the XML members seen; see check_archive), letting go
    of its bytes, and ``check(manifest)`` raises IntegrityError unless each
    record's data covers exactly its extents, in order, and hashes to its
    digest.
    """

    def __init__(self, archive: str, keys: Iterable[Key] | None = None):
        self.archive = archive
        self.keys = None if keys is None else set(keys)
        self.files: dict[str, bytes] = {}
        self._written: dict[Key, Joiner] = {}
        self._digests: dict[Key, hashlib._Hash] = {}

    def count(self, pieces: Iterable[Piece]) -> Iterator[Piece]:
        for name, key, offset, piece in pieces:
            if key is None:
                self.files[name] = bytes(piece)
            elif self.keys is None or key in self.keys:
                self._digests.setdefault(key, hashlib.sha256()).update(piece)
                self._written.setdefault(key, Joiner()).add(offset, len(piece))
            yield name, key, offset, piece

    def written(self, key: Key) -> ExtentArray:
        """Return the extents the data of key seen so far covers, as runs in stream order."""
        joiner = self._written.get(key)
        return joiner.extents() if joiner else ExtentArray.of(())

    def manifest(self, info: ArchiveInfo, names: tuple[str, ...] = (fmt.MANIFEST,)) -> Manifest:
        """Return the archive's manifest, checked with the small members seen (see
        check_archive; info is the archive as listed). Its bytes are let go: they
        may be tens of MiB."""
        manifest = check_archive(info, self.files, names)
        self.files.pop(fmt.MANIFEST)
        return manifest

    def check(self, manifest: Manifest, keys: Iterable[Key] | None = None) -> None:
        """Raise IntegrityError unless the data of each key (all the manifest lists
        when None; then also FormatError for data it does not list) matches its
        record; FormatError if a key has no record."""
        records = _records(self.archive, manifest)
        if keys is None:
            unknown = set(self._written) - set(records)
            if unknown:
                raise FormatError(archive=self.archive, detail=f"data of {sorted(unknown)} "
                                                               "that its manifest does not list")
            keys = records
        for key in keys:
            digest = self._digests.get(key) or hashlib.sha256()
            verify_record(self.archive, key, _pick(self.archive, records, key),
                          self.written(key), digest.hexdigest())


def record_of(archive: str, manifest: Manifest, key: Key) -> DiskRecord | SealedRecord:
    """Return the manifest's record of key; raise FormatError if it has none."""
    return _pick(archive, _records(archive, manifest), key)


def _pick(archive: str, records: dict[Key, DiskRecord | SealedRecord], key: Key
          ) -> DiskRecord | SealedRecord:
    if key not in records:
        target, layer = key
        raise FormatError(archive=archive, detail=(
            f"manifest has no disk {target}" if not layer
            else f"manifest has no sealed layer {layer} of disk {target}"))
    return records[key]


def _records(archive: str, manifest: Manifest) -> dict[Key, DiskRecord | SealedRecord]:
    """The records of data the archive holds (not a disk whose image is an archive
    of its own, version 6: data members of it are damage)."""
    records: dict[Key, DiskRecord | SealedRecord] = {(t, 0): d for t, d in manifest.disks.items()
                                                     if d.image is None}
    records.update({(t, f.layer): f for t, d in manifest.disks.items() for f in d.sealed})
    return records


def verify_record(archive: str, key: Key, record: DiskRecord | SealedRecord,
                  written: Sequence[Extent], digest: str) -> None:
    """Raise IntegrityError unless written (in the order the data came) covers the
    record's data extents and digest matches."""
    target = key[0] if not key[1] else f"{key[0]} layer {key[1]}"
    try:
        same = covers_data(written, record.extents)
    except ValueError as e:
        raise IntegrityError(target=target, archive=archive, detail=str(e)) from e
    if not same:
        raise IntegrityError(target=target, archive=archive, detail="data extents differ")
    if digest != record.sha256:
        raise IntegrityError(target=target, archive=archive, detail="sha256 differs")


def read_map(archive: str, name: str, raw: bytes) -> Sequence[Extent]:
    """Return the pieces the map member `name` lists for its data member (to be
    checked against it, check_pieces); raise FormatError if it is malformed."""
    try:
        return packing.map_from_json(raw)
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise FormatError(archive=archive, detail=f"{name}: {e}") from e


def one_piece(offset: int, size: int) -> tuple[Extent, ...]:
    """The pieces of a data member without a map: its bytes at offset (none if empty)."""
    return (Extent(offset, size),) if size else ()


def check_pieces(archive: str, name: str, size: int, pieces: Sequence[Extent],
                 target: str, disk_size: int | None) -> None:
    """Raise FormatError unless the pieces of data member `name` (size bytes) start
    at the offset it is named by and add up to its size, IntegrityError if they
    end beyond the disk's size (when known)."""
    if not pieces:
        return
    member = _data_member(name)
    assert member is not None, f"{name} is no data member"
    offset = member[2]
    if pieces[0].start != offset or sum(p.length for p in pieces) != size:
        raise FormatError(archive=archive, detail=f"the map of {name} does not "
                                                  f"describe its {size} bytes")
    if disk_size is not None and pieces[-1].end > disk_size:
        raise IntegrityError(target=target, archive=archive, detail=(
            f"member {name} ends at byte {pieces[-1].end}, beyond the "
            f"disk's {disk_size} bytes"))


# --- an archive in a borg mount (services/serving/mount.py) ----------------------------

def small_files_in(root: str, archive: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """Return {name: contents} of the small members names of an archive found in
    its directory root (a borg mount; to be checked: check_archive, which names
    those missing); raise
    FormatError if one is not a regular file or is too big."""
    files = {}
    for name in names:
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(archive=archive, detail=f"{name} is not a file")
        check_small_size(archive, name, st.st_size)
        with open(path, "rb") as f:
            files[name] = f.read(fmt.SMALL_MEMBERS[name] + 1)
    return files


def pieces_in(root: str, archive: str, target: str) -> list[Sequence[Extent]]:
    """Return the data members of disk target in an archive's directory root (a
    borg mount), each as the pieces of
    the disk it holds (one, or a pack's as its map lists them). Raise FormatError
    for anything else in its directory (a damaged or hostile archive: a symbolic
    link, a directory, a name that is no offset, a map without its data member
    or that does not describe it)."""
    where = os.path.join(root, fmt.disk_prefix(target))
    try:
        entries = list(os.scandir(where))
    except FileNotFoundError:
        return []   # a disk with no data in this archive has no directory
    data, maps = {}, {}
    for entry in entries:
        name = f"{fmt.disk_prefix(target)}/{entry.name}"
        packed = fmt.parse_map_member(name)
        if (packed is None and fmt.parse_member(name) is None) or not entry.is_file(
                follow_symlinks=False):
            raise FormatError(archive=archive, detail=f"unexpected member {name!r}: "
                                                        "it is damaged")
        size = entry.stat(follow_symlinks=False).st_size
        if packed is not None:
            maps[packed] = (entry.path, name, size)
        else:
            data[name] = size
    lone = sorted(set(maps) - set(data))
    if lone:
        raise FormatError(archive=archive, detail=f"map of {lone[0]} without its data "
                                                    "member: it is damaged")
    return [pieces for name, size in data.items()
            if (pieces := _pieces_in(archive, target, name, size, maps.get(name)))]


def _pieces_in(archive: str, target: str, name: str, size: int,
            map_file: tuple[str, str, int] | None) -> Sequence[Extent]:
    """Return the pieces of one data member: its map's (read from the mount, capped
    and checked), or its bytes at its offset."""
    if map_file is None:
        member = fmt.parse_member(name)
        assert member is not None, "pieces_in keeps data members only"
        return one_piece(member[1], size)
    path, map_name, map_size = map_file
    check_small_size(archive, map_name, map_size)
    with open(path, "rb") as f:
        pieces = read_map(archive, map_name, f.read(map_size + 1))
    check_pieces(archive, name, size, pieces, target, None)
    return pieces


def _regular(member: Member, archive: str) -> Member:
    """Return the member if it is a regular file; raise FormatError if it is not."""
    if not member.regular:
        raise FormatError(archive=archive, detail=f"{member.name!r} is not a regular file "
                                                  "(a link or a device?): it is damaged")
    return member


def _data_member(name: str) -> tuple[str, int, int] | None:
    """Return (target, layer, offset) of a data member's name, or None."""
    top = fmt.parse_member(name)
    return (top[0], 0, top[1]) if top else fmt.parse_sealed_member(name)


def _read_small(member: Member, archive: str) -> bytes:
    """Return a small member of the format whole; raise FormatError, unread, if it is
    bigger than the format allows."""
    check_small_size(archive, member.name, member.size)
    return member.read()


def check_small_size(archive: str, name: str, size: int) -> None:
    """Raise FormatError if the format's small member name (or a pack's map) is
    bigger than it allows."""
    limit = packing.MAX_MAP_BYTES if fmt.parse_map_member(name) else fmt.SMALL_MEMBERS[name]
    if size > limit:
        raise FormatError(archive=archive, detail=f"{name} is {size} bytes, "
                                                  f"more than the {limit} borg-vm allows")
