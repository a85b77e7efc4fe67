"""borg_vm.runtime: the per-domain lock and the runtime directory it lives in,
on a real file system (a temporary BORG_VM_RUNTIME_DIR)."""

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from borg_vm import runtime
from borg_vm.errors import RuntimeDirUnsafe, UsageError

UUID = "6f1c1b3e-0000-4000-8000-000000000001"
NOBODY = 65534


@pytest.fixture
def base(tmp_path, monkeypatch):
    path = tmp_path / "run" / "borg-vm"
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(path))
    return path


def lock_file(base):
    return base / f"{UUID}.lock"


def test_lock_file_exists_while_held_and_is_removed_after(base):
    with runtime.domain_lock(UUID, "web01"):
        assert runtime.lock_held(lock_file(base))
        assert (base.stat().st_mode & 0o022, base.stat().st_uid) == (0, os.geteuid())
    assert list(base.iterdir()) == []


def test_lock_file_is_removed_when_the_run_fails(base):
    with pytest.raises(RuntimeError):
        with runtime.domain_lock(UUID, "web01"):
            raise RuntimeError("backup failed")
    assert list(base.iterdir()) == []


def test_second_run_of_a_domain_is_refused_and_leaves_the_lock_alone(base):
    with runtime.domain_lock(UUID, "web01"):
        inode = lock_file(base).stat().st_ino
        with pytest.raises(UsageError, match="another borg-vm run is backing up 'web01'"):
            with runtime.domain_lock(UUID, "web01"):
                pass
        assert lock_file(base).stat().st_ino == inode and runtime.lock_held(lock_file(base))
    assert list(base.iterdir()) == []


def test_other_domains_lock_independently(base):
    with runtime.domain_lock(UUID, "web01"), runtime.domain_lock(UUID[:-1] + "2", "db01"):
        assert len(list(base.iterdir())) == 2
    assert list(base.iterdir()) == []


def race(monkeypatch, between):
    """Make the next flock of runtime first run between(): what other runs do in
    the moment after we opened the lock file and before we locked it."""
    real = fcntl.flock
    pending = [between]

    def flock(fd, op):
        if pending:
            pending.pop()()
        return real(fd, op)

    monkeypatch.setattr(runtime.fcntl, "flock", flock)


def test_a_lock_file_removed_before_we_locked_it_is_not_trusted(base, monkeypatch):
    """The file we opened was unlinked by its finishing holder and a third run
    made and locked a new one: locking our stale inode would let two runs in."""
    base.mkdir(parents=True)
    third = []

    def finish_and_start_another():
        lock_file(base).unlink()
        fd = os.open(lock_file(base), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        third.append(fd)

    race(monkeypatch, finish_and_start_another)
    try:
        with pytest.raises(UsageError, match="another borg-vm run"):
            with runtime.domain_lock(UUID, "web01"):
                pass
    finally:
        os.close(third[0])


def test_a_lock_file_removed_before_we_locked_it_is_made_again(base, monkeypatch):
    base.mkdir(parents=True)
    race(monkeypatch, lambda: lock_file(base).unlink())
    with runtime.domain_lock(UUID, "web01"):
        assert runtime.lock_held(lock_file(base))   # we hold the file that is there now
    assert list(base.iterdir()) == []


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o1777], ids=oct)
def test_runtime_dir_writable_by_others_is_refused(base, mode):
    base.mkdir(parents=True)
    base.chmod(mode)
    with pytest.raises(RuntimeDirUnsafe, match="writable by others") as e:
        with runtime.domain_lock(UUID, "web01"):
            pass
    assert str(base) in e.value.message and "BORG_VM_RUNTIME_DIR" in e.value.message
    assert list(base.iterdir()) == []


def test_runtime_dir_of_another_user_is_refused(base):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    base.mkdir(parents=True)
    os.chown(base, NOBODY, NOBODY)
    with pytest.raises(RuntimeDirUnsafe, match=f"owned by uid {NOBODY}"):
        with runtime.domain_lock(UUID, "web01"):
            pass
    assert list(base.iterdir()) == []


def test_runtime_dir_that_is_a_symlink_or_a_file_is_refused(base, tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    base.parent.mkdir()
    base.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RuntimeDirUnsafe, match="a symbolic link"):
        with runtime.domain_lock(UUID, "web01"):
            pass
    base.unlink()
    base.write_text("")
    with pytest.raises(RuntimeDirUnsafe, match="not a directory"):
        with runtime.domain_lock(UUID, "web01"):
            pass
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_mount_dir_is_stale_only_once_its_holder_is_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("BORG_VM_RUNTIME_DIR", str(tmp_path / "run"))
    with runtime.mount_dir() as path:
        assert oct(os.stat(path).st_mode & 0o777) == "0o700"
        assert runtime.stale_mount_dirs() == []
    assert os.listdir(tmp_path / "run") == []    # left empty: removed
    with runtime.mount_dir() as path:
        os.mkdir(os.path.join(path, "archives"))   # a mount point it could not remove
        (Path(path) / "vda.map.json").write_text("{}")
    assert runtime.stale_mount_dirs() == [path]
    runtime.remove_mount_dir(path, ("archives",))
    assert os.listdir(tmp_path / "run") == []


def test_a_private_dir_goes_with_what_is_in_it_and_a_crashed_runs_goes_next_time(base):
    with runtime.private_dir(runtime.SSH_PREFIX) as path:
        assert oct(os.stat(path).st_mode & 0o777) == "0o700"
        (Path(path) / "ctl").write_text("")
        with runtime.private_dir(runtime.SSH_PREFIX) as other:   # a run beside it
            assert os.path.isdir(path)
    assert os.listdir(base) == []
    crashed = base / "ssh.crashed"   # its holder is gone: nobody holds its lock
    crashed.mkdir()
    (crashed / runtime.MOUNT_LOCK).write_text("")
    (crashed / "1.sock").write_text("")
    with runtime.private_dir(runtime.SSH_PREFIX) as path:
        assert sorted(os.listdir(base)) == [os.path.basename(path)]
    assert other != path


def test_lock_held_says_whether_anyone_holds_the_flock(tmp_path):
    path = tmp_path / "a.lock"
    assert runtime.lock_held(str(path)) is None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert runtime.lock_held(str(path)) is False
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert runtime.lock_held(str(path)) is True
        child = os.dup(fd)          # the same open file: the lock goes with it
        os.close(fd)
        fd = child
        assert runtime.lock_held(str(path)) is True
    finally:
        os.close(fd)
    assert runtime.lock_held(str(path)) is False


def test_boot_dirs_leave_out_one_being_set_up(base):
    made = runtime.boot_dir(runtime.boot_dir_path(UUID))
    assert oct(os.stat(made).st_mode & 0o777) == "0o711"
    assert runtime.boot_dirs() == []                  # no booting.lock yet: being made
    with runtime.booting(made):
        assert runtime.boot_dirs() == []
    assert runtime.boot_dirs() == [(made, UUID)]
    runtime.remove_boot_dir(made)
    assert not os.path.exists(made)


PHASE_PROBE = ("import logging, sys; from borg_vm import runtime; "
               "logging.basicConfig(level=logging.DEBUG, format='%(message)s'); "
               "runtime.phase(runtime.STREAMING, 'into %s', 'x'); print('went on')")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_phase_is_a_debug_line(monkeypatch):
    monkeypatch.setenv(runtime.STOP_AT_ENV, runtime.DONE)   # another phase: no stop
    out = subprocess.run([sys.executable, "-c", PHASE_PROBE], capture_output=True, text=True,
                         timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (0, "went on\n",
                                                        "phase streaming: into x\n")


def test_the_phase_named_stops_the_process_until_sigcont(monkeypatch):
    monkeypatch.setenv(runtime.STOP_AT_ENV, runtime.STREAMING)
    proc = subprocess.Popen([sys.executable, "-c", PHASE_PROBE], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while _state(proc.pid) != "T":
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (0, "went on\n", "phase streaming: into x\n")
