"""Reading a borg-vm archive back through 'borg export-tar', trusting nothing in it.

An archive is only as trustworthy as the repository. So only the format's
small members (domain.xml, checkpoint.xml, manifest.json) are ever held
whole, each refused unread above its cap (core.archive.SMALL_MEMBERS); data
members stream in pieces and must end within their disk; any other member
under disk/, and anything but a regular file under a name of the format
(a link, a device node...), means a damaged archive; members borg-vm does
not know are skipped as they stream.
"""

from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterator, Sequence

from ..adapters.borg import Borg
from ..core import archive as fmt
from ..core.tarstream import Member, TarFormatError, read_members
from ..errors import FormatError, IntegrityError


def read_small(borg: Borg, archive: str, names: tuple[str, ...]) -> dict[str, bytes]:
    """Return {name: contents} of the archive's named small members, in one export-tar.

    Raise FormatError if one is missing or the stream is damaged.
    """
    files: dict[str, bytes] = {}
    with exported(borg, archive, names) as stream:
        for member in read_members(stream):
            if member.name in names:
                files[member.name] = _read_small(_regular(member, archive), archive)
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
    action = f"export-tar of {archive}"
    with borg.export_tar(archive, paths) as proc:
        try:
            yield proc.stdout
        except TarFormatError as e:
            borg.finish(action, proc)
            raise FormatError(archive=archive, detail=str(e)) from e
        borg.finish(action, proc)


def pieces(src: BinaryIO, archive: str, sizes: dict[str, int], piece_size: int
           ) -> Iterator[tuple[str, tuple[str, int] | None, int, bytes]]:
    """Yield (member name, (disk target, layer) or None, offset, bytes) from a tar
    stream: data members in pieces of at most piece_size at their disk offsets
    (layer 0: the guest's view, i: frozen layer i; sizes: disk target ->
    virtual size), the format's small members whole; skip members borg-vm does
    not know, unread.

    Raise IntegrityError for a data member that ends beyond its disk's size,
    FormatError for another member under disk/ or frozen/ (a damaged archive).
    """
    for member in read_members(src):
        if not member.regular:
            if fmt.in_disk_dir(member.name) or member.name in fmt.SMALL_MEMBERS:
                _regular(member, archive)
            continue
        parsed = _data_member(member.name)
        if parsed is not None:
            target, layer, offset = parsed
            if target in sizes and offset + member.size > sizes[target]:
                raise IntegrityError(target=target, archive=archive, detail=(
                    f"member {member.name} ends at byte {offset + member.size}, beyond the "
                    f"disk's {sizes[target]} bytes: the archive is damaged"))
            for piece in member.chunks(piece_size):
                yield member.name, (target, layer), offset, piece
                offset += len(piece)
        elif fmt.in_disk_dir(member.name):
            raise FormatError(archive=archive, detail=f"unexpected member {member.name!r} "
                                                      f"({member.size} bytes): it is damaged")
        elif member.name in fmt.SMALL_MEMBERS:
            yield member.name, None, 0, _read_small(member, archive)


def _regular(member: Member, archive: str) -> Member:
    """Return the member if it is a regular file; raise FormatError if it is not."""
    if not member.regular:
        raise FormatError(archive=archive, detail=f"{member.name!r} is not a regular file "
                                                  "(a link or a device?): it is damaged")
    return member


def _data_member(name: str) -> tuple[str, int, int] | None:
    """Return (target, layer, offset) of a data member's name, or None."""
    top = fmt.parse_member(name)
    return (top[0], 0, top[1]) if top else fmt.parse_frozen_member(name)


def _read_small(member: Member, archive: str) -> bytes:
    """Return a small member of the format whole; raise FormatError, unread, if it is
    bigger than the format allows."""
    limit = fmt.SMALL_MEMBERS[member.name]
    if member.size > limit:
        raise FormatError(archive=archive, detail=f"{member.name} is {member.size} bytes, "
                                                  f"more than the {limit} borg-vm allows")
    return member.read()
