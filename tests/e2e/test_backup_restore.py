"""borg-vm backup, list and restore against real libvirt domains and a real Borg repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from borgvm import (
    BORG,
    archive_names,
    assert_same,
    backup,
    borg,
    borg_commands,
    init_repo,
    init_repo2,
    read_image,
    repo_lock_waiting_argv,
    restore_and_compare,
    run,
    run_on_terminal,
    start,
    wrapper_env,
)
from guest import MIB, poll

KIB = 1024
GRANULARITY = 64 * KIB  # dirty bitmap granularity = qcow2 cluster size: a 4 KiB write marks 64 KiB dirty
BORG_DEFAULT_LOCK_WAIT = 1  # seconds: what borg waits for a lock unless told otherwise
WAITING_RUN_LOCK_WAIT = 20  # seconds: well above borg's default, and polled every 2 s


class Dirty:
    """What the guest wrote since the last backup, at bitmap granularity."""

    def __init__(self):
        self.ranges: dict[str, list[tuple[int, int]]] = {}

    def add(self, target: str, offset: int, length: int) -> None:
        lo = offset // GRANULARITY * GRANULARITY
        hi = -(-(offset + length) // GRANULARITY) * GRANULARITY
        self.ranges.setdefault(target, []).append((lo, hi))

    def bytes(self, target: str) -> int:
        covered, end = 0, 0
        for lo, hi in sorted(self.ranges.get(target, [])):
            lo = max(lo, end)
            if hi > lo:
                covered += hi - lo
                end = hi
        return covered


def one_error_line(result, *words):
    """Assert borg-vm said exactly one line on stderr, its own, with all the words."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("borg-vm: "), lines
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_two_disks_full_then_incrementals_restore_bit_for_bit(make_domain, repo, tmp_path,
                                                              generation):
    d = make_domain(disks=[("vda", 64 * MIB, "qcow2"), ("vdb", 32 * MIB, "qcow2")])
    dirty = Dirty()
    d.write("vda", 0, 4 * MIB, 0xA1)
    d.write("vda", 10 * MIB + 4096, 3 * MIB, 0xA2)   # unaligned start
    d.write("vdb", 1 * MIB, 2 * MIB, 0xB1)
    first = backup(d.name, repo)
    assert first["level"] == "full"
    assert "no earlier archive" in first["reason"]
    assert first["disks"]["vda"]["data"] <= 8 * MIB
    views = [{t: d.read_disk(t) for t in ("vda", "vdb")}]

    # Overlapping rewrites, zeroes inside data, a discard, a tiny unaligned write.
    for target, off, n, op in [("vda", 2 * MIB, 4 * MIB, 0xC1),
                               ("vda", 10 * MIB + 4096 + 64 * KIB, 128 * KIB, "zero"),
                               ("vdb", 1 * MIB, 1 * MIB, "discard"),
                               ("vda", 40 * MIB + 100, 10, 0xC2)]:
        if op == "zero":
            d.write_zeroes(target, off, n)
        elif op == "discard":
            d.discard(target, off, n)
        else:
            d.write(target, off, n, op)
        dirty.add(target, off, n)
    second = backup(d.name, repo)
    assert second["level"] == "inc"
    assert second["snapshot"] == first["snapshot"]
    for t in ("vda", "vdb"):
        recorded = second["disks"][t]["data"] + second["disks"][t]["zero"]
        assert second["disks"][t]["data"] <= dirty.bytes(t), t
        assert recorded <= dirty.bytes(t), t
    assert second["disks"]["vdb"]["zero"] >= 1 * MIB   # the discard is recorded, not dropped
    views.append({t: d.read_disk(t) for t in ("vda", "vdb")})

    dirty = Dirty()
    d.write_zeroes("vda", 0, 1 * MIB, unmap=True)
    d.write("vdb", 31 * MIB, 1 * MIB, 0xD1)           # up to the last byte
    d.write("vda", 3 * MIB, 64 * KIB, 0xD2)
    for t, off, n in [("vda", 0, MIB), ("vdb", 31 * MIB, MIB), ("vda", 3 * MIB, 64 * KIB)]:
        dirty.add(t, off, n)
    third = backup(d.name, repo)
    assert third["level"] == "inc"
    for t in ("vda", "vdb"):
        assert third["disks"][t]["data"] + third["disks"][t]["zero"] <= dirty.bytes(t), t
    views.append({t: d.read_disk(t) for t in ("vda", "vdb")})
    for t in ("vda", "vdb"):
        d.assert_matches_model(t)

    listed = run("list", d.name, "--repo", repo, "--json").json()["archives"]
    assert [a["checkpoint"] for a in listed] == [r["checkpoint"] for r in (first, second, third)]
    assert [a["level"] for a in listed] == ["full", "inc", "inc"]
    assert [a["parent"] for a in listed] == [None, first["archive"], second["archive"]]

    for i, (result, view) in enumerate(zip((first, second, third), views)):
        doc = restore_and_compare(d.name, repo, result["checkpoint"], view, tmp_path,
                                  f"chain{i}")
        # Borg 2: every point one complete image, whatever its age
        assert len(doc["disks"]["vda"]["chain"]) == (1 if generation == "borg2" else i + 1)
        restore_and_compare(d.name, repo, result["checkpoint"], view, tmp_path, f"flat{i}",
                            "--flatten")
    restore_and_compare(d.name, repo, third["checkpoint"], views[2], tmp_path, "raw",
                        "--flatten", "--format", "raw")
    # libvirt keeps exactly one borg-vm checkpoint: the newest.
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [third["checkpoint"]]
    assert not list(Path("/run/borg-vm").glob(f"{d.dom.UUIDString()}.*"))


def test_writes_during_backup_do_not_leak_into_it(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 8 * MIB, 0x11)
    backup(d.name, repo)
    d.write("vda", 1 * MIB, 1 * MIB, 0x22)
    before = d.read_disk("vda")

    env = wrapper_env(tmp_path, "pause")
    proc = start("backup", d.name, "--repo", repo, "--json", env=env)
    poll(lambda: (tmp_path / "started").exists() or proc.poll() is not None, 60,
         "borg import-tar to start")
    assert proc.poll() is None, proc.communicate()
    # The job's export is frozen: these writes belong to the next backup.
    d.write("vda", 1 * MIB, 2 * MIB, 0x33)
    d.write("vda", 20 * MIB, 1 * MIB, 0x44)
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    during = d.read_disk("vda")

    archives = run("list", d.name, "--repo", repo, "--json").json()["archives"]
    restore_and_compare(d.name, repo, archives[-1]["checkpoint"], {"vda": before}, tmp_path,
                        "pit")
    after = backup(d.name, repo)
    assert after["level"] == "inc"
    restore_and_compare(d.name, repo, after["checkpoint"], {"vda": during}, tmp_path, "next")


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_qemu_killed_falls_back_to_full_with_reason(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0x12)
    backup(d.name, repo)
    before = archive_names(repo)
    d.kill_qemu()
    d.start_paused()
    d.write("vda", 5 * MIB, 1 * MIB, 0x13)

    refused = backup(d.name, repo, "--level", "inc", code=2)
    assert "inconsistent" in refused.stderr
    assert archive_names(repo) == before

    result = backup(d.name, repo, code=1)     # the fallback to a full is a warning
    assert result["level"] == "full"
    assert "inconsistent" in result["reason"]
    restore_and_compare(d.name, repo, result["checkpoint"], {"vda": d.read_disk("vda")},
                        tmp_path, "full")
    assert backup(d.name, repo)["level"] == "inc"


def test_raw_disk_is_backed_up_in_full_every_run(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2"), ("vdb", 8 * MIB, "raw")])
    d.write("vda", 0, 1 * MIB, 0x21)
    d.write("vdb", 2 * MIB, 1 * MIB, 0x22)
    backup(d.name, repo, code=1)       # the warning that vdb is raw: exit 1
    d.write("vda", 4 * MIB, 64 * KIB, 0x23)
    d.write("vdb", 6 * MIB, 64 * KIB, 0x24)
    second = run("backup", d.name, "--repo", repo, "--json", code=1)
    assert "vdb is raw" in second.stderr
    doc = second.json_lines()[0]
    assert doc["level"] == "inc"
    assert doc["disks"]["vda"]["data"] == 64 * KIB
    views = {t: d.read_disk(t) for t in ("vda", "vdb")}
    restored = restore_and_compare(d.name, repo, doc["checkpoint"], views, tmp_path, "raw")
    assert len(restored["disks"]["vda"]["chain"]) == 2
    assert len(restored["disks"]["vdb"]["chain"]) == 1
    # A raw base under qcow2 overlays.
    rawbase = restore_and_compare(d.name, repo, doc["checkpoint"], views, tmp_path, "rawbase",
                                  "--format", "raw")
    base, top = rawbase["disks"]["vda"]["chain"]
    assert base.endswith(".img") and top.endswith(".qcow2")


def test_bad_input_is_one_clear_line_and_exit_2(make_domain, repo, tmp_path, monkeypatch):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0x31)
    # The first use of a repository makes this host's key for it and says so, once;
    # the bad inputs below come later.
    made = run("key", "show", "--repo", repo)
    assert "made authentication key" in made.stderr and "key export" in made.stderr

    one_error_line(run("backup", "borgvm-test-no-such-domain", "--repo", repo, code=2),
                   "not found")
    one_error_line(run("backup", d.name, "--repo", str(tmp_path / "nope"), code=2),
                   "does not exist")
    one_error_line(run("backup", d.name, "--repo", repo, "--level", "inc", code=2),
                   "no usable parent")
    one_error_line(run("backup", d.name, "--repo", repo, "--exclude-disk", "vdz", code=2),
                   "vdz")
    assert d.dom.listAllCheckpoints() == [] and archive_names(repo) == []

    secret = init_repo(tmp_path / "secret", "repokey-blake2",
                       env=dict(os.environ, BORG_PASSPHRASE="right"))
    env = dict(os.environ, BORG_PASSPHRASE="wrong")
    one_error_line(run("backup", d.name, "--repo", secret, env=env, code=2), "passphrase")
    assert d.dom.listAllCheckpoints() == []

    first = backup(d.name, repo)
    one_error_line(run("restore", d.name, "--repo", repo, "--checkpoint", "borgvm-nope",
                       "--to", str(tmp_path / "r"), code=2), "borgvm-nope",
                   first["checkpoint"])
    to = tmp_path / "existing"
    run("restore", d.name, "--repo", repo, "--to", str(to))
    before = {p.name: p.stat().st_mtime_ns for p in to.iterdir()}
    one_error_line(run("restore", d.name, "--repo", repo, "--to", str(to), code=2),
                   "--force")
    assert {p.name: p.stat().st_mtime_ns for p in to.iterdir()} == before
    run("restore", d.name, "--repo", repo, "--to", str(to), "--force")
    one_error_line(run("list", "--repo", str(tmp_path / "nope"), code=2), "does not exist")
    monkeypatch.delenv("BORG_REPO", raising=False)
    one_error_line(run("list", code=2), "BORG_REPO")


def test_ssh_repository_through_borg_rsh(make_domain, tmp_path, monkeypatch):
    """ssh:// repositories go through borg's own ssh: BORG_RSH reaches borg untouched.

    The "ssh" here runs the remote command locally (no sshd on test machines):
    everything borg-vm does is the same as against a real remote.
    """
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text("#!/bin/sh\n# fake-ssh [opts] HOST borg serve ...: run it here\n"
                        "while [ \"$1\" != borg ]; do shift; done\nshift\n"
                        f"exec {BORG} \"$@\"\n")
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("BORG_RSH", str(fake_ssh))
    repo = init_repo(f"ssh://backuphost{tmp_path / 'remote-repo'}")
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0x41)
    backup(d.name, repo)
    d.write("vda", 1 * MIB, 64 * KIB, 0x42)
    second = backup(d.name, repo)
    assert second["level"] == "inc"
    restore_and_compare(d.name, repo, second["checkpoint"], {"vda": d.read_disk("vda")},
                        tmp_path, "ssh")


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_a_run_planned_from_what_this_host_saw_runs_again_if_the_repository_changed(
        make_domain, repo, tmp_path, generation):
    """A run plans from the domain's archives this host saw (its last listing and
    what its runs committed since: services/catalog_cache.py) while the repository
    is listed again. An archive deleted behind its back makes the listing differ:
    the run is undone before it records anything and runs again from the listing."""
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0xE1)
    first = backup(d.name, repo)
    d.write("vda", 2 * MIB, 1 * MIB, 0xE2)
    second = run("--debug", "backup", d.name, "--repo", repo, "--json")
    assert "planning from what this host last saw" in second.stderr
    assert "repository changed" not in second.stderr
    second_doc = second.json_lines()[0]
    assert second_doc["level"] == "inc"
    if generation == "borg1":
        borg("delete", f"{repo}::{second_doc['archive']}")
    else:
        subprocess.run([os.environ["BORG_VM_BORG"], "-r", repo, "delete",
                        second_doc["archive"]], check=True, capture_output=True)
    d.write("vda", 4 * MIB, 1 * MIB, 0xE3)
    # The listing's newest archive is the first, whose checkpoint the second run
    # deleted: it cannot be brought back, so a full. The run undone is no failure.
    third = run("--debug", "backup", d.name, "--repo", repo, "--json")
    assert "planning from what this host last saw" in third.stderr
    assert "the repository changed since this host last listed it" in third.stderr
    assert "could not be brought back" in third.stderr
    assert "backup failed" not in third.stderr
    third_doc = third.json_lines()[0]
    listed = run("list", d.name, "--repo", repo, "--json").json()["archives"]
    assert [a["checkpoint"] for a in listed] == [first["checkpoint"], third_doc["checkpoint"]]
    assert (listed[1]["level"], listed[1]["parent"]) == ("full", None)
    # the undone run left nothing: no archive, no image, no checkpoint of its own
    assert not [n for n in archive_names(repo) if second_doc["checkpoint"] in n]
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [third_doc["checkpoint"]]
    restore_and_compare(d.name, repo, third_doc["checkpoint"], {"vda": d.read_disk("vda")},
                        tmp_path, "third")


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
def test_a_repository_made_again_where_one_was_gets_a_full_without_a_warning(
        make_domain, repo, tmp_path, generation):
    """What this host saw is kept by the repository's location: a repository
    deleted and made again there holds none of it. The run planned from it (with
    Borg 2 its image fails: the archive it builds on is gone) is undone, and
    runs again from the listing: a full, exit 0, no warning."""
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0xD1)
    first = backup(d.name, repo)
    shutil.rmtree(repo)
    if generation == "borg1":
        init_repo(repo)
    else:
        init_repo2(repo, os.environ["BORG_VM_BORG"])
    d.write("vda", 2 * MIB, 1 * MIB, 0xD2)
    again = run("--debug", "backup", d.name, "--repo", repo, "--json")   # exit 0
    assert "planning from what this host last saw" in again.stderr
    assert "the repository changed since this host last listed it" in again.stderr
    doc = again.json_lines()[0]
    assert doc["level"] == "full", doc
    listed = run("list", d.name, "--repo", repo, "--json").json()["archives"]
    assert [(a["checkpoint"], a["parent"]) for a in listed] == [(doc["checkpoint"], None)]
    assert first["checkpoint"] not in {c.getName() for c in d.dom.listAllCheckpoints()}
    restore_and_compare(d.name, repo, doc["checkpoint"], {"vda": d.read_disk("vda")},
                        tmp_path, "again")


def test_foreign_checkpoints_are_left_alone(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0x51)
    first = backup(d.name, repo)
    d.dom.checkpointCreateXML("<domaincheckpoint><name>someone-else</name>"
                              "</domaincheckpoint>", 0)
    d.write("vda", 2 * MIB, 64 * KIB, 0x52)
    second = backup(d.name, repo)
    assert second["level"] == "inc"
    names = sorted(c.getName() for c in d.dom.listAllCheckpoints())
    assert names == sorted(["someone-else", second["checkpoint"]])
    assert first["checkpoint"] not in names
    restore_and_compare(d.name, repo, second["checkpoint"], {"vda": d.read_disk("vda")},
                        tmp_path, "foreign")


def test_several_domains_one_failing_and_one_disk_restored(make_domain, repo, tmp_path):
    a = make_domain(disks=[("vda", 16 * MIB, "qcow2"), ("vdb", 8 * MIB, "qcow2")])
    a.write("vda", 0, 1 * MIB, 0x61)
    a.write("vdb", 0, 1 * MIB, 0x62)
    result = run("backup", a.name, "borgvm-test-missing", "--repo", repo, "--json", code=2)
    done, failed = result.json_lines()
    assert done["domain"] == a.name and "error" not in done, done
    assert failed["domain"] == "borgvm-test-missing" and failed["exit_code"] == 2, failed
    assert "borgvm-test-missing" in failed["error"] and failed["error"] in result.stderr

    doc = run("restore", a.name, "--repo", repo, "--to", str(tmp_path / "one"), "--disk", "vdb",
              "--json").json()
    assert list(doc["disks"]) == ["vdb"]
    assert_same(read_image(doc["disks"]["vdb"]["image"], tmp_path), a.read_disk("vdb"), "vdb")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(
        [Path(doc["disks"]["vdb"]["image"]).name, Path(doc["domain_xml"]).name])
    assert "vda" not in Path(doc["domain_xml"]).read_text()


def test_bad_compression_is_refused_before_anything_happens(make_domain, repo):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    one_error_line(run("backup", d.name, "--repo", repo, "--compression", "bogus", code=2),
                   "'bogus'", "borg help compression")
    assert d.dom.listAllCheckpoints() == [] and archive_names(repo) == []
    # checked before libvirt or the repository is even asked
    result = run("backup", "borgvm-test-no-such-domain", "--repo", str(Path(repo) / "nope"),
                 "--compression", "zstd,23", code=2)
    assert "zstd level must be 1-22, not 23" in result.stderr


def test_two_domains_backed_up_into_one_repository_at_once(make_domain, repo, tmp_path):
    """What borg-vm@.timer does at 02:00: the second run waits for the first's
    repository lock (longer than borg's own default wait) and both succeed."""
    a = make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix="a")
    b = make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix="b")
    a.write("vda", 0, 2 * MIB, 0x81)
    b.write("vda", 0, 2 * MIB, 0x82)
    held = tmp_path / "held"
    held.mkdir()
    first = start("backup", a.name, "--repo", repo, "--json", env=wrapper_env(held, "hold"))
    poll(lambda: (held / "started").exists() or first.poll() is not None, 60,
         "the first run's borg import-tar to hold the repository lock")
    assert first.poll() is None, first.communicate()

    # Borg polls a lock every tenth of the wait (at most every minute): a
    # shorter wait than the default keeps this test quick.
    second = start("backup", b.name, "--repo", repo, "--json",
                   env=dict(os.environ, BORG_VM_LOCK_WAIT=str(WAITING_RUN_LOCK_WAIT)))

    def waiting_the_full_wait() -> list[int]:
        # Its listing waits the brief wait first, then runs again with the full one.
        return [pid for pid, argv in repo_lock_waiting_argv(repo)
                if argv[argv.index("--lock-wait") + 1] == str(WAITING_RUN_LOCK_WAIT)]

    waiting = poll(lambda: waiting_the_full_wait() or second.poll() is not None, 60,
                   "the second run's borg to wait for the lock with the full wait")
    assert second.poll() is None, second.communicate()
    # Borg gives up after its default wait; the second run must outlast that.
    with pytest.raises(TimeoutError):
        poll(lambda: second.poll() is not None, 3 * BORG_DEFAULT_LOCK_WAIT,
             "the second run to end")
    assert waiting_the_full_wait() == waiting   # the very same borg, still waiting

    (held / "go").touch()
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    listed = run("list", "--repo", repo, "--json").json()["archives"]
    assert sorted((x["domain"], x["level"]) for x in listed) == sorted([(a.name, "full"),
                                                                        (b.name, "full")])
    waited = json.loads(outs[1][0])
    restore_and_compare(b.name, repo, waited["checkpoint"], {"vda": b.read_disk("vda")},
                        tmp_path, "waited")


@pytest.mark.parametrize("value", ["soon", "-1", "1.5"])
def test_bad_lock_wait_is_a_usage_error(repo, value):
    one_error_line(run("list", "--repo", repo, code=2,
                       env=dict(os.environ, BORG_VM_LOCK_WAIT=value)), "BORG_VM_LOCK_WAIT")
    result = run("list", "--repo", repo, "--lock-wait", value, code=2)
    assert "--lock-wait" in result.stderr


SECRET = "right horse"


@pytest.fixture
def secret_repo(tmp_path):
    """A repokey repository whose passphrase is SECRET (not in borg-vm's environment)."""
    return init_repo(tmp_path / "secret", "repokey-blake2",
                     env=dict(os.environ, BORG_PASSPHRASE=SECRET))


def test_passphrase_problems_stop_a_backup_before_its_job(make_domain, secret_repo, tmp_path):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0xA3)
    cases = [({"BORG_PASSPHRASE": "wrong"}, ["wrong"]),
             ({}, ["BORG_PASSPHRASE", "BORG_PASSCOMMAND"]),
             ({"BORG_PASSCOMMAND": "false"}, ["BORG_PASSCOMMAND", "failed"])]
    for i, (settings, words) in enumerate(cases):
        logged = tmp_path / f"log{i}"
        logged.mkdir()
        env = dict(wrapper_env(logged, "log"), **settings)
        result = run("backup", d.name, "--repo", secret_repo, env=env, code=2)
        one_error_line(result, *words)
        assert "{" not in result.stderr
        if "wrong" not in words:
            assert "wrong" not in result.stderr
        assert borg_commands(logged) == ["list"], settings   # checked before the job
        assert d.dom.listAllCheckpoints() == [], settings
    to = tmp_path / "restored"
    one_error_line(run("restore", d.name, "--repo", secret_repo, "--to", str(to), code=2),
                   "BORG_PASSPHRASE", "BORG_PASSCOMMAND")
    assert not to.exists()
    assert archive_names(secret_repo, env=dict(os.environ, BORG_PASSPHRASE=SECRET)) == []


def test_passphrase_asked_on_the_terminal_serves_the_whole_backup(make_domain, secret_repo,
                                                                  tmp_path):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0xA4)
    result, asked = run_on_terminal("backup", d.name, "--repo", secret_repo, "--json",
                                    "--no-progress", answer=SECRET)
    assert (result.code, asked) == (0, 1), result.stdout
    assert SECRET not in result.stdout
    done = json.loads(next(line for line in result.stdout.splitlines()
                           if line.startswith("{")))
    result, asked = run_on_terminal("list", "--repo", secret_repo, answer=SECRET)
    assert (result.code, asked) == (0, 1) and done["checkpoint"] in result.stdout
    result, asked = run_on_terminal("list", "--repo", secret_repo, answer="wrong")
    assert (result.code, asked) == (2, 3) and "wrong" in result.stdout
    restore_and_compare(d.name, secret_repo, done["checkpoint"], {"vda": d.read_disk("vda")},
                        tmp_path, "asked", env=dict(os.environ, BORG_PASSPHRASE=SECRET))
