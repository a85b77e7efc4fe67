"""borg-vm mount against hand-made archives in a real repository: what it serves
(qemu-img, nbdinfo), how it stops, and the chains it refuses to serve."""

import io
import json
import os
import signal
import subprocess
import tarfile

import pytest
from handmade import (
    DOMAIN,
    PACK,
    PACK_BYTES,
    PACK_MAP,
    PACK_NAME,
    SIZE,
    domain_xml,
    manifest,
    packed_disk,
    sign,
    write_archive,
    write_packed_archive,
)
from mounting import compare, failed_mount, mounts_under, start_mount, wait_gone
from realstack import BLOCK, CHUNKER, TIMESTAMP, MiB

from borg_vm.format import names as fmt
from borg_vm.format import packing

DATA = bytes(range(256)) * (3 * MiB // 256)     # 3 MiB at offset 0, then zeros


@pytest.fixture(autouse=True)
def _private_runtime_dir(tmp_path, monkeypatch):
    """Each test's mounts live in its own runtime directory."""
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))


def one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("borg-vm: "), \
        proc.stderr
    return lines[0]


def test_serves_the_disk_reads_zeros_and_stops_on_sigterm(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    sock = tmp_path / "vda.sock"
    m = start_mount(DOMAIN, borg.repo, str(sock))
    assert m.served["disks"] == {"vda": {"socket": str(sock), "uri": m.uri("vda"),
                                         "size": SIZE}}
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    assert compare(m.uri("vda"), DATA + bytes(SIZE - len(DATA)), tmp_path).returncode == 0
    info = json.loads(subprocess.run(["nbdinfo", "--json", m.uri("vda")], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["exports"][0]["is_read_only"] is True
    holes = subprocess.run(["nbdinfo", "--map", m.uri("vda")], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    assert holes[0].split()[:2] == ["0", str(len(DATA))] and "data" in holes[0], holes
    assert holes[1].split()[:2] == [str(len(DATA)), str(SIZE - len(DATA))], holes
    assert "hole,zero" in holes[1], holes
    assert mounts_under(tmp_path / "run")

    code, err = m.stop(signal.SIGTERM)
    assert code == 0, err
    assert not sock.exists()
    assert not mounts_under(tmp_path / "run")
    assert os.listdir(tmp_path / "run") == []


def test_serves_the_pieces_of_a_pack_where_its_map_says(make_repo, tmp_path):
    borg = make_repo()
    write_packed_archive(borg)
    m = start_mount(DOMAIN, borg.repo, str(tmp_path / "vda.sock"))
    assert compare(m.uri("vda"), packed_disk(), tmp_path).returncode == 0
    assert m.stop(signal.SIGTERM)[0] == 0


@pytest.mark.parametrize("members, why", [
    ([(PACK_MAP, packing.map_to_json(PACK))], f"map of {PACK_NAME} without its data member"),
    ([(PACK_MAP, packing.map_to_json(PACK)), (PACK_NAME, b"x" * (PACK_BYTES - 1))],
     f"the map of {PACK_NAME} does not describe its {PACK_BYTES - 1} bytes"),
    ([(PACK_MAP, b"[[65536, 4096], [1048576"), (PACK_NAME, b"x" * PACK_BYTES)], f"{PACK_MAP}: "),
    ([(PACK_MAP, b"[" * (packing.MAX_MAP_BYTES + 1)), (PACK_NAME, b"x" * PACK_BYTES)],
     f"{PACK_MAP} is {packing.MAX_MAP_BYTES + 1} bytes, more than"),
], ids=["lone-map", "short-data", "not-json", "oversized"])
def test_a_damaged_pack_is_refused(make_repo, tmp_path, members, why):
    borg = make_repo()
    name = write_packed_archive(borg, members)
    line = one_error_line(failed_mount(DOMAIN, borg.repo, str(tmp_path / "vda.sock")))
    assert name in line and why in line, line
    assert not mounts_under(tmp_path / "run") and os.listdir(tmp_path / "run") == []


def test_a_killed_mount_is_cleaned_up_by_the_next(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    first = start_mount(DOMAIN, borg.repo, str(tmp_path / "a.sock"))
    children = first.children()
    first.stop(signal.SIGKILL)
    for pid in children:   # nbdkit exits with its parent, borg mount unmounts on SIGINT
        wait_gone(pid, 60)
    second = start_mount(DOMAIN, borg.repo, str(tmp_path / "a.sock"))   # a stale socket
    assert compare(second.uri("vda"), DATA + bytes(SIZE - len(DATA)), tmp_path).returncode == 0
    assert len(os.listdir(tmp_path / "run")) == 1
    code, err = second.stop(signal.SIGINT)
    assert code == 0, err   # cleaning up after a killed run is information, not a warning
    assert "left by a borg-vm mount that was killed" in err
    assert not mounts_under(tmp_path / "run") and os.listdir(tmp_path / "run") == []


def test_a_socket_in_use_is_refused(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    m = start_mount(DOMAIN, borg.repo, str(tmp_path / "vda.sock"))
    try:
        line = one_error_line(failed_mount(DOMAIN, borg.repo, str(tmp_path / "vda.sock")))
        assert "is a socket in use" in line, line
    finally:
        assert m.stop()[0] == 0
    (tmp_path / "file").write_text("x")
    line = one_error_line(failed_mount(DOMAIN, borg.repo, str(tmp_path / "file")))
    assert "exists and is not a socket" in line


def import_tar(borg, name, comment, members):
    """Import a tar made by Python's tarfile (members: TarInfo, data or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    with borg.import_tar(name, comment=comment, timestamp=TIMESTAMP, compression="lz4",
                         chunker_params=CHUNKER) as proc:
        proc.stdin.write(buf.getvalue())
        borg.finish("import-tar", proc)


def hostile(borg, extra_members, data_member=True):
    """Write an otherwise valid archive of DATA with extra tar members in disk/vda/."""
    m = manifest({"vda": DATA})
    manifest_doc, comment = sign(borg, m)
    members = [(tarfile.TarInfo(fmt.DOMAIN_XML), domain_xml()),
               (tarfile.TarInfo(fmt.MANIFEST), manifest_doc)]
    if data_member:
        members.insert(1, (tarfile.TarInfo(fmt.member_name("vda", 0)), DATA))
    import_tar(borg, str(m.name), comment, extra_members + members)
    return str(m.name)


def symlink(name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


@pytest.mark.parametrize("case", ["symlink-member", "directory-member", "odd-name",
                                  "member-beyond-extents", "short-member", "manifest-mismatch",
                                  "bad-manifest", "no-manifest"])
def test_a_chain_failing_the_manifest_checks_is_refused(make_repo, tmp_path, case):
    borg = make_repo()
    if case == "symlink-member":     # would serve a host file through the FUSE mount
        name = hostile(borg, [symlink(fmt.member_name("vda", 3 * MiB), "/etc/passwd")])
        why = "unexpected member"
    elif case == "directory-member":
        info = tarfile.TarInfo(fmt.member_name("vda", 3 * MiB) + "/x")
        name, why = hostile(borg, [(info, b"x")]), "unexpected member"
    elif case == "odd-name":
        name, why = hostile(borg, [(tarfile.TarInfo("disk/vda/junk"), b"x")]), "unexpected member"
    elif case == "member-beyond-extents":
        name = hostile(borg, [(tarfile.TarInfo(fmt.member_name("vda", 3 * MiB)), b"x")])
        why = "do not cover exactly"
    elif case == "short-member":
        name = write_archive(borg, {"vda": DATA},
                             data_members=[(fmt.member_name("vda", 0), DATA[:-BLOCK])])
        why = "do not cover exactly"
    elif case == "manifest-mismatch":
        doc = json.loads(manifest({"vda": DATA}).to_json())
        doc["disks"]["vda"]["virtual_size"] = 2 * SIZE
        name = write_archive(borg, {"vda": DATA}, manifest_json=json.dumps(doc).encode())
        why = "disagrees with its comment"
    elif case == "bad-manifest":
        name = write_archive(borg, {"vda": DATA}, manifest_json=b'{"format": "borg-vm", '
                                                               b'"version": 2, "disks": []}')
        why = "bad manifest"
    else:
        m = manifest({"vda": DATA})
        import_tar(borg, str(m.name), sign(borg, m)[1],
                   [(tarfile.TarInfo(fmt.member_name("vda", 0)), DATA)])
        name, why = str(m.name), "no manifest.json"
    proc = failed_mount(DOMAIN, borg.repo, str(tmp_path / "vda.sock"))
    line = one_error_line(proc)
    assert name in line and why in line and "restored" not in line, line
    assert not (tmp_path / "vda.sock").exists()
    assert not mounts_under(tmp_path / "run") and os.listdir(tmp_path / "run") == []


def test_borg_mount_dying_while_serving_stops_everything_with_exit_2(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    m = start_mount(DOMAIN, borg.repo, str(tmp_path / "vda.sock"))
    borg_pid = next(p for p in m.children()
                    if b"mount" in open(f"/proc/{p}/cmdline", "rb").read().split(b"\0"))
    os.kill(borg_pid, signal.SIGKILL)   # its FUSE mount is left behind, disconnected
    _out, err = m.proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert m.proc.returncode == 2 and "borg mount failed: borg mount exited" in lines[-1], err
    assert not (tmp_path / "vda.sock").exists()
    assert not mounts_under(tmp_path / "run") and os.listdir(tmp_path / "run") == []


def test_an_unknown_disk_is_refused(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    line = one_error_line(failed_mount(DOMAIN, borg.repo, str(tmp_path / "s"), "--disk", "vdz"))
    assert "no disk 'vdz'" in line and "vda" in line, line


@pytest.mark.parametrize("socket, disks, why", [
    ("file", (), "it is not a directory"),               # two disks: a directory of sockets
    ("missing/dir", (), "missing does not exist"),
    ("missing/vda.sock", ("vda",), "missing does not exist"),
    ("file/vda.sock", ("vda",), "file is not a directory"),
], ids=["file-for-two-disks", "under-missing-for-two", "under-missing", "under-a-file"])
def test_an_unusable_socket_path_is_one_line(make_repo, tmp_path, socket, disks, why):
    """These were tracebacks ("unexpected error, a bug") or nbdkit failing late."""
    borg = make_repo()
    write_archive(borg, {"vda": DATA, "vdb": DATA})
    (tmp_path / "file").write_text("x")
    extra = [a for t in disks for a in ("--disk", t)]
    line = one_error_line(failed_mount(DOMAIN, borg.repo, str(tmp_path / socket), *extra))
    assert f"Cannot serve on {tmp_path / socket}" in line and why in line, line
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "missing").exists()
    assert not mounts_under(tmp_path / "run")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_socket_directory_it_made_goes_when_it_stops(make_repo, tmp_path, sig):
    borg = make_repo()
    write_archive(borg, {"vda": DATA, "vdb": DATA})
    m = start_mount(DOMAIN, borg.repo, str(tmp_path / "socks"))
    assert sorted(os.listdir(tmp_path / "socks")) == ["vda.sock", "vdb.sock"]
    assert m.stop(sig)[0] == 0
    assert not (tmp_path / "socks").exists()


def test_a_socket_directory_it_did_not_make_stays(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA, "vdb": DATA})
    (tmp_path / "socks").mkdir()
    m = start_mount(DOMAIN, borg.repo, str(tmp_path / "socks"))
    assert m.stop(signal.SIGINT)[0] == 0
    assert os.listdir(tmp_path / "socks") == []
    (tmp_path / "socks" / "vdb.sock").write_text("x")     # refused: not a socket
    line = one_error_line(failed_mount(DOMAIN, borg.repo, str(tmp_path / "socks")))
    assert "exists and is not a socket" in line
    assert os.listdir(tmp_path / "socks") == ["vdb.sock"]


def test_a_refused_mount_leaves_no_socket_directory(make_repo, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA, "vdb": DATA})
    deep = tmp_path / ("d" * 100)      # a directory it can make, sockets too long for it
    line = one_error_line(failed_mount(DOMAIN, borg.repo, str(deep)))
    assert "longer than 107 bytes" in line, line
    assert not deep.exists()
