"""borg-vm prune on a real repository (issue #9): borg's rules over restore
points, whole chains kept, other archives never touched, and everything left
restores bit for bit."""

from __future__ import annotations

import os
import subprocess

from borgvm import BORG, archive_names, backup, restore_and_compare, run
from guest import MIB


def test_prune_keeps_whole_chains_and_nothing_else_is_touched(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    other = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    results, views = [], []
    for i, extra in enumerate([(), (), (), ("--level", "full"), ()]):
        d.write("vda", i * MIB, 1 * MIB, 0xA0 + i)
        results.append(backup(d.name, repo, *extra))
        views.append(d.read_disk("vda"))
    assert [r["level"] for r in results] == ["full", "inc", "inc", "full", "inc"]
    other.write("vda", 0, 1 * MIB, 0xB0)
    kept_other = backup(other.name, repo)
    # an archive that is not borg-vm's, in the same repository
    (tmp_path / "file").write_text("not a VM")
    subprocess.run([BORG, "create", f"{repo}::etc-backup", str(tmp_path / "file")],
                   check=True, capture_output=True)

    dry = run("prune", d.name, "--repo", repo, "--keep-last", "1", "--dry-run", "--list")
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("keep (last #1)") and lines[0].endswith(results[4]["archive"])
    assert lines[1].startswith(f"keep (needed by {results[4]['archive']})")
    assert all(line.startswith("prune ") for line in lines[2:]) and len(lines) == 5
    assert len(archive_names(repo)) == 7                         # nothing deleted

    doc = run("prune", d.name, "--repo", repo, "--keep-last", "1", "--json",
              "--compact").json()
    assert doc["deleted"] == [r["archive"] for r in reversed(results[:3])]
    assert sorted(archive_names(repo)) == sorted(
        [results[3]["archive"], results[4]["archive"], kept_other["archive"], "etc-backup"])
    for i in (3, 4):
        restore_and_compare(d.name, repo, results[i]["checkpoint"], {"vda": views[i]},
                            tmp_path, f"kept{i}")

    # the chain goes on from what is left
    d.write("vda", 20 * MIB, 64 * 1024, 0xC0)
    after = backup(d.name, repo)
    assert after["level"] == "inc" and after["reason"].endswith(results[4]["archive"])

    # --full-every starts a new chain when due, and not before
    renewed = backup(d.name, repo, "--full-every", "2")
    assert renewed["level"] == "full"
    assert renewed["reason"] == ("a new chain: disk vda: its chain has 2 incrementals "
                                 "(--full-every 2)")
    assert backup(d.name, repo, "--full-every", "2")["level"] == "inc"

    # with no DOMAIN every domain is pruned by the same rules; etc-backup stays
    run("prune", "--repo", repo, "--keep-last", "1")
    assert "etc-backup" in archive_names(repo)
    assert kept_other["archive"] in archive_names(repo)
    unknown = run("prune", "nosuchdomain", "--repo", repo, "--keep-last", "1", code=2)
    assert "holds no borg-vm archive of 'nosuchdomain'" in unknown.stderr


def test_delete_one_restore_point(make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    results, views = [], []
    for i in range(3):
        d.write("vda", i * MIB, 1 * MIB, 0xA0 + i)
        results.append(backup(d.name, repo))
        views.append(d.read_disk("vda"))
    refused = run("delete", d.name, "--repo", repo, "--checkpoint", results[1]["checkpoint"],
                  code=2)
    assert refused.stderr.strip() == (
        f"borg-vm: Archive {results[1]['archive']} is needed to restore "
        f"{results[2]['archive']}: delete those first, or use --with-dependents to delete "
        "them too (--dry-run lists them).")
    dry = run("delete", d.name, "--repo", repo, "--checkpoint", results[0]["checkpoint"],
              "--with-dependents", "--dry-run")
    assert dry.stdout.splitlines() == [f"would delete {r['archive']}"
                                       for r in reversed(results)]
    assert len(archive_names(repo)) == 3
    run("delete", d.name, "--repo", repo, "--checkpoint", results[2]["checkpoint"])
    for i in (0, 1):                                  # what is left restores
        restore_and_compare(d.name, repo, results[i]["checkpoint"], {"vda": views[i]},
                            tmp_path, f"left{i}")
    doc = run("delete", d.name, "--repo", repo, "--checkpoint", results[0]["checkpoint"],
              "--with-dependents", "--json").json()
    assert doc["deleted"] == [results[1]["archive"], results[0]["archive"]]
    assert archive_names(repo) == []


def test_backup_all_running_and_shut_off(make_domain, repo, tmp_path):
    tag = "all" + os.urandom(3).hex()
    running = make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix=tag)
    off = make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix=tag)
    running.write("vda", 0, 1 * MIB, 0xA1)
    off.write("vda", 0, 1 * MIB, 0xB1)
    off.shut_off()
    first = run("backup", "--all", "--match", f"borgvm-test-*-{tag}", "--repo", repo,
                "--json").json_lines()
    assert sorted(r["domain"] for r in first) == sorted([running.name, off.name])
    assert all(r["level"] == "full" for r in first)
    assert not off.dom.isActive()
    again = run("backup", "--all", "--match", f"borgvm-test-*-{tag}", "--repo", repo,
                "--json").json_lines()
    assert [r["level"] for r in again] == ["inc", "inc"]
    none = run("backup", "--all", "--match", "borgvm-test-nothing-*", "--repo", repo, code=2)
    assert "no domain matches" in none.stderr
