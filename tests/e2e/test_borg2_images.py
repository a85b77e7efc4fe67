"""Borg 2 repositories (issue #22): every restore point a complete image per
disk, built by borg create --map/--reuse-from from what changed, restored from
that one image whatever its age."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from borgvm import (
    DETACHED,
    RUN_TIMEOUT,
    backup,
    init_repo,
    init_repo2,
    restore_and_compare,
    run,
    start,
    wrapper_env,
)
from guest import MIB, poll
from mounting import compare, mounts_under, start_mount

from borg_vm import runtime
from borg_vm.errors import EXIT_INTERRUPTED

KIB = 1024
PASSPHRASE = "borg2 e2e"


@pytest.fixture
def repo2(tmp_path, borg2_executable):
    """(location, environment) of a new encrypted Borg 2 repository, borg-vm
    pointed at Borg 2."""
    env = {**os.environ, "BORG_VM_BORG": borg2_executable, "BORG_PASSPHRASE": PASSPHRASE}
    return init_repo2(tmp_path / "repo2", borg2_executable, env), env


def borg2_archives(borg2_executable, repo: str, env) -> list[str]:
    out = subprocess.run([borg2_executable, "-r", repo, "repo-list", "--json"], check=True,
                         capture_output=True, text=True, env=env).stdout
    return sorted(a["name"] for a in json.loads(out)["archives"])


def test_full_incrementals_running_and_shut_off_restore_complete_images(
        make_domain, repo2, borg2_executable, tmp_path):
    repo, env = repo2
    d = make_domain(disks=[("vda", 64 * MIB, "qcow2"), ("vdb", 32 * MIB, "qcow2")])
    d.write("vda", 0, 4 * MIB, 0xA1)
    d.write("vdb", 1 * MIB, 2 * MIB, 0xB1)
    results = [backup(d.name, repo, env=env)]
    views = [d.views()]
    assert results[0]["level"] == "full"

    d.write("vda", 2 * MIB, 1 * MIB, 0xA2)
    d.write_zeroes("vdb", 1 * MIB, 512 * KIB)
    inc = backup(d.name, repo, env=env)
    assert inc["level"] == "inc", inc["reason"]
    # Only what changed is read: the rest of each image comes from the parent's.
    assert inc["disks"]["vda"]["read"] <= 1 * MIB + 64 * KIB
    assert inc["disks"]["vdb"]["read"] <= 64 * KIB
    results.append(inc)
    views.append(d.views())

    d.shut_off()
    d.write_offline("vda", 30 * MIB, 64 * KIB, 0xA3)
    off = backup(d.name, repo, env=env)
    assert off["level"] == "inc", off["reason"]
    assert off["disks"]["vda"]["read"] <= 128 * KIB
    assert not d.dom.isActive()
    results.append(off)
    views.append(d.views())

    names = borg2_archives(borg2_executable, repo, env)
    for r in results:   # a record, and an image archive per disk
        assert {r["archive"], f"{r['archive']}~vda", f"{r['archive']}~vdb"} <= set(names)
    assert len(names) == 3 * len(results)
    info = subprocess.run([borg2_executable, "-r", repo, "info", "--json",
                           f"{results[1]['archive']}~vda"], check=True, capture_output=True,
                          text=True, env=env).stdout
    assert json.loads(info)["archives"][0]["chunker_params"][:2] == ["fixed", 64 * KIB]

    listed = run("list", d.name, "--repo", repo, "--json", env=env).json()
    assert [a["checkpoint"] for a in listed["archives"]] == [r["checkpoint"] for r in results]

    for i, (r, view) in enumerate(zip(results, views, strict=True)):
        restore_and_compare(d.name, repo, r["checkpoint"], view, tmp_path, f"qcow2-{i}",
                            env=env)
    restore_and_compare(d.name, repo, results[1]["checkpoint"], views[1], tmp_path, "raw",
                        "--format", "raw", env=env)
    restore_and_compare(d.name, repo, results[0]["checkpoint"], views[0], tmp_path, "flat",
                        "--flatten", env=env)


def test_verify_full_read_prune_delete_and_leftovers(make_domain, repo2, borg2_executable,
                                                     tmp_path):
    repo, env = repo2
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0xC1)
    results = [backup(d.name, repo, env=env)]
    views = [d.views()]
    for i in range(2):
        d.write("vda", (4 + i) * MIB, 256 * KIB, 0xC2 + i)
        results.append(backup(d.name, repo, "--full-every", "2", env=env))
        views.append(d.views())
        assert results[-1]["level"] == "inc", results[-1]["reason"]
    # Two incremental reads since the full: --full-every 2 makes the next a full
    # read, its image as complete as every other.
    d.write("vda", 8 * MIB, 64 * KIB, 0xC4)
    full = backup(d.name, repo, "--full-every", "2", env=env)
    assert full["level"] == "full" and "a full read" in full["reason"], full["reason"]
    assert full["disks"]["vda"]["read"] >= 2 * MIB
    results.append(full)
    views.append(d.views())

    checked = run("verify", d.name, "--all", "--repo", repo, "--json", env=env).json()
    assert checked["ok"] and len(checked["archives"]) == 4, checked

    # What a run cut short leaves (an image without its record) goes at the next run.
    orphan = f"{d.name}.base.borgvm-20200101T000000Z~vda"
    (tmp_path / "vda").write_bytes(b"left over")
    subprocess.run([borg2_executable, "-r", repo, "create", orphan, "vda"], cwd=tmp_path,
                   check=True, capture_output=True, env=env)
    d.write("vda", 9 * MIB, 64 * KIB, 0xC5)
    results.append(backup(d.name, repo, env=env))
    views.append(d.views())
    names = borg2_archives(borg2_executable, repo, env)
    assert orphan not in names and len(names) == 2 * len(results)

    # Every point stands alone: deleting the first needs no dependents, and
    # prune keeps exactly what its rules say, each point with its image.
    run("delete", d.name, "--checkpoint", results[0]["checkpoint"], "--repo", repo, env=env)
    pruned = run("prune", d.name, "--keep-last", "2", "--repo", repo, "--json",
                 env=env).json()
    assert sorted(pruned["deleted"]) == sorted(r["archive"] for r in results[1:3])
    names = borg2_archives(borg2_executable, repo, env)
    assert names == sorted(n for r in results[3:] for n in (r["archive"], f"{r['archive']}~vda"))
    for i in (3, 4):
        restore_and_compare(d.name, repo, results[i]["checkpoint"], views[i], tmp_path,
                            f"kept{i}", env=env)
    # This host last listed a pruned point before prune deleted it: a restore
    # that starts from what it saw (services/catalog_cache.py) is refused all the same.
    gone = tmp_path / "pruned"
    out = run("restore", d.name, "--repo", repo, "--checkpoint", results[1]["checkpoint"],
              "--to", str(gone), env=env, code=2)
    assert f"No archive of '{d.name}' at checkpoint '{results[1]['checkpoint']}'" in \
        out.stderr.splitlines()[-1], out.stderr
    assert not gone.exists()

    restore_and_compare(d.name, repo, results[4]["checkpoint"], views[4], tmp_path,
                        "layers", "--layers", env=env)


def test_many_writers_at_once_separate_processes_and_jobs(make_domain, repo2, tmp_path):
    """Borg 2 takes several writers into one repository: two borg-vm processes
    with caches of their own at once, then one `backup --jobs` for three domains
    (one child process each) with a domain that does not exist among them."""
    repo, env = repo2
    doms = [make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix=f"w{i}")
            for i in range(3)]
    for i, d in enumerate(doms):
        d.write("vda", i * MIB, 2 * MIB, 0xD0 + i)

    procs = [subprocess.Popen([sys.executable, "-m", "borg_vm", "backup", d.name, "--repo", repo,
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env, "BORG_CACHE_DIR": str(tmp_path / f"c{i}")},
                              **DETACHED)
             for i, d in enumerate(doms[:2])]
    for p in procs:
        out, err = p.communicate(timeout=RUN_TIMEOUT)
        assert p.returncode == 0, err
        assert json.loads(out)["level"] == "full"

    views = {}
    for i, d in enumerate(doms):
        d.write("vda", 8 * MIB, 256 * KIB, 0xE0 + i)
        views[d.name] = d.views()
    missing = f"{doms[0].name}-missing"
    done = run("backup", *(d.name for d in doms), missing, "--jobs", "3", "--repo", repo,
               "--json", env=env, code=2)
    lines = {doc["domain"]: doc for doc in done.json_lines()}
    assert set(lines) == {*(d.name for d in doms), missing}
    assert [lines[d.name]["level"] for d in doms] == ["inc", "inc", "full"]
    assert lines[missing]["exit_code"] == 2 and "not" in lines[missing]["error"]
    assert f"1 of 4 domains failed: {missing}" in done.stderr
    for d in doms:
        restore_and_compare(d.name, repo, lines[d.name]["checkpoint"], views[d.name], tmp_path,
                            d.name, env=env)
    checked = run("verify", "--repo", repo, "--json", env=env).json()
    assert checked["ok"] and len(checked["archives"]) == 5, checked


def _state(pid: int) -> str | None:
    """A process's state letter (T: stopped), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def test_jobs_interrupted_undo_every_domains_run(make_domain, repo2, borg2_executable,
                                                 tmp_path):
    """SIGTERM to `backup --jobs` while each child is past its images (each
    stopped at the record's stream): every child undoes its run (images
    deleted, checkpoint removed), the parent exits after them, and the
    next run goes on incrementally from the last good points."""
    repo, env = repo2
    doms = [make_domain(disks=[("vda", 16 * MIB, "qcow2")], name_suffix=f"j{i}")
            for i in range(2)]
    first = run("backup", *(d.name for d in doms), "--jobs", "2", "--repo", repo, "--json",
                env=env).json_lines()
    kept = borg2_archives(borg2_executable, repo, env)
    for i, d in enumerate(doms):
        d.write("vda", 4 * MIB, 256 * KIB, 0xF0 + i)

    parent = start("backup", *(d.name for d in doms), "--jobs", "2", "--repo", repo, "--json",
                   env={**env, runtime.STOP_AT_ENV: runtime.STREAMING})
    poll(lambda: len(_children(parent.pid)) == 2
         and all(_state(c) == "T" for c in _children(parent.pid)), 120,
         "both children to stop at the record's stream")
    kids = _children(parent.pid)
    parent.send_signal(signal.SIGTERM)
    time.sleep(0.5)   # the parent passes SIGTERM on; stopped children take it once woken
    for kid in kids:
        os.kill(kid, signal.SIGCONT)
    out, err = parent.communicate(timeout=RUN_TIMEOUT)
    assert parent.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and out == "", (out, err)
    assert all(_state(k) is None for k in kids)
    assert borg2_archives(borg2_executable, repo, env) == kept
    for d, doc in zip(doms, first, strict=True):
        assert [c.getName() for c in d.dom.listAllCheckpoints()] == [doc["checkpoint"]]

    again = run("backup", *(d.name for d in doms), "--jobs", "2", "--repo", repo, "--json",
                env=env).json_lines()
    assert [doc["level"] for doc in again] == ["inc", "inc"]


def test_a_borg1_repository_transferred_to_borg2_keeps_its_chains(make_domain, borg2_executable,
                                                                 tmp_path):
    """`borg transfer --from-borg1` moves a borg-vm repository to Borg 2 as it is:
    its restore points stay chains (format 5), which borg-vm lists, verifies and
    restores under Borg 2 once this host's keyring of the old repository is
    imported for the new one; the next backup there makes complete images."""
    env1 = {**os.environ, "BORG_PASSPHRASE": PASSPHRASE}
    old = init_repo(tmp_path / "repo1", "repokey", env=env1)
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0x51)
    chain = [backup(d.name, old, env=env1)]
    views = [d.views()]
    d.write("vda", 8 * MIB, 512 * KIB, 0x52)
    chain.append(backup(d.name, old, env=env1))
    views.append(d.views())
    assert [c["level"] for c in chain] == ["full", "inc"]

    keys = run("key", "export", "--repo", old, env=env1).stdout
    env2 = {**env1, "BORG_VM_BORG": borg2_executable, "BORG_OTHER_PASSPHRASE": PASSPHRASE}
    new = str(tmp_path / "repo2")
    # Borg 2.0.0b23 refuses a Borg 1 repokey repository this host used with
    # Borg 1 (borg issue 10189); its workaround, as docs/borg2.md says:
    repo_id = configparser.ConfigParser()
    repo_id.read(Path(old) / "config")
    shutil.rmtree(Path(os.environ["BORG_BASE_DIR"]) / ".config/borg/security"
                  / repo_id["repository"]["id"])
    for argv in (["repo-create", "-e", "aes256-ocb", "--other-repo", old, "--from-borg1"],
                 ["transfer", "--other-repo", old, "--from-borg1", "--compression", "lz4",
                  "--recompress", "never"]):
        done = subprocess.run([borg2_executable, "-r", new, *argv], capture_output=True,
                              text=True, env=env2)
        assert done.returncode == 0, done.stderr
    subprocess.run([sys.executable, "-m", "borg_vm", "key", "import", "-", "--repo", new],
                   input=keys, text=True, check=True, capture_output=True, env=env2)

    listed = run("list", d.name, "--repo", new, "--json", env=env2).json()["archives"]
    assert [a["checkpoint"] for a in listed] == [c["checkpoint"] for c in chain]
    checked = run("verify", d.name, "--all", "--repo", new, "--json", env=env2).json()
    assert checked["ok"] and len(checked["archives"]) == 2, checked
    for i, (c, view) in enumerate(zip(chain, views, strict=True)):
        restore_and_compare(d.name, new, c["checkpoint"], view, tmp_path, f"moved{i}",
                            env=env2)

    d.write("vda", 16 * MIB, 256 * KIB, 0x53)
    after = backup(d.name, new, env=env2)
    assert after["level"] == "full", after["reason"]   # a first complete image
    restore_and_compare(d.name, new, after["checkpoint"], d.views(), tmp_path, "after",
                        env=env2)
    kept_inc = run("prune", d.name, "--keep-last", "2", "--repo", new, "--json",
                   env=env2).json()
    assert kept_inc["deleted"] == []   # the last inc needs its full: the chain stays whole
    pruned = run("prune", d.name, "--keep-last", "1", "--repo", new, "--json", env=env2).json()
    assert sorted(pruned["deleted"]) == sorted(c["archive"] for c in chain)
    assert borg2_archives(borg2_executable, new, env2) == sorted(
        [after["archive"], f"{after['archive']}~vda"])


def test_a_listing_that_holds_the_runs_own_images_leaves_them(make_domain, repo2,
                                                              borg2_executable, tmp_path):
    """A run planned from what this host saw writes its images while the repository
    is listed again: a listing that ends after an image was committed holds it,
    without its record. Those images are this run's, not a crashed run's leftovers:
    the point they make stays whole (a regression: they were deleted)."""
    repo, env = repo2
    d = make_domain(disks=[("vda", 16 * MIB, "qcow2")])
    d.write("vda", 0, 1 * MIB, 0xC1)
    backup(d.name, repo, env=env)
    d.write("vda", 4 * MIB, 256 * KIB, 0xC2)
    workdir = tmp_path / "wrapper"
    workdir.mkdir()
    late = {**wrapper_env(workdir, "late-list"), "BORGVM_TEST_REAL_BORG": borg2_executable,
            "BORG_PASSPHRASE": env["BORG_PASSPHRASE"]}
    second = run("--debug", "backup", d.name, "--repo", repo, "--json", env=late)
    assert "planning from what this host last saw" in second.stderr
    assert (workdir / "created").exists()
    assert "deleting unfinished archives" not in second.stderr, second.stderr
    doc = second.json_lines()[0]
    assert f"{doc['archive']}~vda" in borg2_archives(borg2_executable, repo, env)
    restore_and_compare(d.name, repo, doc["checkpoint"], {"vda": d.read_disk("vda")},
                        tmp_path, "second", env=env)


def test_mount_serves_each_points_images(make_domain, repo2, tmp_path):
    """borg-vm mount of a Borg 2 point: each disk's image archive, by the ID its
    record names, mounted alone by borg mount and served as it is; every point
    reads exactly as the guest saw its disks, and nothing is left mounted."""
    repo, env = repo2
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2"), ("vdb", 16 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0x71)
    d.write("vdb", 1 * MIB, 1 * MIB, 0x72)
    results, views = [backup(d.name, repo, env=env)], [d.views()]
    d.write("vda", 4 * MIB, 256 * KIB, 0x73)
    d.write_zeroes("vdb", 1 * MIB, 512 * KIB)
    results.append(backup(d.name, repo, env=env))
    views.append(d.views())

    run_dir = tmp_path / "run"
    env = {**env, "BORG_VM_RUNTIME_DIR": str(run_dir)}
    for i, (result, view) in enumerate(zip(results, views, strict=True)):
        sockets = tmp_path / f"sockets-{i}"
        m = start_mount(d.name, repo, str(sockets), "--checkpoint", result["checkpoint"],
                        env=env)
        try:
            assert sorted(m.served["disks"]) == ["vda", "vdb"]
            for target, expected in view.items():
                out = compare(m.uri(target), expected, str(tmp_path))
                assert out.returncode == 0, f"{target} at {result['checkpoint']}: {out.stdout}"
        finally:
            code, err = m.stop(signal.SIGTERM)
        assert code == 0, err
        assert not sockets.exists()
    assert not mounts_under(run_dir) and os.listdir(run_dir) == []


def test_boot_from_images_then_finish(make_domain, repo2, booted, monkeypatch, tmp_path):
    """borg-vm boot of a Borg 2 point: its disks overlays backed by the image
    mounts; the guest's writes land in the overlays, --finish pulls the rest
    and the domain runs on without the repository."""
    repo, env = repo2
    for name in ("BORG_VM_BORG", "BORG_PASSPHRASE"):
        monkeypatch.setenv(name, env[name])   # for booted's borg-vm runs
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 4 * MIB, 0x81)
    backup(d.name, repo, env=env)
    d.write("vda", 8 * MIB, 1 * MIB, 0x82)
    second = backup(d.name, repo, env=env)
    new, doc = booted(d, repo, d.views())
    assert doc["checkpoint"] == second["checkpoint"] and new.dom.isActive()
    new.write("vda", 1 * MIB + 512, 4 * KIB, 0x83)
    new.write("vda", 20 * MIB, 2 * MIB, 0x84)
    new.flush_all()
    run("boot", "--finish", new.name, "--json", env=env)
    Path(repo).rename(f"{repo}.gone")
    new.write("vda", 30 * MIB, 1 * MIB, 0x85)
    new.assert_matches_model("vda")
