"""Reading a borg-vm archive back through 'borg export-tar', trusting nothing in it.

An archive is only as trustworthy as the repository. So only the format's
small members (domain.xml, checkpoint.xml, manifest.json, the maps of packs)
are ever held whole, each refused unread above its cap
(core.archive.SMALL_MEMBERS, packing.MAX_MAP_BYTES); data members stream in
pieces and must end within their disk; any other member under disk/ means a
damaged archive; members borg-vm does not know are skipped as they stream.
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
        if announced is not None and member.name != announced[0]:
            raise FormatError(archive=archive, detail=f"map of {announced[0]} is followed by "
                                                      f"{member.name!r}: it is damaged")
        packed = fmt.parse_map_member(member.name)
        parsed = _data_member(member.name)
        if packed is not None:
            announced = (packed, _read_map(member, archive))
        elif parsed is not None:
            target, layer, offset = parsed
            spans = announced[1] if announced else _one_span(offset, member.size)
            announced = None
            _check_spans(archive, member, spans, target, offset, sizes.get(target))
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


def _read_map(member: Member, archive: str) -> tuple[Extent, ...]:
    """Return the pieces a map member lists for its data member (checked against it
    when that arrives); raise FormatError, unread, if it is too big or malformed."""
    if member.size > packing.MAX_MAP_BYTES:
        raise FormatError(archive=archive, detail=f"{member.name} is {member.size} bytes, "
                                                  f"more than the {packing.MAX_MAP_BYTES} "
                                                  "borg-vm allows")
    try:
        return packing.map_from_json(member.read())
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise FormatError(archive=archive, detail=f"{member.name}: {e}") from e


def _one_span(offset: int, size: int) -> tuple[Extent, ...]:
    """The span of a member without a map: its bytes at offset (none if it is empty)."""
    return (Extent(offset, size),) if size else ()


def _check_spans(archive: str, member: Member, spans: tuple[Extent, ...], target: str,
                 offset: int, size: int | None) -> None:
    """Raise FormatError unless spans start at offset and add up to the member's size,
    IntegrityError if they end beyond the disk's size (when known)."""
    if not spans:
        return
    if spans[0].start != offset or sum(s.length for s in spans) != member.size:
        raise FormatError(archive=archive, detail=f"the map of {member.name} does not "
                                                  f"describe its {member.size} bytes")
    if size is not None and spans[-1].end > size:
        raise IntegrityError(target=target, archive=archive, detail=(
            f"member {member.name} ends at byte {spans[-1].end}, beyond the "
            f"disk's {size} bytes: the archive is damaged"))


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
