"""The background server of a booted domain (services/serving/server.py): the real
borg-vm mount started detached over a hand-made archive, seen running through
its lock, stopped, killed and started again on the same sockets."""

import os
import signal
import socket
import subprocess
import time

import nbd
import pytest
from handmade import CHECKPOINT, DOMAIN, SIZE, write_archive
from mounting import compare, wait_gone
from realstack import MiB

from borg_vm import runtime
from borg_vm.adapters import nbdkit
from borg_vm.errors import ServerFailed
from borg_vm.services.serving import server as bootserver

DATA = bytes(range(256)) * (MiB // 256)
STOP_TIMEOUT = 60


def wait_until(done, timeout: float = 10) -> bool:
    """Return True as soon as done() is, False if it is not after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(autouse=True)
def _private_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))


@pytest.fixture
def boot_run(tmp_path):
    """Return (run directory, sockets) for one disk, vda; at teardown any server
    still running there is stopped."""
    run = runtime.boot_dir(runtime.boot_dir_path("t"))
    yield run, {"vda": os.path.join(run, "vda.sock")}
    bootserver.stop(run)


def test_serves_until_stopped_and_its_lock_says_whether_it_runs(make_repo, boot_run, tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    run, sockets = boot_run
    assert oct(os.stat(run).st_mode & 0o777) == "0o711"
    assert not bootserver.running(run)
    served = bootserver.start(run, borg, DOMAIN, CHECKPOINT, sockets,
                              (os.getuid(), os.getgid()))
    assert served["checkpoint"] == CHECKPOINT
    assert served["disks"]["vda"]["socket"] == sockets["vda"]
    assert bootserver.running(run)
    uri = served["disks"]["vda"]["uri"]
    assert compare(uri, DATA + bytes(SIZE - len(DATA)), tmp_path).returncode == 0

    # qemu-img has gone; nbdkit closes its end a moment later.
    assert wait_until(lambda: nbdkit.connections(sockets["vda"]) == 0)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(sockets["vda"])
        assert bootserver.wait_connected([sockets["vda"]], 10)
        assert nbdkit.connections(sockets["vda"]) == 1

    with pytest.raises(ServerFailed, match="is running already"):
        bootserver.start(run, borg, DOMAIN, CHECKPOINT, sockets, None)
    pid = bootserver.pid(run)
    bootserver.stop(run)
    wait_gone(pid, STOP_TIMEOUT)
    assert not bootserver.running(run)
    assert not os.path.exists(sockets["vda"])
    assert "serving" in bootserver.log_tail(run)


def test_a_killed_server_is_seen_and_starts_again_on_the_same_sockets(make_repo, boot_run,
                                                                      tmp_path):
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    run, sockets = boot_run
    bootserver.start(run, borg, DOMAIN, CHECKPOINT, sockets, None)
    first = bootserver.pid(run)
    nbdkit_pid = int(subprocess.run(["pgrep", "-P", str(first), "nbdkit"], capture_output=True,
                                    text=True).stdout)
    client = nbd.NBD()   # as QEMU: connected (past the handshake), idle
    try:
        client.connect_unix(sockets["vda"])
        os.kill(first, signal.SIGKILL)
        wait_gone(first, STOP_TIMEOUT)
        # The kernel lets go of a killed process's lock a moment after it died.
        assert wait_until(lambda: not bootserver.running(run))
        bootserver.stop(run)   # nothing to stop: fine
        # Its nbdkit may wait for the client to hang up, holding the socket; the
        # next start kills it (see test_nbdkit.py).
        served = bootserver.start(run, borg, DOMAIN, CHECKPOINT, sockets, None)
        wait_gone(nbdkit_pid, STOP_TIMEOUT)
    finally:
        client.shutdown()
    assert bootserver.pid(run) != first and bootserver.running(run)
    assert compare(served["disks"]["vda"]["uri"], DATA + bytes(SIZE - len(DATA)),
                   tmp_path).returncode == 0


def test_a_server_that_cannot_serve_says_why_and_leaves_nothing_running(make_repo, boot_run):
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    run, sockets = boot_run
    with pytest.raises(ServerFailed, match="exited 2 before serving: .*borgvm-19990101"):
        bootserver.start(run, borg, DOMAIN, "borgvm-19990101T000000Z", sockets, None)
    assert not bootserver.running(run)
    assert not os.path.exists(sockets["vda"])
