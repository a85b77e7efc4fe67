"""Streaming tar: our writer against Python's tarfile, our reader against GNU tar from tarfile."""

import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_vm.format.tarstream import (
    BLOCK,
    MAX_NAME_BYTES,
    MEMBER_MODE,
    RECORD,
    TarFormatError,
    TarWriter,
    read_members,
    write_all,
)

MTIME = 1795658400
LONG_NAME = "disk/" + "a-very-long-target-name-" * 6 + "/0000000000400000"


class Trickle(io.RawIOBase):
    """A raw pipe: reads return at most `step` bytes, writes take at most `step` bytes."""

    def __init__(self, data=b"", step=7):
        self.src = io.BytesIO(data)
        self.out = bytearray()
        self.step = step

    def readable(self):
        return True

    def writable(self):
        return True

    def readinto(self, b):
        data = self.src.read(min(len(b), self.step))
        b[:len(data)] = data
        return len(data)

    def write(self, b):
        n = min(len(b), self.step)
        self.out += bytes(b[:n])
        return n


def written(members, mtime=MTIME):
    out = io.BytesIO()
    tar = TarWriter(out, mtime)
    for name, data in members:
        tar.add(name, data)
    tar.close()
    return out.getvalue()


def read_all(raw, chunk_size=None):
    out = []
    for m in read_members(io.BytesIO(raw)):
        data = b"".join(m.chunks(chunk_size)) if chunk_size else m.read()
        assert len(data) == m.size
        out.append((m.name, data))
    return out


MEMBERS = [("domain.xml", b"<domain/>\n"), ("empty", b""), ("disk/vda/0000000000000000",
           bytes(range(256)) * 20), ("exact", b"x" * BLOCK), ("manifest.json", b"{}")]


def test_writer_output_readable_by_tarfile():
    raw = written(MEMBERS)
    assert len(raw) % BLOCK == 0
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tf:
        got = []
        for info in tf:
            assert info.isreg()
            assert (info.mode, info.mtime) == (MEMBER_MODE, MTIME)
            got.append((info.name, tf.extractfile(info).read()))
    assert got == MEMBERS


class NoEnd(io.RawIOBase):
    """A pipe whose writer holds it open: reads past the data block forever (here: fail)."""

    def __init__(self, data):
        self.src = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        data = self.src.read(len(b))
        assert data, "read past the end of the stream: a held pipe would block here"
        b[:len(data)] = data
        return len(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text("abc/", min_size=1, max_size=120),
                          st.integers(0, 3 * RECORD)), max_size=6))
def test_tarfile_reaches_the_end_without_an_end_of_file(members):
    """borg import-tar reads whole records with Python's tarfile and, its stdin held
    open (adapters/subproc.py hold_stdin), never sees an end of file: the writer's
    end marker and padding must let it finish on the data alone."""
    members = [(name, bytes([i % 251]) * size) for i, (name, size) in enumerate(members)]
    raw = written(members)
    assert len(raw) % RECORD == 0
    stream = io.BufferedReader(NoEnd(raw), buffer_size=8192)
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        got = [(info.name, tf.extractfile(info).read()) for info in tf]
    assert got == members


def test_writer_output_readable_by_read_members():
    assert read_all(written(MEMBERS)) == MEMBERS
    assert read_all(written(MEMBERS), chunk_size=100) == MEMBERS


def test_long_name_round_trip():
    assert len(LONG_NAME) > 100
    raw = written([(LONG_NAME, b"data"), ("short", b"s")])
    assert read_all(raw) == [(LONG_NAME, b"data"), ("short", b"s")]
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tf:
        assert [i.name for i in tf] == [LONG_NAME, "short"]


def gnu_tar(members, extra=()):
    """A GNU tar made by Python's tarfile, with optional non-regular members first."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        for info in extra:
            tf.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_read_members_reads_tarfile_gnu():
    members = [("domain.xml", b"<x/>"), (LONG_NAME, b"long" * 300), ("disk/vda/0", b""),
               ("manifest.json", b"{}" * 1000)]
    assert read_all(gnu_tar(members)) == members


def test_read_members_tells_directories_and_links_apart_and_skips_unread_data():
    d = tarfile.TarInfo("disk")
    d.type = tarfile.DIRTYPE
    s = tarfile.TarInfo("disk/link-" + "x" * 120)
    s.type, s.linkname = tarfile.SYMTYPE, "target-" + "y" * 120
    raw = gnu_tar([("a", b"A" * 1000), ("b", b"B" * 10)], extra=[d, s])
    got = [(m.name, m.regular) for m in read_members(io.BytesIO(raw))]  # data never read
    assert got == [("disk", False), (s.name, False), ("a", True), ("b", True)]


def test_read_members_partial_read_then_next():
    raw = written([("a", b"A" * 5000), ("b", b"B")])
    it = read_members(io.BytesIO(raw))
    a = next(it)
    assert next(a.chunks(10)) == b"A" * 10
    b = next(it)
    assert (b.name, b.read()) == ("b", b"B")
    assert list(it) == []


def test_read_members_through_a_trickling_pipe():
    raw = written(MEMBERS)
    got = [(m.name, m.read()) for m in read_members(io.BufferedReader(Trickle(raw), 5))]
    assert got == MEMBERS
    got = [(m.name, m.read()) for m in read_members(Trickle(raw, step=3))]
    assert got == MEMBERS


def test_writer_through_a_trickling_pipe():
    pipe = Trickle(step=5)
    tar = TarWriter(pipe, MTIME)
    for name, data in MEMBERS:
        tar.add(name, data)
    tar.close()
    assert bytes(pipe.out) == written(MEMBERS)


def test_write_all_rejects_non_blocking_output():
    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            return None

    with pytest.raises(BlockingIOError):
        write_all(Full(), b"x")


def unterminated(members):
    """The stream the writer makes for members, up to its end marker."""
    out = io.BytesIO()
    tar = TarWriter(out, MTIME)
    for name, data in members:
        tar.add(name, data)
    return out.getvalue()


@pytest.mark.parametrize("cut", [1, BLOCK - 1, BLOCK, BLOCK + 10, 2 * BLOCK + 100, -1, -BLOCK + 1])
def test_truncated_stream_raises(cut):
    members = [("a", b"A" * 1000), ("b", b"B" * 700)]
    raw, end = written(members), len(unterminated(members))
    assert raw[end:] == bytes(len(raw) - end)
    with pytest.raises(TarFormatError):
        read_all(raw[:cut if cut > 0 else end + cut])


def test_stream_without_end_blocks_raises():
    raw = unterminated([("a", b"A")])
    with pytest.raises(TarFormatError, match="ended"):
        read_all(raw)


def test_empty_stream_raises():
    with pytest.raises(TarFormatError):
        read_all(b"")


def test_garbage_header_raises():
    raw = written([("a", b"A")])
    damaged = b"\x01" * 100 + raw[100:]
    with pytest.raises(TarFormatError, match="bad tar header"):
        read_all(damaged)


def test_write_beyond_declared_size_raises():
    tar = TarWriter(io.BytesIO(), MTIME)
    tar.begin("a", 4)
    tar.write(b"ab")
    with pytest.raises(ValueError, match="overflows"):
        tar.write(b"cde")


def test_write_without_member_raises():
    tar = TarWriter(io.BytesIO(), MTIME)
    with pytest.raises(ValueError):
        tar.write(b"x")


def test_member_written_in_pieces():
    out = io.BytesIO()
    tar = TarWriter(out, MTIME)
    tar.begin("disk/vda/0000000000000000", 1500)
    for piece in (b"a" * 500, memoryview(b"b" * 500), bytearray(b"c" * 500)):
        tar.write(piece)
    tar.add("manifest.json", b"{}")
    tar.close()
    assert read_all(out.getvalue()) == [("disk/vda/0000000000000000",
                                         b"a" * 500 + b"b" * 500 + b"c" * 500),
                                        ("manifest.json", b"{}")]


def test_empty_write_after_complete_member_keeps_stream_valid():
    out = io.BytesIO()
    tar = TarWriter(out, MTIME)
    tar.begin("a", 3)
    tar.write(b"abc")
    tar.write(b"")
    tar.add("b", b"B")
    tar.close()
    assert read_all(out.getvalue()) == [("a", b"abc"), ("b", b"B")]


def test_large_size_header_round_trip():
    # disk members can exceed tar's 8 GiB octal size field; GNU base-256 handles it
    size = 9 << 30
    out = io.BytesIO()
    TarWriter(out, MTIME).begin("disk/vda/0000000000000000", size)
    header = out.getvalue()
    assert len(header) == BLOCK
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert info.size == size


def test_read_members_refuses_a_huge_long_name_unread():
    """A GNU long name is read whole: one claiming a GiB fails at its header."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, 1 << 30
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + bytes(BLOCK)   # the GiB never comes
    with pytest.raises(TarFormatError, match=f"long name of {1 << 30} bytes"):
        list(read_members(io.BytesIO(raw)))
    assert MAX_NAME_BYTES >= 4096


def test_read_into_fills_views_through_a_trickling_pipe():
    raw = written(MEMBERS)
    got = []
    for m in read_members(Trickle(raw, step=3)):
        buf = bytearray(m.size)
        view = memoryview(buf)
        while m.left:
            n = min(m.left, 1000)
            m.read_into(view[:n])
            view = view[n:]
        got.append((m.name, bytes(buf)))
    assert got == MEMBERS


def test_read_into_refuses_more_than_is_left():
    m = next(read_members(io.BytesIO(written(MEMBERS))))
    with pytest.raises(ValueError, match="11 bytes asked, 10 left in domain.xml"):
        m.read_into(memoryview(bytearray(11)))


def test_read_into_a_stream_that_ends_early_raises():
    m = next(read_members(io.BytesIO(written(MEMBERS)[:BLOCK + 4])))
    with pytest.raises(TarFormatError, match="ended 6 bytes early"):
        m.read_into(memoryview(bytearray(10)))


VALID = gnu_tar([("domain.xml", b"<x/>"), (LONG_NAME, b"long" * 300),
                 ("disk/vda/0000000000000000", bytes(range(256)) * 8)])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_damaged_stream_yields_members_or_raises_tar_format_error(data):
    """Bytes changed, cut or appended anywhere in a valid stream: members come out
    (read whole, never more than the stream holds) or TarFormatError, nothing else."""
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    raw = raw[:data.draw(st.integers(0, len(raw)))] + data.draw(st.binary(max_size=64))
    try:
        for m in read_members(io.BytesIO(bytes(raw))):
            assert len(m.read()) == m.size <= len(raw)
    except TarFormatError:
        pass
