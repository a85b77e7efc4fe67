"""borg-vm restore through the CLI against hand-made archives in a real
repository: where it may write, with which permissions, and what it leaves
behind when it fails."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from handmade import DOMAIN, borg_vm, error_line, image_data, write_archive
from realstack import MiB

from borg_vm import runtime
from borg_vm.format import names as fmt
from borg_vm.format.summary import ArchiveInfo, DiskSummary, Summary
from borg_vm.services.restore import plan as restore_plan

DATA = bytes(range(256)) * 4096          # 1 MiB at the start of vda
UMASK = 0o022


@pytest.fixture
def repo(make_repo):
    """Return the path of a repository holding one valid full archive of DOMAIN."""
    borg = make_repo()
    write_archive(borg, {"vda": DATA})
    return borg.repo


@pytest.fixture
def damaged_repo(make_repo):
    """Return the path of a repository whose one archive fails verification
    after its image was written (the data does not hash to the manifest's digest)."""
    borg = make_repo()
    write_archive(borg, {"vda": DATA},
                  data_members=[(fmt.member_name("vda", 0), bytes(len(DATA)))])
    return borg.repo


def restore(repo, to, *extra, code=0):
    return borg_vm("restore", DOMAIN, "--repo", repo, "--to", str(to), "--no-progress",
                   *extra, code=code, umask=UMASK)


def test_restore_of_a_hand_made_archive(repo, tmp_path):
    restore(repo, tmp_path / "out")
    images = list((tmp_path / "out").glob("*.qcow2"))
    assert len(images) == 1
    assert image_data(str(images[0]), tmp_path)[:len(DATA)] == DATA


# --- B2: an unusable --to is one line and exit 2 -------------------------------------

@pytest.mark.parametrize("to", ["file", "file/sub", "/proc/borgvm-test-restore",
                                "/sys/borgvm-test-restore", "/proc"])
def test_unusable_target_is_one_line_and_exit_2(repo, tmp_path, to):
    (tmp_path / "file").write_bytes(b"keep")
    path = to if to.startswith("/") else str(tmp_path / to)
    line = error_line(restore(repo, path, code=2))
    assert f"Cannot restore into {path}" in line
    assert (tmp_path / "file").read_bytes() == b"keep"
    assert not os.path.lexists("/proc/borgvm-test-restore")


# --- B4: what restore writes is readable by root only ---------------------------------

@pytest.mark.parametrize("extra", [(), ("--flatten", "--format", "raw")])
def test_restored_files_are_private_under_umask_022(repo, tmp_path, extra):
    out = tmp_path / "out"
    restore(repo, out, *extra)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert len(modes) == 2                      # the image and the domain XML
    assert set(modes.values()) == {0o600}, modes


def test_overlay_images_are_private_under_umask_022(tmp_path):
    """An incremental's overlay is created like the base: 0600 before any data."""
    summary = Summary("full", None, "t", "u",
                              {"vda": DiskSummary("full", MiB, "qcow2", "/v", 0, 0)})
    arcs = tuple(ArchiveInfo(fmt.ArchiveName(DOMAIN, "S", c), summary)
                 for c in ("borgvm-1", "borgvm-2"))
    plan = restore_plan.DiskPlan("vda", arcs, ("base.qcow2", "top.qcow2"), ("qcow2", "qcow2"),
                                 ((0, 0, 0), (1, 0, 1)))
    old = os.umask(UMASK)
    try:
        restore_plan.create_images(plan, str(tmp_path), MiB)
    finally:
        os.umask(old)
    assert [stat.S_IMODE((tmp_path / image).stat().st_mode)
            for image in plan.images] == [0o600, 0o600]


# --- R9: a failed restore leaves --to as it was ----------------------------------------

def test_failed_restore_removes_the_directories_it_created(damaged_repo, tmp_path):
    proc = restore(damaged_repo, tmp_path / "new" / "deeper", code=2)
    line = proc.stderr.splitlines()[-1]
    assert "(sha256 differs): the archive is damaged; nothing was restored." in line, line
    assert not (tmp_path / "new").exists()


def test_failed_restore_keeps_a_directory_it_did_not_create(damaged_repo, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep").write_bytes(b"x")
    restore(damaged_repo, tmp_path / "mine", code=2)
    assert os.listdir(tmp_path / "mine") == ["keep"]
    restore(damaged_repo, tmp_path / "mine" / "new", code=2)
    assert os.listdir(tmp_path / "mine") == ["keep"]


# --- issue #20: what appears in --to during a restore is never replaced ---------------

STOP_TIMEOUT = 60


def stopped_restore(repo, to, *extra):
    """Start a restore that stops itself (SIGSTOP) once its images are written, before
    they move into --to (runtime.APPLIED); return it, stopped."""
    proc = subprocess.Popen([sys.executable, "-m", "borg_vm", "restore", DOMAIN, "--repo", repo,
                             "--to", str(to), "--no-progress", *extra], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, **{runtime.STOP_AT_ENV: runtime.APPLIED}))
    deadline = time.monotonic() + STOP_TIMEOUT
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the restore did not stop at its phase"
        time.sleep(0.05)
    return proc


def resumed(proc) -> tuple[int, str]:
    proc.send_signal(signal.SIGCONT)
    _out, err = proc.communicate(timeout=STOP_TIMEOUT)
    return proc.returncode, err


def test_a_concurrent_restore_into_the_same_directory_keeps_the_first(repo, tmp_path):
    """Both checked --to at their start; the second to finish used to replace the
    first's files and exit 0."""
    to = tmp_path / "out"
    late = stopped_restore(repo, to)
    restore(repo, to)
    first = {p.name: p.stat().st_ino for p in to.iterdir() if not p.name.startswith(".")}
    code, err = resumed(late)
    assert code == 2 and "Refusing to overwrite" in err.splitlines()[-1], err
    for name in first:
        assert name in err
    assert {p.name: p.stat().st_ino for p in to.iterdir()} == first   # nothing staged left


def test_a_file_that_appears_during_the_restore_is_kept(repo, tmp_path):
    to = tmp_path / "out"
    late = stopped_restore(repo, to)
    (stage,) = os.listdir(to)
    (image,) = os.listdir(to / stage)
    (to / image).write_bytes(b"mine")
    code, err = resumed(late)
    assert code == 2 and f"Refusing to overwrite {to / image}" in err.splitlines()[-1], err
    assert os.listdir(to) == [image] and (to / image).read_bytes() == b"mine"


def test_force_replaces_what_appeared(repo, tmp_path):
    to = tmp_path / "out"
    late = stopped_restore(repo, to, "--force")
    restore(repo, to)
    code, err = resumed(late)
    assert code == 0, err
    assert len(list(to.glob("*.qcow2"))) == 1 and len(list(to.glob("*.xml"))) == 1


def test_a_disk_named_twice_restores_once(repo, tmp_path):
    proc = restore(repo, tmp_path / "out", "--disk", "vda", "--disk", "vda")
    assert "never matched" not in proc.stderr
    assert len(list((tmp_path / "out").glob("*.qcow2"))) == 1


def test_no_room_for_the_names_is_a_full_target_with_nothing_moved_in(repo, tmp_path):
    """Moving in claims each name with a new (empty) file first, which takes an
    inode: a tmpfs that has one for the staging directory, the image and the XML
    but not for the names in --to."""
    to = tmp_path / "to"
    to.mkdir()
    # the root, the staging directory, the image and the XML
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=4", "tmpfs", str(to)],
                   check=True)
    try:
        line = restore(repo, to, code=2).stderr.splitlines()[-1]
        assert f"The file system of {to} filled up during the restore" in line, line
        assert os.listdir(to) == []
    finally:
        subprocess.run(["umount", str(to)], check=True)
