"""The real guest (contrib/guest, see realguest.py): backups with --quiesce while
its workload writes and syncs files, restored VMs that boot with a clean
filesystem and every file synced before their checkpoint, and a guest that
is never left frozen, whatever happens to borg-vm."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import guest
import libvirt
import realguest
from borgvm import backup, run, start
from guest import MIB, poll

DISK = [("vda", 64 * MIB, "qcow2")]
# One restore per checkpoint, each in another shape (every shape is compared
# byte for byte with the guest's view at every checkpoint in
# test_backup_restore.py and test_layers_restore.py): the full flattened, the
# first incremental after the snapshot by layers (base and S2), the last one
# as the chain of full and both incrementals.
MODES = (("flat", ("--flatten",)), ("layers", ("--layers",)), ("chain", ()))
NEW_FILES = 3             # files the workload completes between two backups
SYNC_TIMEOUT = 60
THAW_TIMEOUT = 10
KVM_BOOT_TARGET = 5.0     # seconds from start to workload, with KVM (README)
STOP_ATTEMPTS = 3


def test_quiesced_backups_restore_and_boot(make_domain, real_guest, real_virt_type, repo,
                                           tmp_path):
    dom = make_domain(DISK, boot=real_guest.boot("files"))
    boot_seconds = realguest.wait_booted(dom, "files")
    if real_virt_type == "kvm":
        assert boot_seconds < KVM_BOOT_TARGET
    console = realguest.Console(dom.serial)
    results, synced = [], []
    for i in range(3):
        if i == 1:
            dom.snapshot("S2")   # so that --layers has two layers to rebuild
        # Every file reported before the run began is complete and synced: the
        # checkpoint, taken later, must hold it.
        synced.append(console.wait_synced(len(console.synced()) + NEW_FILES, SYNC_TIMEOUT))
        results.append(backup(dom.name, repo, "--quiesce"))
    assert [r["level"] for r in results] == ["full", "inc", "inc"]
    assert all(r["frozen_ms"] > 0 for r in results), results

    booted, chains = [], {}
    for (mode, extra), result, before in zip(MODES, results, synced):
        # Its serial file and direct-boot kernel are this host's: restore replaces
        # them and warns (exit 1); boot_restored gives the copy its own.
        restored = run("restore", dom.name, "--repo", repo, "--checkpoint",
                       result["checkpoint"], "--to", str(tmp_path / f"restore-{mode}"),
                       "--json", *extra, code=1)
        assert "removed or changed host resources in the restored domain XML" in (
            restored.stderr), restored.stderr
        doc = restored.json()
        fsck = realguest.e2fsck(Path(doc["disks"]["vda"]["image"]), tmp_path)
        # Frozen at the checkpoint: clean as after an unmount, nothing for e2fsck
        # to say (unfrozen, the journal needs recovery and the counts lag behind).
        assert fsck.code == 0 and "Fix?" not in fsck.output, f"{mode}: {fsck.output}"
        assert not fsck.needs_recovery, f"{mode}: the journal needs recovery: not frozen"
        chains[mode] = len(doc["disks"]["vda"]["chain"])
        booted.append((mode, before, realguest.boot_restored(make_domain, doc, real_guest,
                                                             tmp_path)))
    assert chains == {"flat": 1, "layers": 2, "chain": 3}
    for mode, before, restored in booted:   # all three boot at once
        seen = realguest.verified(restored)
        restored.dom.destroy()
        wrong = seen.wrong(before)
        assert not wrong, f"{mode}: synced files missing or changed: {wrong}"
        assert seen.log.startswith("whole "), f"{mode}: /data/log {seen.log}"


def test_a_killed_or_stuck_run_never_leaves_the_guest_frozen(make_domain, real_guest, repo):
    dom = make_domain(DISK, boot=real_guest.boot("files"))
    realguest.wait_booted(dom, "files")
    console = realguest.Console(dom.serial)

    # Killed right after the freeze: its thaw guard thaws the guest at once.
    proc = stopped_frozen(dom, repo)
    proc.kill()
    proc.communicate()
    poll(lambda: realguest.fsfreeze_status(dom.dom) == "thawed", THAW_TIMEOUT,
         "the thaw guard to thaw the guest of a killed borg-vm")
    console.wait_synced(len(console.synced()) + 1, SYNC_TIMEOUT)   # it writes again

    # Stuck while frozen: the guard thaws the guest after the freeze timeout,
    # and the run, going on, refuses to record a backup that is not consistent.
    proc = stopped_frozen(dom, repo, dict(os.environ, BORG_VM_FREEZE_TIMEOUT="3"))
    poll(lambda: realguest.fsfreeze_status(dom.dom) == "thawed", THAW_TIMEOUT,
         "the thaw guard to thaw the guest after the freeze timeout")
    proc.send_signal(signal.SIGCONT)
    _out, err = proc.communicate()
    assert proc.returncode == 2, err
    assert f"The filesystems of domain {dom.name!r} were thawed after 3 s" in err

    # The next run cleans up after both and backs up, frozen as asked.
    result = backup(dom.name, repo, "--quiesce")
    assert result["level"] == "full" and result["frozen_ms"] > 0


def test_quiesce_without_an_agent(make_domain, libvirt_conn, repo):
    dom = make_domain(DISK)   # no OS, no agent channel
    result = run("backup", dom.name, "--repo", repo, "--quiesce", code=2)
    assert "has no guest agent channel org.qemu.guest_agent.0" in result.stderr
    assert run("list", "--repo", repo, "--json").json()["archives"] == []

    result = run("backup", dom.name, "--repo", repo, "--quiesce=try", "--json", code=1)
    assert "has no guest agent channel org.qemu.guest_agent.0" in result.stderr
    assert "Backing up without freezing (--quiesce=try)" in result.stderr
    doc = result.json_lines()[0]
    assert doc["level"] == "full" and doc["frozen_ms"] is None

    # The channel, but no agent at the other end (no OS to run one).
    xml = ET.fromstring(dom.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    xml.find("devices").append(ET.fromstring(guest.AGENT_CHANNEL_XML))
    libvirt_conn.defineXML(ET.tostring(xml, encoding="unicode"))
    dom.shut_off()
    dom.start_paused()
    result = run("backup", dom.name, "--repo", repo, "--quiesce", code=2)
    assert (f"Cannot freeze the filesystems of domain {dom.name!r} through its guest agent: "
            "its guest agent is not connected." in result.stderr)
    result = run("backup", dom.name, "--repo", repo, "--quiesce=try", "--json", code=1)
    assert "Backing up without freezing (--quiesce=try)" in result.stderr, result.stderr
    doc = result.json_lines()[0]
    assert doc["level"] == "inc" and doc["frozen_ms"] is None


def stopped_frozen(dom, repo: str, env: dict | None = None) -> subprocess.Popen:
    """Given a real guest's Domain and a repository, start `borg-vm --debug backup
    --quiesce`, SIGSTOP it once it logged that it froze the guest, and return
    it, stopped, while the guest is frozen. Its frozen window is brief (the
    job's start, 100-300 ms): if the signal landed after its thaw, kill it and
    start over, STOP_ATTEMPTS times at most."""
    for _attempt in range(STOP_ATTEMPTS):
        proc = start("--debug", "backup", dom.name, "--repo", repo, "--quiesce", env=env)
        deadline, fd, seen = time.monotonic() + SYNC_TIMEOUT, proc.stderr.fileno(), b""
        while b": froze " not in seen:   # unbuffered: the line may stay the last for long
            assert select.select([fd], [], [], max(0, deadline - time.monotonic()))[0], \
                f"borg-vm never logged the freeze: {seen.decode()}"
            chunk = os.read(fd, 65536)
            assert chunk, f"borg-vm ended before freezing the guest: {seen.decode()}"
            seen += chunk
        proc.send_signal(signal.SIGSTOP)
        if realguest.fsfreeze_status(dom.dom) == "frozen":
            return proc
        proc.kill()
        proc.communicate()
    raise AssertionError(f"borg-vm was past its thaw each of {STOP_ATTEMPTS} times")
