"""borg-vm boot: a backed-up domain run straight from the repository, its writes
going to local overlays; --finish pulls the rest and makes it independent of the
repository; a server killed under it leaves the overlays intact, and --resume
brings it back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import guest
import libvirt
import libvirt_qemu
import pytest
import realguest
from borgvm import assert_same, backup, run, running_from
from guest import MIB
from mounting import wait_gone

KIB = 1024
STOP_TIMEOUT = 60
PAUSE_TIMEOUT = 60
NEW_FILES = 3      # files the real guest's workload completes between two steps
SYNC_TIMEOUT = 60


def test_boot_write_finish_then_run_without_the_repository(make_domain, repo, tmp_path,
                                                           booted, libvirt_conn):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2"), ("vdb", 16 * MIB, "qcow2")])
    d.write("vda", 0, 4 * MIB, 0xA1)
    d.write("vdb", 1 * MIB, 2 * MIB, 0xB1)
    backup(d.name, repo)
    d.write("vda", 2 * MIB, 1 * MIB, 0xA2)
    d.discard("vdb", 1 * MIB, 1 * MIB)
    second = backup(d.name, repo)
    views = d.views()

    new, doc = booted(d, repo, views)
    assert doc["name"] == f"{d.name}-restored" and doc["checkpoint"] == second["checkpoint"]
    assert new.dom.isActive() and new.dom.UUIDString() != d.dom.UUIDString()
    assert running_from(doc)
    # Guest writes: partial clusters over data still in the repository (qcow2
    # copies the rest of each cluster from the backing), zeroes, and a discard.
    new.write("vda", 1 * MIB + 512, 4 * KIB, 0xC1)
    new.write("vda", 20 * MIB, 3 * MIB, 0xC2)
    new.write_zeroes("vda", 2 * MIB + 64 * KIB, 64 * KIB)
    new.write("vdb", 2 * MIB - 4 * KIB, 8 * KIB, 0xD1)
    new.flush_all()

    # As after a reboot of the host: domain and server gone, /run emptied.
    new.dom.destroy()
    os.kill(doc["server"]["pid"], signal.SIGKILL)
    wait_gone(doc["server"]["pid"], STOP_TIMEOUT)
    shutil.rmtree(Path(doc["server"]["log"]).parent)
    back = run("boot", "--resume", new.name, "--json").json()
    assert back["server_started"] and back["state"] == "running", back
    doc["server"]["pid"] = back["server"]["pid"]

    out = run("boot", "--finish", new.name, "--json").json()
    assert out["name"] == new.name
    assert {t: d["image"] for t, d in out["disks"].items()} == \
        {t: d["image"] for t, d in doc["disks"].items()}
    wait_gone(doc["server"]["pid"], STOP_TIMEOUT)
    assert not Path(doc["server"]["log"]).parent.exists()

    Path(repo).rename(str(repo) + ".gone")
    for image in doc["disks"].values():
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", image["image"]],
                              capture_output=True, text=True, check=True).stdout
        assert "backing-filename" not in info, info
    new.write("vda", 30 * MIB, 1 * MIB, 0xE1)   # the domain goes on without the repository
    for t in views:
        new.assert_matches_model(t)
    # ... and starts again from its own images alone.
    new.shut_off()
    assert "backingStore type='network'" not in new.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    new.start_paused()
    for t in views:
        assert_same(new.read_disk(t), bytes(new.model[t]), f"{t} after a restart")
    again = run("boot", "--finish", new.name)   # a scripted retry: done already, exit 0
    assert f"{new.name}: nothing to finish" in again.stderr, again.stderr


def qemu_says(d: guest.Domain) -> str:
    """Return what QEMU says of the domain's state and disks (for a failure message)."""
    return " | ".join(libvirt_qemu.qemuMonitorCommand(
        d.dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP).strip()
        for command in ("info status", "info block"))


def qemu_img_check(image: str) -> subprocess.CompletedProcess:
    """Run `qemu-img check` on an overlay alone (its backing, the dead server's export,
    left out), sharing it with the QEMU that has it open."""
    spec = ('json:{"driver": "qcow2", "backing": null, '
            f'"file": {{"driver": "file", "filename": "{image}"}}}}')
    return subprocess.run(["qemu-img", "check", "-U", spec], capture_output=True, text=True)


def test_a_killed_server_pauses_the_domain_and_resume_brings_it_back(make_domain, repo,
                                                                     tmp_path, booted):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 8 * MIB, 0xA1)
    backup(d.name, repo)
    views = d.views()
    new, doc = booted(d, repo, views)
    # The firmware has tried to boot (read the boot sector: not bootable, it tries
    # again in a minute) before anything else happens, so a reset below makes it
    # read again at once (a reset amid its start-up may leave it stuck).
    guest.poll(lambda: new.dom.blockStats("vda")[0] >= 1, guest.STATE_TIMEOUT,
               f"the firmware of {new.name} to read its boot sector")
    new.write("vda", 4 * MIB + 512, 4 * KIB, 0xB1)   # the rest of its cluster from the repository
    new.flush_all()

    server = doc["server"]["pid"]
    os.kill(server, signal.SIGKILL)
    wait_gone(server, STOP_TIMEOUT)
    # A read of data still in the repository fails in QEMU...
    with pytest.raises(AssertionError, match="read failed"):
        new.read("vda", 1 * MIB, 64 * KIB, 0xA1)
    # ... and the guest's own reads pause it: after a reset, the firmware reads
    # the boot sector, which is still in the repository.
    new.dom.reset(0)
    try:
        guest.poll(lambda: new.dom.state() == [libvirt.VIR_DOMAIN_PAUSED,
                                               libvirt.VIR_DOMAIN_PAUSED_IOERROR],
                   PAUSE_TIMEOUT, f"{new.name} paused by an I/O error")
    except TimeoutError as e:
        raise AssertionError(f"{e}: {qemu_says(new)}") from None
    stopped = run("boot", "--finish", new.name, code=2)
    assert "is not running" in stopped.stderr and f"borg-vm boot --resume {new.name}" \
        in stopped.stderr, stopped.stderr
    check = qemu_img_check(doc["disks"]["vda"]["image"])
    assert check.returncode == 0 and "No errors were found" in check.stdout, check

    resumed = run("boot", "--resume", new.name, "--json").json()
    assert resumed["server_started"] and resumed["state"] == "running", resumed
    doc["server"]["pid"] = resumed["server"]["pid"]   # for the teardown, if it fails
    new.read("vda", 1 * MIB, 64 * KIB, 0xA1)
    new.read("vda", 4 * MIB + 512, 4 * KIB, 0xB1)
    again = run("boot", "--resume", new.name, "--json").json()
    assert not again["server_started"] and again["state"] == "running"

    # Killed again, and started again before the guest reads: QEMU still holds its
    # connection to the dead server's nbdkit (which waits for it), so --resume
    # kills that nbdkit and warns; --finish gets through the stale connection.
    os.kill(resumed["server"]["pid"], signal.SIGKILL)
    wait_gone(resumed["server"]["pid"], STOP_TIMEOUT)
    stale = run("boot", "--resume", new.name, "--json", code=1)   # a warning
    assert "QEMU has not reconnected to vda yet" in stale.stderr, stale.stderr
    doc["server"]["pid"] = stale.json()["server"]["pid"]
    run("boot", "--finish", new.name)
    wait_gone(doc["server"]["pid"], STOP_TIMEOUT)
    new.assert_matches_model("vda")


def test_the_server_of_a_booted_domain_undefined_before_finish_is_stopped(make_domain, repo,
                                                                          booted):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0xA1)
    backup(d.name, repo)
    new, doc = booted(d, repo, d.views())
    guest.remove_domain(new.dom)   # given up by hand: the server would hold the repository
    gone = run("boot", "--finish", new.name, code=2)
    assert "stopping the server" in gone.stderr and f"Domain {new.name!r} not found" \
        in gone.stderr, gone.stderr
    wait_gone(doc["server"]["pid"], STOP_TIMEOUT)
    assert not Path(doc["server"]["log"]).parent.exists()


def test_the_real_guest_boots_from_the_repository_and_keeps_its_files(
        make_domain, real_guest, repo, tmp_path, booted, libvirt_conn):
    original = make_domain([("vda", 64 * MIB, "qcow2")], boot=real_guest.boot("files"))
    realguest.wait_booted(original, "files")
    console = realguest.Console(original.serial)
    before = console.wait_synced(len(console.synced()) + NEW_FILES, SYNC_TIMEOUT)
    backup(original.name, repo)
    original.dom.destroy()   # the disaster; its console file is the booted copy's now

    # The kernel, initramfs and console of the test guest are host files:
    # --keep-host-resources keeps them (the root disk is the booted overlay).
    started = time.monotonic()
    new, doc = booted(original, repo, original.views(), "--keep-host-resources")
    new.serial, new.started = original.serial, started
    print(f"booted from the repository in {realguest.wait_booted(new, 'files'):.1f} s")
    # The workload starts over at f0001: each file it reports replaces the old one.
    after_boot = console.wait_synced(NEW_FILES, SYNC_TIMEOUT)

    run("boot", "--finish", new.name)
    Path(repo).rename(str(repo) + ".gone")
    console.wait_synced(len(after_boot) + NEW_FILES, SYNC_TIMEOUT)
    # Paused, so that what the console reports is final: the workload goes on
    # rewriting files of `before` until the guest stops. The file after the last
    # one reported may be half way (renamed, not synced): either content is right.
    new.dom.suspend()
    rewritten = console.synced()
    in_flight = next_file(console.reports())
    new.dom.destroy()

    # Booted again, on its images alone, to report what its disk holds.
    libvirt_conn.defineXML(guest.with_boot(
        new.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), new.name,
        real_guest.boot("verify"), new.serial))
    new.dom.create()
    seen = realguest.verified(new)
    expected = {**before, **rewritten}
    wrong = {f: v for f, v in seen.wrong(expected).items()
             if not (f == in_flight and v[1] is not None)}
    assert not wrong, f"synced files missing or changed: {wrong}"


def next_file(reports: list[str]) -> str:
    """Given the console's reports, return the name of the file the files workload
    writes after the last one it reported synced."""
    last = [m[1] for m in map(realguest.SYNCED.fullmatch, reports) if m][-1]
    return f"f{int(last[1:]) + 1:04d}"
