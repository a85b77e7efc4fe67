"""services/hosts.py's SshHost against a real sshd on 127.0.0.1 (tests/sshd.py):
the hypervisor's machine reached over one ssh connection. No VM: what a backup
run needs of the machine besides libvirt and NBD."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid as uuids
from pathlib import Path

import pytest
import sshd
from realstack import KiB, MiB, qemu_io

from borg_vm import runtime
from borg_vm.adapters import qemu
from borg_vm.adapters.disk_sources import ImageSource
from borg_vm.adapters.libnbd import open_endpoint
from borg_vm.core.extent import STATE_DIRTY
from borg_vm.errors import NbdError, RemoteRuntimeDirUnsafe, SshError, UsageError
from borg_vm.services import hosts

NOBODY = 65534


@pytest.fixture
def uri(ssh_server, tmp_path, monkeypatch):
    """Return a qemu+ssh:// URI of the test's sshd (this machine as a hypervisor);
    borg-vm's local runtime directory is the test's."""
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))
    key = tmp_path / "key"
    ssh_server.authorize_hypervisor(sshd.make_key(key, "borg-vm-test-backup-host"))
    return (f"qemu+ssh://root@{sshd.LOOPBACK}:{ssh_server.port}/system"
            f"?command={ssh_server.wrapper(key)}&no_tty=1")


@pytest.fixture
def uuid():
    """Return a fresh domain UUID; remove its run directories on the 'hypervisor'."""
    value = str(uuids.uuid4())
    yield value
    for path in Path(hosts.REMOTE_RUNTIME_DIR).glob(f"{value}.*"):
        if path.is_dir():
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
        else:
            path.unlink()


def test_commands_run_there_with_their_arguments_intact(uri):
    with hosts.connect(uri) as host:
        assert host.remote
        assert host.run(["printf", "%s|", "a b", "$HOME", "'q'", ""]) == b"a b|$HOME|'q'||"


def test_files_are_read_there(uri, tmp_path):
    (tmp_path / "vars.fd").write_bytes(b"\0vars\xff")
    os.mkfifo(tmp_path / "fifo")
    with hosts.connect(uri) as host:
        assert host.read_file(str(tmp_path / "vars.fd"), 100) == b"\0vars\xff"
        assert host.read_file(str(tmp_path / "vars.fd"), 3) == b"\0va"
        assert host.read_file(str(tmp_path / "none.fd"), 100) is None
        for unusual in (tmp_path, tmp_path / "fifo"):   # a fifo never blocks
            with pytest.raises(hosts.Unreadable, match="not a regular file"):
                host.read_file(str(unusual), 100)


def test_a_run_dir_there_is_private_owned_by_qemu_and_its_socket_reached_here(uri, uuid):
    with hosts.connect(uri) as host:
        with host.run_dir(uuid, (NOBODY, NOBODY)) as path:
            st = os.stat(path)
            assert os.path.dirname(path) == hosts.REMOTE_RUNTIME_DIR
            assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o700, NOBODY, NOBODY)
            assert host.is_ours(os.path.join(path, "nbd.sock"))
            server = socket.socket(socket.AF_UNIX)
            server.bind(os.path.join(path, "nbd.sock"))
            server.listen()
            threading.Thread(target=lambda: _echo_once(server), daemon=True).start()
            with host.reach(os.path.join(path, "nbd.sock")) as here:
                assert here.startswith(os.environ["BORG_VM_RUNTIME_DIR"] + "/")
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(here)
                    client.sendall(b"hello")
                    assert client.recv(5) == b"hello"
            assert not os.path.exists(here)
            server.close()
        assert not os.path.exists(path)


def _echo_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(5))


def test_leftovers_of_a_crashed_run_are_removed_there_and_no_others(uri, uuid):
    crashed = Path(hosts.REMOTE_RUNTIME_DIR) / f"{uuid}.crashed"
    crashed.mkdir(mode=0o700)
    (crashed / "vda.scratch").write_bytes(b"x")
    other = str(uuids.uuid4())
    with hosts.connect(uri) as host, host.run_dir(other, None) as kept:
        host.remove_stale(uuid)
        assert not crashed.exists()
        assert os.path.isdir(kept)
        assert not host.is_ours("/var/lib/libvirt/qemu/domain-1/nbd.sock")


def test_commands_still_reach_the_hypervisor_once_the_connection_is_gone(uri, tmp_path):
    with hosts.connect(uri) as host:
        master = _master(tmp_path / "run")
        os.kill(master, signal.SIGKILL)
        assert host.run(["echo", "still"]) == b"still\n"


def _master(run_dir: Path) -> int:
    """Return the pid of this process's ssh ControlMaster (its argv has -M)."""
    me = os.getpid()
    for child in Path(f"/proc/{me}/task/{me}/children").read_text().split():
        if b"-M" in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"no ssh master among the children of {me} ({run_dir})")


def test_a_refused_login_is_one_error_that_says_what_ssh_said(ssh_server, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))
    stranger = tmp_path / "stranger"
    sshd.make_key(stranger, "borg-vm-test-stranger")   # never authorized
    uri = (f"qemu+ssh://root@{sshd.LOOPBACK}:{ssh_server.port}/system"
           f"?command={ssh_server.wrapper(stranger)}&no_tty=1")
    with pytest.raises(SshError, match="failed to log in: .*Permission denied"), \
            hosts.connect(uri):
        pass
    assert os.listdir(tmp_path / "run") == []


def test_the_domain_lock_there_is_the_one_a_borg_vm_there_takes(uri, uuid, monkeypatch):
    held = "another borg-vm run is backing up 'web'"
    with hosts.connect(uri) as host, hosts.connect(uri) as other:
        with host.domain_lock(uuid, "web"):
            with pytest.raises(UsageError, match=f"{held} on {sshd.LOOPBACK}"), \
                    other.domain_lock(uuid, "web"):
                pass
            monkeypatch.setenv("BORG_VM_RUNTIME_DIR", hosts.REMOTE_RUNTIME_DIR)
            with pytest.raises(UsageError, match=held), runtime.domain_lock(uuid, "web"):
                pass
        with runtime.domain_lock(uuid, "web"):   # released when the block ended
            with pytest.raises(UsageError, match=held), other.domain_lock(uuid, "web"):
                pass
        # runtime.domain_lock unlinked its file on the way out: a new one is locked
        with other.domain_lock(uuid, "web"), pytest.raises(UsageError, match=held), \
                runtime.domain_lock(uuid, "web"):
            pass


def test_images_are_served_there_and_read_here_with_their_bitmaps(uri, uuid, tmp_path):
    """A shut-off domain's images over ssh (ImageSource with the host's servers):
    qemu-nbd runs there on a socket in a run directory, forwarded here; it holds
    the image's lock while it serves, takes more than one client (the reads and
    nbdfuse) and is gone with its directory when the source closes."""
    img = tmp_path / "disk.qcow2"
    qemu.create(str(img), "qcow2", 8 * MiB)
    qemu_io(img, "qcow2", "write -P 1 0 1M")
    qemu.bitmap_add(str(img), "cp1")
    qemu_io(img, "qcow2", "write -P 2 4M 64k")
    with hosts.connect(uri) as host:
        with ImageSource({"vda": (str(img), "qcow2", "cp1")}, host.nbd_servers(uuid)) as source:
            m = source.extent_map("vda", incremental=True)
            assert [(r.start, r.length) for r in m.dirty if r.flags & STATE_DIRTY] == [
                (4 * MiB, 64 * KiB)]
            assert source.endpoint("vda").uri.startswith("nbd+unix:///?socket=")
            with open_endpoint(source.endpoint("vda"), "a second client") as other:
                assert other.size == 8 * MiB
            with source.reads("vda", [(0, 64 * KiB), (4 * MiB, 64 * KiB)], hold=1) as reads:
                assert [bytes(data[:1]) for _, data in reads] == [b"\x01", b"\x02"]
            locked = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write 0 512", str(img)],
                                    capture_output=True, text=True)
            assert locked.returncode != 0 and "lock" in locked.stderr
            # the base server's run directory (the bitmap's server served the map alone)
            assert len(list(Path(hosts.REMOTE_RUNTIME_DIR).glob(f"{uuid}.*"))) == 1
        assert list(Path(hosts.REMOTE_RUNTIME_DIR).glob(f"{uuid}.*")) == []
    qemu_io(img, "qcow2", "write 0 512")   # no server holds it any more


def test_a_server_that_cannot_start_there_says_why(uri, uuid, tmp_path):
    with hosts.connect(uri) as host:
        with pytest.raises(NbdError, match="start failed on .*qemu-nbd.*(No such file|Could not)"):
            with ImageSource({"vda": (str(tmp_path / "none.qcow2"), "qcow2", None)},
                             host.nbd_servers(uuid)):
                pass
        assert list(Path(hosts.REMOTE_RUNTIME_DIR).glob(f"{uuid}.*")) == []


def test_a_server_there_goes_when_the_connection_is_lost(uri, uuid, tmp_path):
    img = tmp_path / "disk.qcow2"
    qemu.create(str(img), "qcow2", 8 * MiB)
    with hosts.connect(uri) as host:
        with ImageSource({"vda": (str(img), "qcow2", None)}, host.nbd_servers(uuid)):
            assert _serving(img)
            os.kill(_master(tmp_path / "run"), signal.SIGKILL)
            deadline = time.monotonic() + 30
            while _serving(img) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _serving(img), "qemu-nbd outlived the ssh connection"
    qemu_io(img, "qcow2", "write 0 512")   # its lock went with it


def _serving(img: Path) -> list[str]:
    """The qemu-nbd processes serving img."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-nbd") and str(img).encode() in argv:
            found.append(pid)
    return found


def test_a_runtime_dir_there_others_can_write_to_is_refused(uri, uuid, tmp_path, monkeypatch):
    there = tmp_path / "hypervisor-run"
    there.mkdir()
    there.chmod(0o777)
    monkeypatch.setattr(hosts, "REMOTE_RUNTIME_DIR", str(there))
    with hosts.connect(uri) as host:
        with pytest.raises(RemoteRuntimeDirUnsafe) as e:
            with host.run_dir(uuid, (NOBODY, NOBODY)):
                pass
    assert e.value.message == (
        f"borg-vm's runtime directory {sshd.LOOPBACK}:{there} on the hypervisor is writable "
        "by others (mode 0777): it must be a directory of the ssh user there (uid 0) that no "
        "one else can write to. Remove it there.")
    assert os.listdir(there) == []
