"""manifest.json's own JSON reader and writer (format/extent_json.py): what it reads
is what json.loads reads, what it refuses json.loads or the format refuses, and
its memory is bounded whatever the input."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borg_vm.core.extent import DATA, ZERO, Extent
from borg_vm.core.extent_arrays import ExtentArray
from borg_vm.format.extent_json import MAX_DEPTH, MAX_HELD, dump_chunks, loads
from borg_vm.format.names import MAX_MANIFEST_BYTES

MiB = 1024 * 1024
SCALARS = (st.none() | st.booleans() | st.integers() | st.text(max_size=12)
           | st.floats(allow_nan=False, allow_infinity=False))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=25)
EXTENT_ROWS = st.lists(st.tuples(st.integers(0, 2**63), st.integers(1, 2**63),
                                 st.sampled_from([DATA, ZERO])).map(list), max_size=8)


def plain(value):
    """value with each ExtentArray as the list of [start, length, kind] json.loads makes."""
    if isinstance(value, ExtentArray):
        return [list(row) for row in value.rows()]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def same_as_json(raw: bytes) -> None:
    """Assert loads reads raw as json.loads does, or refuses it."""
    try:
        ours = loads(raw)
    except ValueError:
        return
    assert json.dumps(plain(ours)) == json.dumps(json.loads(raw))


@settings(max_examples=150, deadline=None)
@given(JSON, st.sampled_from([None, 1, (", ", ": ")]))
def test_documents_read_as_json_loads_reads_them(doc, layout):
    raw = json.dumps(doc, indent=layout if layout == 1 else None,
                     separators=layout if isinstance(layout, tuple) else None).encode()
    assert json.dumps(plain(loads(raw))) == json.dumps(json.loads(raw))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6), JSON, max_size=3), EXTENT_ROWS,
       st.sampled_from([None, 2]))
def test_extents_lists_read_as_arrays(doc, rows, indent):
    doc = {**doc, "extents": rows, "frozen": [{"extents": rows}]}
    raw = json.dumps(doc, indent=indent).encode()
    ours = loads(raw)
    assert isinstance(ours["extents"], ExtentArray)
    assert isinstance(ours["frozen"][0]["extents"], ExtentArray)
    assert plain(ours) == json.loads(raw)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=60) | JSON.map(lambda d: json.dumps({"extents": d}).encode()))
def test_any_bytes_read_as_json_loads_reads_them_or_are_refused(raw):
    same_as_json(raw)


@settings(max_examples=150, deadline=None)
@given(JSON, EXTENT_ROWS)
def test_chunks_are_json_dumps_byte_for_byte(doc, rows):
    """The manifest's code is computed over dump_chunks: it must write what json.dumps
    wrote when the archive was signed."""
    doc = {"a": doc, "extents": rows, "b": [doc, {"extents": rows}]}
    compact = json.dumps(doc, separators=(",", ":")).encode()
    with_arrays = json.loads(compact)
    with_arrays["extents"] = with_arrays["b"][1]["extents"] = ExtentArray.of(
        Extent(*row) for row in rows)
    assert b"".join(dump_chunks(with_arrays)) == compact
    assert b"".join(dump_chunks(loads(compact))) == compact


def test_chunks_cut_a_long_extents_list():
    extents = ExtentArray.of(Extent(i * 2, 1, ZERO) for i in range(10_000))
    pieces = list(dump_chunks({"extents": extents}))
    assert len(pieces) > 3 and max(map(len, pieces)) < 100_000
    assert json.loads(b"".join(pieces))["extents"][-1] == [19_998, 1, "zero"]


@pytest.mark.parametrize("raw", [
    # what json.loads refuses
    b"", b" ", b"{", b"[1,]", b"[,1]", b'{"a":1,}', b'{"a" 1}', b"{1:2}", b"[01]", b"[1.]",
    b"[.5]", b"[-]", b"[+1]", b"[0x10]", b"[1e]", b'["a\\x"]', b'["\\u12"]', b'["a\nb"]',
    b'["\x00"]', b"[tru]", b"[True]", b"[None]", b"[1] [2]", b"\xef\xbb\xbf[1]", b'["\xff"]',
    b"[1]\xc3", '"é"'.encode("utf-16"), b"'a'", b"[1]]",
    # what json.loads accepts and JSON does not
    b"[NaN]", b"[Infinity]", b"[-Infinity]",
    # a key twice: two readers could disagree on what the document says
    b'{"a":1,"a":1}', b'{"extents":[],"extents":[]}',
])
def test_what_json_or_this_reader_refuses(raw):
    with pytest.raises(ValueError):
        loads(raw)


@pytest.mark.parametrize("extents", [
    b'[[0,1,"data"],]', b'[[0,1,"data"]', b'[[0,1,"data"]', b'[[0,1]]', b'[[0,1,"data",1]]',
    b'[[-1,1,"data"]]', b'[[0,-1,"data"]]', b'[[00,1,"data"]]', b'[[0,1.0,"data"]]',
    b'[[0,1e3,"data"]]', b'[[0,true,"data"]]', b'[[0,null,"zero"]]', b'[[0,1,"hole"]]',
    b'[[0,1,"DATA"]]', b'[[0,1,"d\\u0061ta"]]', b'[[0,1,data]]', b'[{"start":0}]', b"[0]",
    b'[[0,10000000000000000000,"data"]]', b'[[' + b"9" * 5000 + b',1,"data"]]',
    b'[[0,1,"data"] [2,1,"data"]]', b'[[0,1,"data"],,[2,1,"data"]]',
])
def test_extents_are_start_length_kind_or_refused(extents):
    """Numbers as the writer writes them (no sign, fraction, exponent or escape):
    json.loads would read some of these; the format never holds them."""
    with pytest.raises(ValueError, match="extent at byte"):
        loads(b'{"extents":' + extents + b"}")


def test_extents_allow_json_whitespace_as_version_2_indented():
    doc = loads(b'{"extents" :\n [ \r\n\t[ 0 , 512 , "data" ] ,\n  [512,1,"zero"]\n ]\n}')
    assert doc["extents"] == (Extent(0, 512), Extent(512, 1, ZERO))
    assert loads(b'{"extents":[ ]}')["extents"] == ()


def test_strings_decode_as_json_loads_decodes_them():
    raw = json.dumps({"s": "\ud800 \U0001f600 é \\ \" \x7f"}).encode()
    assert loads(raw) == json.loads(raw)
    raw = b'{"s":"\\ud83d\\ude00 \xc3\xa9"}'
    assert loads(raw) == json.loads(raw) == {"s": "\U0001f600 é"}


def test_every_truncation_of_a_manifest_is_refused():
    raw = json.dumps({"format": "borg-vm", "disks": {"vda": {
        "extents": [[0, 512, "data"], [4096, 1 << 20, "zero"]], "layers": [{"name": "S"}],
        "ok": [True, False, None, -1.5e3]}}}).encode()
    for n in range(len(raw)):
        with pytest.raises(ValueError):
            loads(raw[:n])


def test_nesting_is_bounded():
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    with pytest.raises(ValueError, match="nest"):
        loads(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(ValueError, match="nest"):
        loads(b"[" * 100_000)


@pytest.mark.parametrize("item", [b"[]", b"{}", b"0", b'"ab"', b"null", b'{"x":[1]}'])
def test_values_besides_extents_are_bounded(item):
    """json.loads makes 22 million lists of a 64 MiB '[[],[],...]'; this refuses it
    once the values it made hold MAX_HELD bytes."""
    count = MAX_HELD // 16 + 1    # sys.getsizeof(None) == 16, the smallest
    with pytest.raises(ValueError, match="hold more than"):
        loads(b"[" + b",".join([item] * count) + b"]")


def test_a_string_counts_as_python_holds_it():
    """One character beyond the BMP makes Python hold a string at 4 bytes a character."""
    with pytest.raises(ValueError, match="hold more than"):
        loads(b'["\\ud83d\\ude00' + b"a" * (MAX_HELD // 4) + b'"]')
    assert len(loads(b'["' + b"a" * (MAX_HELD // 2) + b'"]')[0]) == MAX_HELD // 2


# --- memory: a hostile manifest just under the size cap -------------------------------

# Runs in a child process (its peak RSS is its own): parses the manifest in the
# file argv[1] and checks its code, printing the peak RSS the parse added to
# the manifest's bytes, in bytes.
_PARSE = textwrap.dedent("""\
    import sys
    from borg_vm.errors import FormatError
    from borg_vm.format.names import MAX_MANIFEST_BYTES; from borg_vm.format.manifest import Manifest

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    with open(sys.argv[1], "rb") as f:
        raw = f.read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                 # resets VmHWM to the RSS now
    before = status("VmRSS:")
    try:
        m = Manifest.from_json(raw, "web01.x.y")
        outcome = f"{sum(len(d.extents) for d in m.disks.values())} extents"
        outcome += f", {m.code_problem(bytes(32))}, {m.summary().disks['vda'].zero_bytes}"
    except FormatError as e:
        outcome = e.message
    print(status("VmHWM:") - before, outcome)
    """)


def hostile_manifest(path, size: int, count: int) -> None:
    """Write a manifest of one disk of size bytes listing count 512-byte zero extents
    a sector apart, written in pieces (it is tens of MiB)."""
    head = {"format": "borg-vm", "version": 4, "domain": "web01", "uuid": "u",
            "snapshot": "x", "checkpoint": "borgvm-20261126T020000Z", "level": "full",
            "parent_checkpoint": None, "parent_archive": None, "parent_id": None,
            "time": "2026-11-26T02:00:00Z", "block_size": 262144,
            "borg_vm_version": "0.1.0", "domain_xml_sha256": "0" * 64,
            "checkpoint_xml_sha256": "0" * 64}
    disk = {"level": "full", "format": "qcow2", "source": "/v", "virtual_size": size}
    with open(path, "wb") as f:
        f.write(json.dumps(head, separators=(",", ":")).encode()[:-1])
        f.write(b',"disks":{"vda":' + json.dumps(disk, separators=(",", ":")).encode()[:-1])
        f.write(b',"extents":[')
        for lo in range(0, count, 100_000):
            f.write(b",".join(b'[%d,512,"zero"]' % (i * 1024)
                              for i in range(lo, min(count, lo + 100_000))))
            if lo + 100_000 < count:
                f.write(b",")
        f.write(b'],"sha256":"' + b"0" * 64 + b'","layers":[{"name":"base","path":"/v",'
                b'"format":"qcow2"}],"frozen":[]}},"auth":["' + b"0" * 16 + b'","'
                + b"0" * 64 + b'"]}')


def parse_peak(path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _PARSE, str(path)], capture_output=True,
                         text=True, timeout=300, env=env, check=True).stdout
    peak, outcome = out.split(" ", 1)
    return int(peak), outcome.strip()


@pytest.mark.parametrize("size, outcome", [
    (4 << 30, "2000001 extents, its manifest's authentication code is wrong, 1024000512"),
    (512 << 20, "Archive web01.x.y is not a borg-vm archive this version can read: bad "
                "manifest: 2000001 extents on a disk of 536870912 bytes: more than one a "
                "512-byte sector"),
], ids=["allowed-by-its-size", "refused-by-its-size"])
def test_a_hostile_manifest_under_the_cap_is_read_in_bounded_memory(tmp_path, size, outcome):
    """2,000,001 extents in ~47 MiB (issue 20's probe: json.loads took 691 MB): as
    arrays they take 34 MiB; the code is checked over them without a list of them;
    a disk of less than 1 GiB cannot have so many (extent.max_extents)."""
    path = tmp_path / "manifest.json"
    hostile_manifest(path, size, 2_000_001)
    assert 40 * MiB < path.stat().st_size < MAX_MANIFEST_BYTES
    peak, said = parse_peak(path)
    assert said == outcome
    assert peak < 80 * MiB, peak
