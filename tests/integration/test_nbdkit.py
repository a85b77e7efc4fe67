"""adapters/nbdkit.py against the real nbdkit: an nbdkit whose parent died waits
for its connected clients for ever, and kill_stale ends it."""

import subprocess
import sys
import time

import nbd
from mounting import wait_gone

from borg_vm.adapters import nbdkit

START_TIMEOUT = 30
# How long an nbdkit without clients takes to exit after its parent died is well
# under this (it exits at once); one with a client stays however long we look.
EXIT_GRACE = 1.0


def process_state(pid: int) -> str:
    """Return the state letter of process pid (R, S, Z, ...), or "gone"."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_kill_stale_ends_an_orphaned_nbdkit_a_client_keeps_alive(tmp_path):
    sock, pidfile = tmp_path / "m.sock", tmp_path / "m.pid"
    # A parent that starts nbdkit as borg-vm mount does, and is then killed.
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, time; subprocess.Popen(['nbdkit', '--foreground', "
        f"'--exit-with-parent', '--unix', '{sock}', '--pidfile', '{pidfile}', "
        "'memory', '1M']); time.sleep(600)")])
    deadline = time.monotonic() + START_TIMEOUT
    while not pidfile.exists():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    client = nbd.NBD()
    try:
        client.connect_unix(str(sock))
        client.pread(512, 0)   # past the handshake, as QEMU long is (nbdkit quits one in it)
        parent.kill()
        parent.wait()
        time.sleep(EXIT_GRACE)   # time enough to exit, which it does not
        assert process_state(pid) == "S"
        assert nbdkit.kill_stale(str(pidfile))
        wait_gone(pid, 10)
    finally:
        client.shutdown()
    assert not nbdkit.kill_stale(str(pidfile))           # gone: nothing to kill
    assert not nbdkit.kill_stale(str(tmp_path / "none.pid"))


def test_kill_stale_kills_nothing_but_the_nbdkit_of_that_pidfile(tmp_path):
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = tmp_path / "x.pid"
        pidfile.write_text(f"{other.pid}\n")   # a reused pid, say
        assert not nbdkit.kill_stale(str(pidfile))
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
