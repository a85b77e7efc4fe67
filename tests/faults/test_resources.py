"""What borg-vm needs running out: the repository locked by another borg, the
scratch (fleecing) space full while the guest writes, the repository's file
system full. One clear line where borg-vm fails, nothing lost, and the next run
(after space is freed) goes on."""

import signal
import subprocess
import time

import pytest
from borgvm import BORG, repo_lock_holders, run
from guest import MIB, poll
from harness import fill, small_fs

from borg_vm import runtime

LOCK_HOLD_SECONDS = 60
SCRATCH = 4 * MIB
REPO_FS = 64 * MIB
# A small repository needs small segments: borg keeps room for a whole one (and
# its biggest object) free at each commit.
SEGMENT = 2 * MIB


def test_repository_locked_by_another_borg(target, record, tmp_path):
    t = target()
    holder = subprocess.Popen([BORG, "with-lock", t.repo, "sleep", str(LOCK_HOLD_SECONDS)],
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    record["injected"] = f"borg with-lock REPO sleep {LOCK_HOLD_SECONDS}; --lock-wait 1"
    try:
        poll(lambda: holder.pid in repo_lock_holders(t.repo) or holder.poll() is not None,
             60, "borg with-lock to lock the repository")
        assert holder.poll() is None, holder.communicate()
        started = time.monotonic()
        to = tmp_path / "restored"
        for args in (("list", "--lock-wait", "1"),
                     ("restore", t.name, "--to", str(to), "--lock-wait", "0")):
            t.failed(run(*args, "--repo", t.repo, code=2), "locked")
        assert not to.exists()
        t.failed(t.finish(t.start("--lock-wait", "1"), 2), "locked", "--lock-wait")
        assert time.monotonic() - started < LOCK_HOLD_SECONDS
    finally:
        holder.send_signal(signal.SIGTERM)   # borg releases its lock, ends its sleep
        holder.communicate(timeout=30)
    t.next_run()
    t.check()


def test_scratch_space_full_while_the_guest_writes(target, record, tmp_path):
    """QEMU 7.2 under libvirt 9.0 copies before write with on-cbw-error=break-guest-write
    (libvirt has no setting for it): the guest's write fails (a guest with the default
    error policy pauses) and the backup, still a consistent point in time, completes."""
    with small_fs(tmp_path / "scratch", SCRATCH) as scratch:
        t = target(scratch=scratch)
        t.d.write("vda", 32 * MIB, 4 * SCRATCH, 0x11)
        record["injected"] = (f"--scratch-dir on a {SCRATCH // MIB} MiB tmpfs; the guest "
                              f"overwrites {4 * SCRATCH // MIB} MiB during the backup")

        def guest_overwrites(_proc):
            with pytest.raises(AssertionError, match="write failed: No space left on device"):
                t.d.write("vda", 32 * MIB, 4 * SCRATCH, 0x22)

        t.succeeded(t.strike(runtime.STREAMING, guest_overwrites, code=0))
        record["did"] += "; the guest's write failed: No space left on device"
        t.next_run()
        t.check()


@pytest.mark.parametrize("leave, reserve, what", [
    (3 * MIB, 0, "No space left on device"),
    # The 8 MiB fit, but not with the room borg keeps free at its commit.
    (16 * MIB, 10 * MIB, "Insufficient free space"),   # borg allows 0 or >= 10M
], ids=["enospc-mid-write", "borg-commit-check"])
def test_repository_file_system_full(target, record, tmp_path, leave, reserve, what):
    with small_fs(tmp_path / "repofs", REPO_FS) as fs:
        repo = str(fs / "repo")
        subprocess.run([BORG, "init", "-e", "none", repo], check=True)
        subprocess.run([BORG, "config", repo, "max_segment_size", str(SEGMENT)], check=True)
        subprocess.run([BORG, "config", repo, "additional_free_space", str(reserve)],
                       check=True)
        t = target(repo=repo)
        filler = fill(fs, leave)
        t.distinct(32 * MIB, 8 * MIB)
        record["injected"] = (f"the repository's file system ({REPO_FS // MIB} MiB tmpfs) "
                              f"filled up to {leave // MIB} MiB free; 8 MiB to store")
        t.failed(t.finish(t.start("--compression", "none"), 2), "is full", what,
                 "Free space there")
        subprocess.run([BORG, "check", repo], check=True, capture_output=True)
        filler.unlink()
        t.next_run()
        t.check()
