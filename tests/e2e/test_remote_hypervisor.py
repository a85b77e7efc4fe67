"""borg-vm on a backup host that shares no files with the hypervisor (issue 24):
`backup -c qemu+ssh://...` of running and shut-off domains, full and
incremental, with snapshot layers sealed since the last backup, checked bit for
bit against what the guest saw.

The "backup host" is borg-vm in a mount namespace of its own where libvirt's
sockets and state (/run/libvirt, /var/lib/libvirt), borg-vm's runtime
directory (/run/borg-vm) and the domain's image directory are empty tmpfs: it
reaches this machine's libvirtd only through qemu+ssh:// to a private sshd on
127.0.0.1 (tests/sshd.py), which runs in the root namespace and is the
"hypervisor" side. The URI's command= is an ssh of the test's own (own config,
known_hosts and key), so nothing reads or writes ~/.ssh. Restores run here,
outside the namespace, as in the local tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import libvirt
import pytest
import sshd
from borgvm import backup, restore_and_compare, start
from guest import MIB, poll

# What a backup host does not have: the hypervisor's libvirt and its state.
HIDDEN = ("/run/libvirt", "/var/lib/libvirt", "/run/borg-vm")
# The hypervisor's runtime directory, where the backup job's socket lives.
HYPERVISOR_RUNTIME_DIR = Path("/run/borg-vm")
# Mount a private tmpfs (0755: borg-vm refuses a runtime dir others may write) on
# each directory before the "--", then run the command after it.
ELSEWHERE = ('set -e; while [ "$1" != -- ]; do '
             'mount -t tmpfs -o mode=0755 borgvm-test "$1"; shift; done; shift; exec "$@"')
STOP_TIMEOUT = 60.0
EXIT_TIMEOUT = 120.0


def elsewhere(d) -> list[str]:
    """Return the argv prefix that runs a command as on a backup host that shares
    no files with the hypervisor of domain d (see the module docstring)."""
    images = sorted({str(p.parent) for p in d.disks.values()})
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", ELSEWHERE, "sh",
            *HIDDEN, *images, "--"]


@pytest.fixture
def hypervisor(ssh_server, tmp_path):
    """Return the libvirt URI of this machine as a remote hypervisor, reached
    through the test's sshd with a key of the test's own."""
    key = tmp_path / "backup-host-key"
    ssh_server.authorize_hypervisor(sshd.make_key(key, "borg-vm-test-backup-host"))
    HYPERVISOR_RUNTIME_DIR.mkdir(mode=0o755, exist_ok=True)
    return (f"qemu+ssh://root@{sshd.LOOPBACK}:{ssh_server.port}/system"
            f"?command={ssh_server.wrapper(key)}&no_tty=1")


def run_dirs(uuid: str) -> list[Path]:
    """Return the run directories of domain uuid on the hypervisor (not its lock
    file, which a killed run's lock removes as its ssh goes, a moment later)."""
    return sorted(p for p in HYPERVISOR_RUNTIME_DIR.glob(f"{uuid}.*") if p.is_dir())


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_full_and_incremental_backups_from_a_backup_host(make_domain, hypervisor, repo,
                                                         tmp_path, generation):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2"), ("vdb", 16 * MIB, "qcow2")], uefi=True)
    uuid = d.dom.UUIDString()
    # The namespace really is a backup host: local libvirt and the images are gone.
    local = backup(d.name, repo, "-c", "qemu:///system", code=2, wrap=elsewhere(d))
    assert "Cannot connect to libvirt at qemu:///system" in local.stderr

    d.write("vda", 0, 4 * MIB, 0xA1)
    d.write("vdb", 8 * MIB, 1 * MIB, 0xB1)
    results, views = [], []
    results.append(backup(d.name, repo, "-c", hypervisor, wrap=elsewhere(d)))
    views.append(d.views())
    nvram = d.nvram().read_bytes()
    d.write("vda", 20 * MIB, 2 * MIB, 0xA2)
    d.write("vdb", 0, 64 * 1024, 0xB2)
    results.append(backup(d.name, repo, "-c", hypervisor, wrap=elsewhere(d)))
    views.append(d.views())

    assert [r["level"] for r in results] == ["full", "inc"]
    assert results[1]["disks"]["vda"]["data"] == 2 * MIB
    assert results[1]["disks"]["vdb"]["data"] == 64 * 1024
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [results[1]["checkpoint"]]
    assert run_dirs(uuid) == []
    for i, (result, view) in enumerate(zip(results, views, strict=True)):
        # (exit 1: a warning that the OVMF loader's path is dropped from the XML)
        doc = restore_and_compare(d.name, repo, result["checkpoint"], view, tmp_path, f"r{i}",
                                  code=1)
        assert Path(doc["vm_state"]["nvram"]).read_bytes() == nvram

    # Shut off: its images are served by a qemu-nbd on the hypervisor, started
    # and stopped over ssh, its bitmaps added and removed there by qemu-img.
    d.shut_off()
    d.write_offline("vda", 24 * MIB, 64 * 1024, 0xA3)
    off = backup(d.name, repo, "-c", hypervisor, wrap=elsewhere(d))
    assert off["level"] == "inc", off["reason"]
    assert off["disks"]["vda"]["data"] == 64 * 1024 and off["disks"]["vdb"]["data"] == 0
    assert not d.dom.isActive(), "the backup must not start the domain"
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [off["checkpoint"]]
    assert run_dirs(uuid) == []
    restore_and_compare(d.name, repo, off["checkpoint"], d.views(), tmp_path, "off", code=1)


def our_ssh_master(pid: int) -> int:
    """Return the pid of borg-vm's (pid's) ssh ControlMaster: its child with -M
    (libvirt's own ssh, also its child, has none)."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"-M" in argv:
            return int(child)
    raise AssertionError(f"borg-vm {pid} has no ssh master")


def state(pid: int) -> str | None:
    """Return the process's state letter (T: stopped, Z: dead, not yet reaped), or
    None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def stopped_streaming(d, hypervisor: str, repo: str, monkeypatch) -> subprocess.Popen:
    """Start a remote backup of d and return it once it stopped (SIGSTOP) as it
    began streaming (runtime.phase); the caller continues or kills it."""
    monkeypatch.setenv("BORG_VM_TEST_STOP_AT", "streaming")
    proc = start("backup", d.name, "--repo", repo, "-c", hypervisor, wrap=elsewhere(d))
    monkeypatch.delenv("BORG_VM_TEST_STOP_AT")
    try:
        poll(lambda: state(proc.pid) == "T" or proc.poll() is not None, STOP_TIMEOUT,
             "borg-vm to stop at the streaming phase")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    assert proc.poll() is None, proc.communicate()
    return proc


def test_a_lost_ssh_connection_fails_the_run_cleanly_and_the_next_one_works(
        make_domain, hypervisor, repo, tmp_path, monkeypatch):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    uuid = d.dom.UUIDString()
    d.write("vda", 0, 2 * MIB, 0xC1)
    first = backup(d.name, repo, "-c", hypervisor, wrap=elsewhere(d))
    d.write("vda", 4 * MIB, 2 * MIB, 0xC2)

    # Stop borg-vm as it starts streaming, cut its ssh connection, let it go on.
    proc = stopped_streaming(d, hypervisor, repo, monkeypatch)
    try:
        master = our_ssh_master(proc.pid)
        os.kill(master, signal.SIGKILL)
        poll(lambda: state(master) in ("Z", None), STOP_TIMEOUT, "the ssh master to die")
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=EXIT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert "NBD" in err and "Traceback" not in err, err
    # Nothing of the failed run stays: no job, no new checkpoint, no run directory.
    with pytest.raises(libvirt.libvirtError):
        d.dom.backupGetXMLDesc()
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [first["checkpoint"]]
    assert run_dirs(uuid) == []

    second = backup(d.name, repo, "-c", hypervisor, wrap=elsewhere(d))
    assert second["level"] == "inc"
    restore_and_compare(d.name, repo, second["checkpoint"], d.views(), tmp_path, "after")


def test_a_killed_run_is_cleaned_up_over_ssh_and_sealed_layers_are_read_there(
        make_domain, hypervisor, repo, tmp_path, monkeypatch):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    uuid = d.dom.UUIDString()
    d.write("vda", 0, 2 * MIB, 0xD1)
    backup(d.name, repo, "-c", hypervisor, wrap=elsewhere(d))
    d.write("vda", 4 * MIB, 2 * MIB, 0xD2)

    # borg-vm SIGKILLed mid-stream leaves its job and run directory on the hypervisor
    proc = stopped_streaming(d, hypervisor, repo, monkeypatch)
    proc.kill()
    proc.communicate()
    assert d.dom.backupGetXMLDesc() and len(run_dirs(uuid)) == 1
    # ... which the next run, over ssh, removes before it backs up
    second = backup(d.name, repo, "-c", hypervisor, wrap=elsewhere(d))
    assert second["level"] == "inc"
    with pytest.raises(libvirt.libvirtError):
        d.dom.backupGetXMLDesc()
    assert run_dirs(uuid) == []
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [second["checkpoint"]]
    restore_and_compare(d.name, repo, second["checkpoint"], d.views(), tmp_path, "second")

    # Layers sealed since the last backup: their final changes are read by a
    # qemu-nbd on the hypervisor too
    d.write("vda", 6 * MIB, 1 * MIB, 0xD4)   # into the layer the snapshot seals
    d.snapshot("s1")
    d.write("vda", 8 * MIB, 1 * MIB, 0xD3)
    layered = backup(d.name, repo, "-c", hypervisor, wrap=elsewhere(d))
    assert layered["level"] == "inc", layered["reason"]
    assert layered["disks"]["vda"]["frozen"] == 1 * MIB
    assert run_dirs(uuid) == []
    restore_and_compare(d.name, repo, layered["checkpoint"], d.views(), tmp_path, "layered")
    full = backup(d.name, repo, "-c", hypervisor, "--level", "full", wrap=elsewhere(d))
    assert full["level"] == "full"
    restore_and_compare(d.name, repo, full["checkpoint"], d.views(), tmp_path, "full")
