"""Reading a borg-vm archive back through 'borg export-tar', trusting nothing in it.

An archive is only as trustworthy as the repository. So only the format's
small members (domain.xml, checkpoint.xml, manifest.json, the maps of packs)
are ever held whole, each refused unread above its cap
(core.archive.SMALL_MEMBERS, packing.MAX_MAP_BYTES); data members stream in
pieces and must end within their disk; any other member under disk/, and
anything but a regular file under a name of the format (a link, a device
node...), means a damaged archive; members borg-vm does not know are skipped
as they stream.
"""

from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterator, Sequence

from ..adapters.borg import Borg
from ..core import archive as fmt
from ..core import packing
from ..core.extent import Extent
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
    (following the map member of a pack; layer 0: the guest's view, i: frozen
    layer i; sizes: disk target -> virtual size), the format's small members
    whole; skip members borg-vm does not know, unread.

    Raise IntegrityError for data that ends beyond its disk's size, FormatError
    for another member under disk/ or frozen/ or a map not followed by its data
    (a damaged archive).
    """
    announced: tuple[str, tuple[Extent, ...]] | None = None
    for member in read_members(src):
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
                at = span.start
                for piece in member.take(span.length, piece_size):
                    yield member.name, (target, layer), at, piece
                    at += len(piece)
        elif fmt.in_disk_dir(member.name):
            raise FormatError(archive=archive, detail=f"unexpected member {member.name!r} "
                                                      f"({member.size} bytes): it is damaged")
        elif member.name in fmt.SMALL_MEMBERS:
            yield member.name, None, 0, _read_small(member, archive)
    if announced is not None:
        raise FormatError(archive=archive, detail=f"the archive ends after the map of "
                                                  f"{announced[0]}: it is damaged")


def read_map(archive: str, name: str, raw: bytes) -> tuple[Extent, ...]:
    """Return the pieces the map member `name` lists for its data member (to be
    checked against it, check_pieces); raise FormatError if it is malformed."""
    try:
        return packing.map_from_json(raw)
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise FormatError(archive=archive, detail=f"{name}: {e}") from e


def one_piece(offset: int, size: int) -> tuple[Extent, ...]:
    """The pieces of a data member without a map: its bytes at offset (none if empty)."""
    return (Extent(offset, size),) if size else ()


def check_pieces(archive: str, name: str, size: int, pieces: tuple[Extent, ...],
                 target: str, disk_size: int | None) -> None:
    """Raise FormatError unless the pieces of data member `name` (size bytes) start
    at the offset it is named by and add up to its size, IntegrityError if they
    end beyond the disk's size (when known)."""
    if not pieces:
        return
    offset = _data_member(name)[2]
    if pieces[0].start != offset or sum(p.length for p in pieces) != size:
        raise FormatError(archive=archive, detail=f"the map of {name} does not "
                                                  f"describe its {size} bytes")
    if disk_size is not None and pieces[-1].end > disk_size:
        raise IntegrityError(target=target, archive=archive, detail=(
            f"member {name} ends at byte {pieces[-1].end}, beyond the "
            f"disk's {disk_size} bytes: the archive is damaged"))


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
    check_small_size(archive, member.name, member.size)
    return member.read()


def check_small_size(archive: str, name: str, size: int) -> None:
    """Raise FormatError if the format's small member name (or a pack's map) is
    bigger than it allows."""
    limit = packing.MAX_MAP_BYTES if fmt.parse_map_member(name) else fmt.SMALL_MEMBERS[name]
    if size > limit:
        raise FormatError(archive=archive, detail=f"{name} is {size} bytes, "
                                                  f"more than the {limit} borg-vm allows")
