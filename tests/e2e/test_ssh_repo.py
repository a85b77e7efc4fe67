"""borg-vm against a Borg repository on a real ssh server (issue #9): keys
forced to `borg serve --restrict-to-repository`, one of them `--append-only`;
backup, verify, restore and prune over ssh://, and what prune does (and does
not) do through the append-only key."""

from __future__ import annotations

from pathlib import Path

import sshd
from borgvm import BORG, archive_names, backup, borg, init_repo, restore_and_compare, run
from guest import MIB


def repo_bytes(path: Path) -> int:
    """Return the bytes of a local repository's segment files."""
    return sum(f.stat().st_size for f in (path / "data").rglob("*") if f.is_file())


def test_backup_verify_restore_prune_over_ssh(make_domain, ssh_server, tmp_path, monkeypatch):
    server = ssh_server
    served = tmp_path / "served" / "repo"
    served.parent.mkdir()
    keys = {}
    for name, extra in (("full", []), ("append-only", ["--append-only"])):
        keys[name] = tmp_path / f"client-{name}"
        server.authorize(sshd.make_key(keys[name], f"borg-vm-test-{name}"),
                         [BORG, "serve", *extra, "--restrict-to-repository", str(served)])
    url = server.url(served)
    # Every borg-vm and borg below goes through real ssh with one of the keys.
    monkeypatch.setenv("BORG_PASSPHRASE", "offsite")
    monkeypatch.setenv("BORG_RSH", server.rsh(keys["full"]))
    init_repo(url, "repokey-blake2")
    elsewhere = run("list", "--repo", server.url(tmp_path / "served" / "other"), code=2)
    assert "Repository path not allowed" in elsewhere.stderr   # --restrict-to-repository

    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    results, views = [], []
    for i in range(2):
        d.write("vda", i * 4 * MIB, 2 * MIB, 0xA0 + i)
        results.append(backup(d.name, url))
        views.append({"vda": d.read_disk("vda")})
    assert [r["level"] for r in results] == ["full", "inc"]
    checked = run("verify", d.name, "--repo", url, "--all")
    assert checked.stdout.split() == ["ok", results[0]["archive"], "ok", results[1]["archive"]]
    for i in range(2):
        restore_and_compare(d.name, url, results[i]["checkpoint"], views[i], tmp_path, f"{i}")

    # prune through the full key deletes the first chain and compact frees its space
    d.write("vda", 8 * MIB, 2 * MIB, 0xA2)
    results.append(backup(d.name, url, "--level", "full"))
    before = repo_bytes(served)
    doc = run("prune", d.name, "--repo", url, "--keep-last", "1", "--compact", "--json").json()
    assert doc["deleted"] == [results[1]["archive"], results[0]["archive"]]
    assert archive_names(url) == [results[2]["archive"]]
    assert repo_bytes(served) < before

    # the append-only key: backups and restores work, prune only hides archives
    monkeypatch.setenv("BORG_RSH", server.rsh(keys["append-only"]))
    d.write("vda", 12 * MIB, 2 * MIB, 0xA3)
    results.append(backup(d.name, url))
    d.write("vda", 16 * MIB, 2 * MIB, 0xA4)
    results.append(backup(d.name, url, "--level", "full"))
    views.append({"vda": d.read_disk("vda")})
    assert [r["level"] for r in results[3:]] == ["inc", "full"]
    before = repo_bytes(served)
    doc = run("prune", d.name, "--repo", url, "--keep-last", "1", "--compact", "--json").json()
    assert doc["deleted"] == [results[3]["archive"], results[2]["archive"]]
    assert archive_names(url) == [results[4]["archive"]]
    assert repo_bytes(served) >= before            # borg compact freed nothing
    # borg logs each append-only transaction: the server's admin can roll back to one
    assert "transaction" in (served / "transactions").read_text()
    restore_and_compare(d.name, url, results[4]["checkpoint"], views[-1], tmp_path, "4")
    # ... until the repository is compacted through a key without --append-only
    monkeypatch.setenv("BORG_RSH", server.rsh(keys["full"]))
    borg("compact", url)
    assert repo_bytes(served) < before
    assert archive_names(url) == [results[4]["archive"]]
