"""Borg2Repository against the real Borg 2 beta set-up installs (contrib/setup-host.sh:
VENV/borg2): complete images read from the changed ranges alone, archives
named by ID, several writers at once."""

import os
import subprocess
import threading
from pathlib import Path

import pytest
from realstack import import_members

from borg_vm.adapters.borg import borg2
from borg_vm.adapters.borg.cli import BorgCli
from borg_vm.core.extent import DATA, SAME, ZERO, Extent, input_map
from borg_vm.errors import ArchiveUnreadable, BorgError, RepositoryReplay

MiB = 1 << 20
BLOCK = 64 * 1024
def disk(tmp_path, name="vda", size=8 * MiB):
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size // 2) + bytes(size // 2))
    return path


def image(repo, archive_id):
    with repo.extract_stdout(repo.ref(archive_id), []) as proc:
        data = proc.stdout.read()
        repo.finish("extract", proc)
    return data


def create(repo, name, path, recorded, reuse_from=None):
    size = path.stat().st_size
    return repo.create_image(name, str(path), input_map(size, recorded, reuse_from is not None),
                             reuse_from=reuse_from, comment='{"borg-vm": "{hostname}"}',
                             timestamp="2026-12-06T02:00:00+00:00", compression="lz4",
                             block_size=BLOCK)


def test_an_incremental_image_is_complete_and_reads_only_what_changed(tmp_path, repo2):
    path = disk(tmp_path)
    size = path.stat().st_size
    full = create(repo2, "web.base.c1~vda", path,
                  [Extent(0, size // 2, DATA), Extent(size // 2, size // 2, ZERO)])
    assert image(repo2, full.id) == path.read_bytes()

    before = path.read_bytes()
    with open(path, "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(MiB))          # recorded: read
        f.seek(5 * MiB)
        f.write(bytes(BLOCK))             # recorded as zeros: stored unread
        f.seek(3 * MiB)
        f.write(b"x" * BLOCK)             # not recorded: the map says it is unchanged
    inc = create(repo2, "web.base.c2~vda", path,
                 [Extent(MiB, MiB, DATA), Extent(5 * MiB, BLOCK, ZERO)], reuse_from=full.id)
    got = image(repo2, inc.id)
    want = bytearray(path.read_bytes())
    want[3 * MiB:3 * MiB + BLOCK] = before[3 * MiB:3 * MiB + BLOCK]   # same: taken unread
    assert got == bytes(want)
    assert inc.size == size and inc.id != full.id


def test_a_zero_range_is_stored_unread(tmp_path, repo2):
    path = disk(tmp_path, size=2 * MiB)
    created = create(repo2, "web.base.c1~vda", path, [Extent(0, MiB, DATA),
                                                     Extent(MiB, MiB, ZERO)])
    with open(path, "r+b") as f:
        f.seek(MiB)
        f.write(os.urandom(MiB))
    assert image(repo2, created.id) == path.read_bytes()[:MiB] + bytes(MiB)


def test_archives_are_listed_by_pattern_and_deleted_by_name(tmp_path, repo2):
    path = disk(tmp_path, size=MiB)
    names = ["web.base.c1~vda", "web.base.c1~vdb", "web.base.c1", "db.base.c1~vda"]
    ids = {n: create(repo2, n, path, [Extent(0, MiB, DATA)]).id for n in names}
    listed = {a.name: a for a in repo2.list_archives()}
    assert {n: a.id for n, a in listed.items()} == ids
    assert {a.name for a in repo2.list_archives(pattern=r"web\.base\.c1~.*")} == {
        "web.base.c1~vda", "web.base.c1~vdb"}
    assert repo2.repository_id() and len(repo2.repository_id()) == 64
    repo2.delete(["web.base.c1~vda", "web.base.c1"])
    assert {a.name for a in repo2.list_archives()} == {"web.base.c1~vdb", "db.base.c1~vda"}
    repo2.compact()


def test_a_reference_that_is_gone_fails_and_commits_nothing(tmp_path, repo2):
    path = disk(tmp_path, size=MiB)
    with pytest.raises(BorgError):
        create(repo2, "web.base.c2~vda", path, [], reuse_from="0" * 64)
    assert repo2.list_archives() == []


def test_two_writers_at_once(tmp_path, repo2, monkeypatch):
    """Two domains backed up into one repository at the same time, each borg with
    its own cache: neither waits for the other's lock."""
    paths = [disk(tmp_path, f"vd{c}", size=16 * MiB) for c in "ab"]
    done, failed = [], []

    def backup(path, n):
        try:
            done.append(create(repo2, f"dom{n}.base.c1~vda", path,
                               [Extent(0, 16 * MiB, DATA)]))
        except BaseException as e:  # reported below, in the test's thread
            failed.append(e)

    threads = [threading.Thread(target=backup, args=(p, n)) for n, p in enumerate(paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failed, failed
    assert {image(repo2, c.id) for c in done} == {p.read_bytes() for p in paths}


def test_the_map_names_every_byte(tmp_path, repo2):
    """What create_image hands Borg is the input map as Borg reads it."""
    path = disk(tmp_path, size=MiB)
    ranges = input_map(MiB, [Extent(BLOCK, BLOCK, DATA)], incremental=True)
    assert ranges == [(0, BLOCK, SAME), (BLOCK, BLOCK, DATA), (2 * BLOCK, MiB - 2 * BLOCK, SAME)]
    with pytest.raises(BorgError):   # SAME needs a reference
        repo2.create_image("x~vda", str(path), ranges, reuse_from=None, comment="",
                           timestamp="2026-12-06T02:00:00+00:00", compression="lz4",
                           block_size=BLOCK)


def _security_dir_ahead(tmp_path, monkeypatch, repo2):
    """Point borg at a security directory that saw a newer manifest than the
    repository has (as after the repository was rolled back)."""
    security = tmp_path / "security"
    monkeypatch.setenv("BORG_SECURITY_DIR", str(security))
    repo2.list_archives()   # borg records what it saw
    (stamp,) = security.glob("*/manifest-timestamp")
    stamp.write_text("2099-01-01T00:00:00.000000+00:00")


def test_a_repository_older_than_this_host_saw_is_refused(tmp_path, repo2, monkeypatch):
    monkeypatch.setattr(borg2, "REPLAY_PAUSE", 0)
    _security_dir_ahead(tmp_path, monkeypatch, repo2)
    runs = _runs_then(monkeypatch, lambda: None)
    with pytest.raises(RepositoryReplay, match="older copy of the repository"):
        create(repo2, "web.base.c1~vda", disk(tmp_path), [Extent(0, 8 * MiB, DATA)])
    assert len(runs) == borg2.REPLAY_TRIES


def _runs_then(monkeypatch, after) -> list:
    """Call after() when each borg command BorgCli runs has ended; return the list
    of the runs' arguments, as they come."""
    runs, original = [], BorgCli._run

    def run(self, *a, **k):
        runs.append(a)
        try:
            return original(self, *a, **k)
        finally:
            after()

    monkeypatch.setattr(BorgCli, "_run", run)
    return runs


# Borg names the refusal RepositoryIDNotUnique in a repository without a key.
@pytest.mark.parametrize("repo2", ["aes256-ocb", "none-sha256"], indirect=True)
def test_a_command_refused_for_another_writers_commit_runs_again(tmp_path, repo2,
                                                                 monkeypatch):
    """2.0.0b23 refuses a command when a borg of this host commits as it starts:
    simulated here by a security directory ahead for the first run only."""
    monkeypatch.setattr(borg2, "REPLAY_PAUSE", 0)
    _security_dir_ahead(tmp_path, monkeypatch, repo2)
    (stamp,) = (tmp_path / "security").glob("*/manifest-timestamp")
    # after each run, as if the other writer's commit was loaded now
    runs = _runs_then(monkeypatch, lambda: stamp.write_text(""))
    created = create(repo2, "web.base.c1~vda", disk(tmp_path), [Extent(0, 8 * MiB, DATA)])
    assert len(runs) == 2 and repo2.list_archives()[0].id == created.id


def _plant_pointer(repo2) -> Path:
    """Name an archive in the repository's archive directory that has no metadata:
    what another writer's commit looks like to a listing until that writer closes
    (or what an unfinished or planted entry looks like for good)."""
    pointer = Path(repo2.repo) / "archives" / os.urandom(32).hex()
    pointer.touch()
    return pointer


def test_a_listing_beside_another_writers_commit_runs_again(tmp_path, repo2, monkeypatch):
    monkeypatch.setattr(borg2, "REPLAY_PAUSE", 0)
    created = create(repo2, "web.base.c1~vda", disk(tmp_path), [Extent(0, 8 * MiB, DATA)])
    pointer = _plant_pointer(repo2)
    # after each run, as if the other writer closed now
    runs = _runs_then(monkeypatch, lambda: pointer.unlink(missing_ok=True))
    assert [a.id for a in repo2.list_archives()] == [created.id]
    assert len(runs) == 2


def test_an_entry_without_metadata_fails_every_listing_and_says_how_to_repair(
        tmp_path, repo2, borg2_executable, monkeypatch):
    monkeypatch.setattr(borg2, "REPLAY_PAUSE", 0)
    created = create(repo2, "web.base.c1~vda", disk(tmp_path), [Extent(0, 8 * MiB, DATA)])
    pointer = _plant_pointer(repo2)
    runs = _runs_then(monkeypatch, lambda: None)
    with pytest.raises(ArchiveUnreadable) as e:
        repo2.list_archives()
    assert len(runs) == borg2.REPLAY_TRIES
    assert e.value.message.startswith(
        f"borg repo-list found archive {pointer.name} in the archive directory of "
        f"repository {repo2.repo} but not its metadata")
    # What the message says removes it does
    assert "'borg check --repair --archives-only' removes" in e.value.message
    subprocess.run([borg2_executable, "-r", repo2.repo, "check", "--repair", "--archives-only"],
                   check=True, capture_output=True,
                   env={**os.environ, "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "YES"})
    assert [a.id for a in repo2.list_archives()] == [created.id]


def test_a_create_reports_its_progress_through_the_file(tmp_path, repo2):
    path = disk(tmp_path, size=16 * MiB)
    seen = []
    created = repo2.create_image("web.base.c1~vda", str(path),
                                 input_map(16 * MiB, [Extent(0, 16 * MiB, DATA)], False),
                                 reuse_from=None, comment="{}", compression="lz4",
                                 timestamp="2026-12-06T02:00:00+00:00", block_size=BLOCK,
                                 progress=seen.append)
    assert created.size == 16 * MiB
    assert seen and seen == sorted(seen) and seen[-1] <= 16 * MiB


def pack_sizes(repo) -> list[int]:
    return [f.stat().st_size for f in (Path(repo.repo) / "packs").rglob("*") if f.is_file()]


def test_images_are_written_in_small_packs_unless_the_environment_sets_a_size(
        tmp_path, repo2, monkeypatch):
    # Borg 2.0.0b23 loads a whole pack to read one object of it: see borg2.PACK_SIZE
    path = disk(tmp_path, size=16 * MiB)
    before = set(pack_sizes(repo2))
    create(repo2, "web.base.c1~vda", path, [Extent(0, 16 * MiB, DATA)])
    sizes = pack_sizes(repo2)
    assert len(sizes) > len(before) + 2
    # a pack is written with the object that takes it to the size
    assert max(sizes) <= borg2.PACK_SIZE + BLOCK + 1024
    monkeypatch.setenv("BORG_PACK_MAX_SIZE", str(64 * MiB))
    with repo2.child_env() as (env, _fds):
        assert env["BORG_PACK_MAX_SIZE"] == str(64 * MiB)


def test_an_import_says_the_id_of_the_archive_it_committed(repo2):
    archive_id = import_members(repo2, "record", [("manifest.json", b"{}")])
    assert [(a.name, a.id) for a in repo2.list_archives()] == [("record", archive_id)]
