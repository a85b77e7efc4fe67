"""A real domain's backups in a repository someone else can write: an archive
planted as the newest restore point (a copy of a real one, under a later
checkpoint, its comment rewritten without the code) must not become the next
backup's parent, the default restore point, or what prune keeps instead of
the real chain (docs/security.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from borgvm import archive_names, backup, borg, restore_and_compare, run
from guest import MIB


def plant_copy(repo: str, real: str, tmp_path) -> str:
    """Copy archive real as 'borg export-tar | borg import-tar' would, under the next
    second's checkpoint with its comment rewritten unsigned; return its name."""
    (doc,) = json.loads(borg("info", "--json", f"{repo}::{real}").stdout)["archives"]
    summary = json.loads(doc["comment"])
    domain, snapshot, checkpoint = real.rsplit(".", 2)
    when = datetime.strptime(checkpoint.removeprefix("borgvm-"), "%Y%m%dT%H%M%SZ"
                             ).replace(tzinfo=UTC) + timedelta(seconds=1)
    planted = f"{domain}.{snapshot}.borgvm-{when:%Y%m%dT%H%M%SZ}"
    summary.update(time=f"{when:%Y-%m-%dT%H:%M:%SZ}", auth=None)
    tar = tmp_path / "copy.tar"
    borg("export-tar", f"{repo}::{real}", str(tar))
    borg("import-tar", "--comment", json.dumps(summary), f"{repo}::{planted}", str(tar))
    tar.unlink()
    return planted


def test_a_planted_newest_archive_is_no_parent_no_restore_point_and_not_pruned(
        make_domain, repo, tmp_path):
    d = make_domain(disks=[("vda", 32 * MIB, "qcow2")])
    d.write("vda", 0, 2 * MIB, 0xA1)
    first = backup(d.name, repo)
    planted = plant_copy(repo, first["archive"], tmp_path)

    d.write("vda", 4 * MIB, 1 * MIB, 0xA2)
    result = run("backup", d.name, "--repo", repo, "--json", code=1)
    assert (f"ignoring archive {planted}: not authenticated: its comment carries no "
            "authentication code") in result.stderr
    (second,) = result.json_lines()
    assert second["level"] == "inc", second["reason"]
    assert second["reason"] == f"incremental on top of {first['archive']}"
    listed = run("list", d.name, "--repo", repo, "--json", code=1).json()["archives"]
    assert [(a["name"], a["parent"]) for a in listed] == [
        (first["archive"], None), (second["archive"], first["archive"])]

    # the default restore point is the real newest, bit for bit
    restore_and_compare(d.name, repo, second["checkpoint"], d.views(), tmp_path, "newest",
                        code=1)
    out = run("verify", d.name, "--all", "--repo", repo, code=1).stdout
    assert sorted(line.split()[:2] for line in out.splitlines()) == [
        ["UNAUTHENTICATED", f"{planted}:"], ["ok", first["archive"]], ["ok", second["archive"]]]

    # prune sees the real chain only, and leaves the planted archive to the admin
    run("prune", d.name, "--keep-last", "1", "--repo", repo, code=1)
    assert {first["archive"], second["archive"], planted} <= set(archive_names(repo))
