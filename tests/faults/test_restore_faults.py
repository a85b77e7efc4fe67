"""A restore killed midway, and one into a file system that fills up: --to keeps
what it held, nothing of the restore stays in it (a killed one's hidden staging
directory goes at the next restore), no qemu-nbd or borg is left running.
Under both Borg generations (Borg 2: a point is an image per disk)."""

import os

import pytest
from borgvm import run, start
from guest import MIB, poll
from harness import EXIT_TIMEOUT, processes_naming, small_fs, wait_stopped

from borg_vm import runtime

SMALL = 4 * MIB


def restore(t, to, *extra, code=0):
    return run("restore", t.name, "--repo", t.repo, "--to", str(to), *extra, code=code)


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_restore_killed_midway(target, record, tmp_path):
    t = target()
    t.backup()
    to = tmp_path / "to"
    to.mkdir()
    (to / "mine").write_text("not borg-vm's")
    proc = start("restore", t.name, "--repo", t.repo, "--to", str(to),
                 env=dict(os.environ, **{runtime.STOP_AT_ENV: runtime.APPLIED}))
    wait_stopped(proc, runtime.APPLIED)
    record["injected"] = ("SIGKILL of borg-vm restore after the first of two archives "
                          "(Borg 2: after the disk's image)")
    proc.kill()
    proc.communicate()
    poll(lambda: not processes_naming(str(tmp_path), "qemu-nbd")
         and not processes_naming(t.repo, "borg"), EXIT_TIMEOUT, "qemu-nbd and borg to end")
    (stage,) = [p for p in to.iterdir() if p.name != "mine"]
    assert stage.name.startswith(".borg-vm-restore-")
    record["did"] = f"killed; left {stage.name} in --to"
    again = restore(t, to)
    assert "left by a restore that was killed" in again.stderr
    assert (to / "mine").read_text() == "not borg-vm's"
    assert not list(to.glob(".borg-vm-*"))
    record["next"] = "the next restore removed it and restored"
    t.check()


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_restore_into_a_full_file_system(target, record, tmp_path):
    t = target()
    t.distinct(16 * MIB, 4 * SMALL)
    t.backup()
    with small_fs(tmp_path / "to", SMALL) as to:
        (to / "mine").write_text("not borg-vm's")
        record["injected"] = (f"restore of {4 * SMALL // MIB} MiB into a {SMALL // MIB} MiB "
                              "tmpfs --to")
        for fmt in ("qcow2", "raw"):
            t.failed(restore(t, to, "--format", fmt, code=2), "filled up during the restore",
                     "No space left on device", "nothing was moved into it")
            assert [p.name for p in to.iterdir()] == ["mine"]
    assert not processes_naming(str(tmp_path), "qemu-nbd")
    t.check()
