"""format.writer.write_archive against a real Borg 1.4 repository, for a run
planned from what this host saw: its borg import-tar starts while the
repository is listed again (confirm waits for that listing), so it starts up
meanwhile, with the brief lock wait; locked out, it runs again with the full
wait; stopped by confirm, it leaves the repository as it was."""

import contextlib
import os
import subprocess
import time
from datetime import UTC, datetime

import pytest
from handmade import domain_xml, manifest

from borg_vm.adapters.borg import DEFAULT_LOCK_WAIT, Borg1Repository, find_borg
from borg_vm.adapters.borg.cli import BRIEF_LOCK_WAIT
from borg_vm.format import writer
from borg_vm.progress import Progress
from borg_vm.services.catalog_cache import Unconfirmed

DEADLINE = 60   # seconds a borg may take to start, or to give up a lock


@pytest.fixture
def repo(tmp_path):
    """(Borg1Repository through a recorder of borg's argv and PID, the record file)."""
    path = str(tmp_path / "repo")
    subprocess.run([find_borg(), "init", "-e", "none", path], check=True, capture_output=True)
    calls = tmp_path / "calls"
    recorder = tmp_path / "borg"
    recorder.write_text(f'#!/bin/sh\necho "$$ $*" >> {calls}\nexec {find_borg()} "$@"\n')
    recorder.chmod(0o755)
    return Borg1Repository(path, executable=str(recorder)), calls


def imports(calls) -> list[tuple[int, str]]:
    """(PID, argv) of each borg import-tar the recorder saw."""
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [(int(pid), argv) for pid, argv in (line.split(" ", 1) for line in lines)
            if " import-tar " in argv]


def wait(what: str, predicate) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE} s"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")   # ended, not yet waited for
    except FileNotFoundError:
        return True


class NoData:
    """The disk source of a manifest whose disk holds no data: it reads nothing."""

    read_request = 1 << 20

    @contextlib.contextmanager
    def reads(self, target, requests, hold):
        assert list(requests) == []
        yield iter(())


def where(target: str, layer: int) -> writer.Where:
    return writer.Where(NoData(), target)


def write(borg, confirm) -> writer.Written:
    """write_archive of a full of the hand-made domain whose disk holds no data, with confirm."""
    m = manifest({"vda": b""})
    parts = writer.Parts(domain_xml().decode(), lambda: "<domaincheckpoint/>",
                         datetime(2026, 11, 26, 2, tzinfo=UTC), "lz4", 65536, b"k" * 32)
    return writer.write_archive(borg, m.name, m, parts, where,
                                Progress.for_terminal("", 0, False), confirm)


def test_an_import_locked_out_beside_the_listing_runs_again_with_the_full_wait(repo):
    borg, calls = repo
    # Another borg holds the repository (as the listing does) until confirm lets it go.
    holder = subprocess.Popen([find_borg(), "with-lock", borg.repo, "cat"],
                              stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    wait("lock", lambda: os.path.isdir(os.path.join(borg.repo, "lock.exclusive")))

    def confirm():
        wait("import-tar", lambda: imports(calls))
        wait("lock-out of the brief import-tar", lambda: gone(imports(calls)[0][0]))
        holder.communicate(timeout=DEADLINE)   # the listing ends: the lock is free

    written = write(borg, confirm)
    (_first, brief), (_second, full) = imports(calls)
    assert f"--lock-wait {BRIEF_LOCK_WAIT} import-tar " in brief
    assert f"--lock-wait {DEFAULT_LOCK_WAIT} import-tar " in full
    assert written.late is None and written.archive is not None
    assert [a.name for a in borg.list_archives()] == [written.archive.archive]


def test_an_import_stopped_by_confirm_leaves_the_repository_as_it_was(repo):
    borg, calls = repo
    started = []

    def confirm():
        wait("import-tar", lambda: imports(calls))
        started.append(imports(calls)[0])
        raise Unconfirmed()

    with pytest.raises(Unconfirmed):
        write(borg, confirm)
    (pid, argv), = started
    assert f"--lock-wait {BRIEF_LOCK_WAIT} import-tar " in argv
    assert gone(pid)
    quick = Borg1Repository(borg.repo, lock_wait=0)   # no lock left behind
    assert quick.list_archives(checkpoints=True) == []
