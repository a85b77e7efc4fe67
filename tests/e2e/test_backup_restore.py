"""borg-vm backup, list and restore against real libvirt domains and a real Borg repository."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import libvirt
import pytest

from borgvm import (BORG, archive_names, assert_same, backup, init_repo, read_image,
                    restore_and_compare, run, start, wrapper_env)
from guest import MIB, poll

KIB = 1024
GRANULARITY = 64 * KIB  # dirty bitmap granularity = qcow2 cluster size (FACTS.md)


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


def test_two_disks_full_then_incrementals_restore_bit_for_bit(make_domain, repo, tmp_path):
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
        assert len(doc["disks"]["vda"]["chain"]) == i + 1
        restore_and_compare(d.name, repo, result["checkpoint"], view, tmp_path, f"flat{i}",
                            "--flatten")
    restore_and_compare(d.name, repo, third["checkpoint"], views[2], tmp_path, "raw",
                        "--flatten", "--format", "raw")
    # libvirt keeps exactly one borg-vm checkpoint: the newest.
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [third["checkpoint"]]


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


def test_borg_killed_mid_stream_leaves_nothing_and_next_run_is_incremental(
        make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 64 * MIB, "qcow2")])
    d.write("vda", 0, 16 * MIB, 0x55)
    first = backup(d.name, repo)
    d.write("vda", 4 * MIB, 24 * MIB, 0x66)
    expected = d.read_disk("vda")

    result = backup(d.name, repo, env=wrapper_env(tmp_path, "kill", kill_after=str(2 * MIB)),
                    code=2)
    assert (tmp_path / "killed").exists()
    assert result.stdout == ""
    assert "borg-vm:" in result.stderr and "Traceback" not in result.stderr
    assert archive_names(repo) == [first["archive"]]          # no partial, no final
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [first["checkpoint"]]
    with pytest.raises(libvirt.libvirtError):
        d.dom.backupGetXMLDesc()                              # no job left running
    assert not list(Path("/run/borg-vm").glob(f"{d.dom.UUIDString()}.*/"))

    again = backup(d.name, repo)
    assert again["level"] == "inc", again["reason"]
    assert again["disks"]["vda"]["data"] <= 24 * MIB
    restore_and_compare(d.name, repo, again["checkpoint"], {"vda": expected}, tmp_path, "after")


def test_sigterm_during_backup_cleans_up(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 4 * MIB, 0x77)
    first = backup(d.name, repo)
    d.write("vda", 0, 1 * MIB, 0x78)

    proc = start("backup", d.name, "--repo", repo, env=wrapper_env(tmp_path, "pause"))
    poll(lambda: (tmp_path / "started").exists() or proc.poll() is not None, 60,
         "borg import-tar to start")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "Interrupted by SIGTERM" in err
    assert archive_names(repo) == [first["archive"]]
    assert [c.getName() for c in d.dom.listAllCheckpoints()] == [first["checkpoint"]]
    assert backup(d.name, repo)["level"] == "inc"


def test_qemu_killed_falls_back_to_full_with_reason(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0x12)
    backup(d.name, repo)
    d.kill_qemu()
    d.start_paused()
    d.write("vda", 5 * MIB, 1 * MIB, 0x13)

    refused = backup(d.name, repo, "--level", "inc", code=2)
    assert "inconsistent" in refused.stderr
    assert len(archive_names(repo)) == 1

    result = backup(d.name, repo)
    assert result["level"] == "full"
    assert "inconsistent" in result["reason"]
    restore_and_compare(d.name, repo, result["checkpoint"], {"vda": d.read_disk("vda")},
                        tmp_path, "full")
    assert backup(d.name, repo)["level"] == "inc"


def test_raw_disk_is_backed_up_in_full_every_run(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2"), ("vdb", 8 * MIB, "raw")])
    d.write("vda", 0, 1 * MIB, 0x21)
    d.write("vdb", 2 * MIB, 1 * MIB, 0x22)
    backup(d.name, repo)
    d.write("vda", 4 * MIB, 64 * KIB, 0x23)
    d.write("vdb", 6 * MIB, 64 * KIB, 0x24)
    second = run("backup", d.name, "--repo", repo, "--json")
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

    def one_error_line(result, *words):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("borg-vm: "), lines
        for w in words:
            assert w in lines[0], lines[0]

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
    assert [doc["domain"] for doc in result.json_lines()] == [a.name]
    assert "borgvm-test-missing" in result.stderr

    doc = run("restore", a.name, "--repo", repo, "--to", str(tmp_path / "one"), "--disk", "vdb",
              "--json").json()
    assert list(doc["disks"]) == ["vdb"]
    assert_same(read_image(doc["disks"]["vdb"]["image"], tmp_path), a.read_disk("vdb"), "vdb")
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(
        [Path(doc["disks"]["vdb"]["image"]).name, Path(doc["domain_xml"]).name])
    assert "vda" not in Path(doc["domain_xml"]).read_text()
