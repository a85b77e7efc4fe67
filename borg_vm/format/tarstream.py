"""Streaming tar, the container of a borg-vm archive (written to borg import-tar,
read back from borg export-tar).

Only what the format needs: regular members with names and sizes known up
front, written and read strictly in order through pipes, never seeking and
never holding a member in memory.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import IO, Protocol

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
READ_SIZE = 1024 * 1024
MEMBER_MODE = 0o600
# A GNU long name is read whole; real ones are paths, far below this.
MAX_NAME_BYTES = 64 * 1024


# What the writer takes as data: anything memoryview() takes.
Data = bytes | bytearray | memoryview


class Readable(Protocol):
    """A binary stream read into buffers (a pipe's BufferedReader, a file)."""

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...

    def read(self, size: int = -1, /) -> bytes: ...


class TarFormatError(Exception):
    """The stream is not a tar stream of the kind borg-vm writes."""


def write_all(out: IO[bytes], data: Data) -> None:
    """Write every byte of data to out (raw pipes may take less per call)."""
    view = memoryview(data).cast("B")
    while view:
        n = out.write(view)
        if n is None:
            raise BlockingIOError("non-blocking output is not supported")
        view = view[n:]


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


class TarWriter:
    """Write tar members to a binary output, in order."""

    def __init__(self, out: IO[bytes], mtime: int):
        self.out = out
        self.mtime = mtime
        self._remaining = 0
        self._size = 0
        self.written = 0

    def _put(self, data: Data) -> None:
        write_all(self.out, data)
        self.written += len(data)

    def begin(self, name: str, size: int) -> None:
        """Start a member of exactly size bytes; write them with ``write`` next."""
        assert self._remaining == 0, "previous member not complete"
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, MEMBER_MODE, self.mtime
        self._put(info.tobuf(format=tarfile.GNU_FORMAT))
        self._remaining = self._size = size
        self._end_member_if_done()

    def write(self, data: Data) -> None:
        n = len(data)
        if n == 0:  # else a complete member would get its padding a second time
            return
        if n > self._remaining:
            raise ValueError(f"member data overflows its size by {n - self._remaining}")
        self._put(data)
        self._remaining -= n
        self._end_member_if_done()

    def _end_member_if_done(self) -> None:
        if self._remaining == 0:
            self._put(_padding(self._size))

    def add(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        if data:
            self.write(data)

    def close(self) -> None:
        """End the archive: two zero blocks, then zeros up to a whole record, as tar
        does. Python's tarfile (borg's reader) reads whole records, so a reader
        that never sees an end of file still gets to the end marker."""
        assert self._remaining == 0, "last member not complete"
        end = self.written + 2 * BLOCK
        self._put(bytes(2 * BLOCK + -end % RECORD))


def _read_exact(src: Readable, n: int) -> bytearray:
    """Return exactly n bytes from src, read into one buffer (no joining copies)."""
    buf = bytearray(n)
    _fill(src, memoryview(buf))
    return buf


def _fill(src: Readable, view: memoryview) -> None:
    """Read exactly len(view) bytes from src into view."""
    got, n = 0, len(view)
    while got < n:
        k = src.readinto(view[got:])
        if not k:
            raise TarFormatError(f"stream ended {n - got} bytes early")
        got += k


class Member:
    """A member being read: name, size, and its data read in pieces; `regular` is
    False for anything else a tar holds (directory, link, device, FIFO...)."""

    def __init__(self, src: Readable, name: str, size: int, regular: bool = True):
        self._src = src
        self.name = name
        self.size = size
        self.regular = regular
        self._left = size

    def chunks(self, chunk_size: int = READ_SIZE) -> Iterator[bytearray]:
        """Yield the rest of the member's data in pieces of at most chunk_size bytes."""
        return self.take(self._left, chunk_size)

    def take(self, n: int, chunk_size: int = READ_SIZE) -> Iterator[bytearray]:
        """Yield the member's next n bytes in pieces of at most chunk_size bytes;
        raise TarFormatError if fewer than n are left."""
        if n > self._left:
            raise TarFormatError(f"{self.name}: {n} bytes asked for, {self._left} left")
        while n:
            piece = _read_exact(self._src, min(chunk_size, n))
            self._left -= len(piece)
            n -= len(piece)
            yield piece

    @property
    def left(self) -> int:
        """Bytes of the member's data not read yet."""
        return self._left

    def read_into(self, view: memoryview) -> None:
        """Fill view (at most ``left`` bytes long) with the member's next bytes."""
        if len(view) > self._left:
            raise ValueError(f"{len(view)} bytes asked, {self._left} left in {self.name}")
        _fill(self._src, view)
        self._left -= len(view)

    def skip(self) -> None:
        for _ in self.chunks():
            pass

    def read(self) -> bytes:
        return b"".join(self.chunks())



def read_members(src: Readable) -> Iterator[Member]:
    """Yield the members of a tar stream, in order (those not regular files too,
    with .regular False: the reader decides whether they may be there at all).

    The caller reads (or skips) each member before asking for the next one;
    unread data is skipped. Raise TarFormatError on a damaged stream.
    """
    long_name = None
    while True:
        header = _read_exact(src, BLOCK)
        if header == bytes(BLOCK):
            return
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.TarError as e:
            raise TarFormatError(f"bad tar header: {e}") from e
        member = Member(src, long_name or info.name, info.size,
                        regular=info.type in (tarfile.REGTYPE, tarfile.AREGTYPE))
        long_name = None
        if info.type == tarfile.GNUTYPE_LONGNAME:
            if info.size > MAX_NAME_BYTES:
                raise TarFormatError(f"long name of {info.size} bytes (at most {MAX_NAME_BYTES})")
            long_name = member.read().rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif info.type != tarfile.GNUTYPE_LONGLINK:
            yield member
            member.skip()
        else:
            member.skip()
        _read_exact(src, len(_padding(info.size)))
