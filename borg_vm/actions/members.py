"""Reading a borg-vm archive back from Borg, trusting nothing in it.

Two ways, the same members in the same order:

- 'borg export-tar': one tar stream, each member with its header;
- 'borg list' of the paths, then the bare contents 'borg extract --stdout'
  writes one after the other, cut by the listed sizes. Borg hands out data
  ~25% cheaper this way (export-tar copies it through Python's tarfile in
  16 KiB pieces), but the list costs a Borg start (~0.45 s here; run while
  extract starts), so it pays for archives with much data (see EXTRACT_FROM).

An archive is only as trustworthy as the repository. So only the format's
small members (domain.xml, checkpoint.xml, manifest.json) are ever held
whole, each refused unread above its cap (core.archive.SMALL_MEMBERS); data
members stream in pieces and must end within their disk; any other member
under disk/ means a damaged archive; members borg-vm does not know are
skipped as they stream.
"""

from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterator, Sequence

from ..adapters.borg import Borg, Item
from ..core import archive as fmt
from ..core.tarstream import Member, TarFormatError, read_members
from ..errors import FormatError, IntegrityError

# Archives with at least this many data bytes to read are read with 'borg list'
# + 'borg extract --stdout' (see above), smaller ones with 'borg export-tar'.
EXTRACT_FROM = 256 * 1024 * 1024
REGULAR = "-"   # borg list's item type of a regular file


def read_small(borg: Borg, archive: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """Return {name: contents} of the archive's named small members, in one export-tar.

    Raise FormatError if one is missing or the stream is damaged.
    """
    files: dict[str, bytes] = {}
    with exported(borg, archive, names) as stream:
        for member in read_members(stream):
            if member.name in names:
                files[member.name] = _read_small(member, archive)
    check_present(archive, files, names)
    return files


def check_present(archive: str, files: dict[str, bytes], names: tuple[str, ...]) -> None:
    """Raise FormatError naming the members of names that files lacks."""
    missing = [n for n in names if n not in files]
    if missing:
        raise FormatError(archive=archive, detail=f"no {', '.join(missing)}")


@contextlib.contextmanager
def exported(borg: Borg, archive: str, paths: Sequence[str]) -> Iterator[BinaryIO]:
    """Yield the tar stream of 'borg export-tar' of archive's paths; wait for borg after.

    A damaged stream raises FormatError, unless borg failed (then borg's error).
    """
    with borg.export_tar(archive, paths) as proc:
        try:
            yield proc.stdout
        except TarFormatError as e:
            borg.finish("export-tar", proc)
            raise FormatError(archive=archive, detail=str(e)) from e
        borg.finish("export-tar", proc)


@contextlib.contextmanager
def streamed(borg: Borg, archive: str, paths: Sequence[str], data_bytes: int
             ) -> Iterator[Iterator[Member]]:
    """Yield the members of the archive's paths in archive order, read the cheaper
    way for data_bytes of data (see EXTRACT_FROM); wait for borg after.

    A damaged stream raises FormatError, unless borg failed (then borg's error).
    """
    if data_bytes < EXTRACT_FROM:
        with exported(borg, archive, paths) as stream:
            yield read_members(stream)
        return
    with borg.extract_stdout(archive, paths) as proc:
        items = borg.list_items(archive, paths)   # while extract starts
        try:
            yield _listed(proc.stdout, items, archive)
        except TarFormatError as e:
            borg.finish("extract", proc)
            raise FormatError(archive=archive, detail=str(e)) from e
        borg.finish("extract", proc)


def _listed(src: BinaryIO, items: list[Item], archive: str) -> Iterator[Member]:
    """Yield the regular files of items as members read from src, the concatenation
    of their contents; unread data is skipped.

    Other items (directories, symbolic links) have no contents, as in a tar
    stream; one that claims some anyway was made by hand, and whether 'borg
    extract --stdout' writes those bytes is borg's business: FormatError, as for
    a stream longer or shorter than its members.
    """
    for item in items:
        if not isinstance(item.size, int) or item.size < 0 or (
                item.type != REGULAR and item.size):
            raise FormatError(archive=archive, detail=(
                f"unexpected member {item.path!r} of type {item.type!r} and size "
                f"{item.size!r}: it is damaged"))
        if item.type == REGULAR:
            member = Member(src, item.path, item.size)
            yield member
            member.skip()
    if src.read(1):
        raise FormatError(archive=archive, detail="borg extract wrote more than its members")


def pieces(members: Iterator[Member], archive: str, sizes: dict[str, int],
           buffers: Sequence[memoryview]
           ) -> Iterator[tuple[str, tuple[str, int] | None, int, memoryview | bytes]]:
    """Yield (member name, (disk target, layer) or None, offset, data) from members:
    data members in pieces at their disk offsets (layer 0: the guest's view, i:
    frozen layer i; sizes: disk target -> virtual size), the format's small
    members whole (bytes); skip members borg-vm does not know, unread.

    Data pieces are read into the buffers in turn, so a piece stays valid until
    len(buffers) more have been yielded; they end on multiples of the buffers'
    size on the disk (aligned writes, whatever a member's offset).

    Raise IntegrityError for a data member that ends beyond its disk's size,
    FormatError for another member under disk/ or frozen/ (a damaged archive).
    """
    turn = 0
    size = len(buffers[0])
    for member in members:
        parsed = _data_member(member.name)
        if parsed is not None:
            target, layer, offset = parsed
            if target in sizes and offset + member.size > sizes[target]:
                raise IntegrityError(target=target, archive=archive, detail=(
                    f"member {member.name} ends at byte {offset + member.size}, beyond the "
                    f"disk's {sizes[target]} bytes: the archive is damaged"))
            while member.left:
                piece = buffers[turn % len(buffers)][:min(member.left, size - offset % size)]
                turn += 1
                member.read_into(piece)
                yield member.name, (target, layer), offset, piece
                offset += len(piece)
        elif fmt.in_disk_dir(member.name):
            raise FormatError(archive=archive, detail=f"unexpected member {member.name!r} "
                                                      f"({member.size} bytes): it is damaged")
        elif member.name in fmt.SMALL_MEMBERS:
            yield member.name, None, 0, _read_small(member, archive)


def _data_member(name: str) -> tuple[str, int, int] | None:
    """Return (target, layer, offset) of a data member's name, or None."""
    top = fmt.parse_member(name)
    return (top[0], 0, top[1]) if top else fmt.parse_frozen_member(name)


def _read_small(member: Member, archive: str) -> bytes:
    """Return a small member of the format whole; raise FormatError, unread, if it is
    bigger than the format allows."""
    check_small_size(archive, member.name, member.size)
    return member.read()


def check_small_size(archive: str, name: str, size: int) -> None:
    """Raise FormatError if the format's small member name is bigger than it allows."""
    limit = fmt.SMALL_MEMBERS[name]
    if size > limit:
        raise FormatError(archive=archive, detail=f"{name} is {size} bytes, "
                                                  f"more than the {limit} borg-vm allows")
